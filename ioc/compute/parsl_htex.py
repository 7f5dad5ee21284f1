"""Parsl compute: stages on a ``HighThroughputExecutor``, on this host or a cluster.

The provider comes from ``[compute.parsl]``: ``local`` (worker processes on this
host), ``slurm`` or ``pbspro`` (blocks of nodes from the batch system). Workers
reach the IOC's run folder through the shared file system, so the file channel
of :func:`ptychoflow.stages.file_reporter` carries progress and Abort to them
as it does locally. The executor starts with the IOC (or at the first run on
Parsl) and stops with it.

A misconfiguration is refused at Start, not minutes later when a block fails:
an unknown provider, a malformed walltime, a batch system whose commands are
not on this host, a Slurm partition that ``sinfo`` does not know.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychoflow.config import ConfigError, resolve, setting
from ptychoflow.ioc.compute.base import BackendNotConfigured
from ptychoflow.stages import Reporter, StageFn, run_stage

log = logging.getLogger(__name__)

SECTION = "compute.parsl"
PROVIDERS = ("local", "slurm", "pbspro")
WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


@dataclass
class ParslSettings:
    """``[compute.parsl]``: the executor and its provider."""

    provider: str = setting("local", "local, slurm or pbspro")
    workers: int = setting(2, "workers per node (stages at once on one node)")
    cores_per_worker: float = setting(1.0, "CPU cores per worker")
    gpus_per_worker: int = setting(0, "GPUs per worker (0: none; workers are pinned to "
                                      "one accelerator each when > 0)")
    account: str = setting("", "batch account / allocation")
    partition: str = setting("", "Slurm partition or PBS queue")
    walltime: str = setting("01:00:00", "walltime of a block, HH:MM:SS")
    nodes_per_block: int = setting(1, "nodes per block")
    init_blocks: int = setting(1, "blocks started with the executor")
    max_blocks: int = setting(1, "most blocks at once")
    worker_init: str = setting("", "shell lines run before a worker starts (module load, "
                                   "conda activate ...)")
    scheduler_options: str = setting("", "extra #SBATCH / #PBS lines")
    address: str = setting("", "address workers connect back to (empty: 127.0.0.1 for "
                               "local, this host's address otherwise)")
    run_dir: str = setting("", "Parsl's run folder (empty: <work_root>/parsl)")

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r} is unknown; use one of "
                             f"{', '.join(PROVIDERS)}")
        if not WALLTIME.match(self.walltime):
            raise ValueError(f"walltime {self.walltime!r} is not HH:MM:SS (e.g. \"01:30:00\")")
        if self.workers < 1 or self.nodes_per_block < 1 or self.max_blocks < 1 or \
                self.init_blocks < 0:
            raise ValueError("workers, nodes_per_block and max_blocks must be >= 1, "
                             "init_blocks >= 0")

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ParslSettings:
        """Settings from the TOML table; every problem named with its key."""
        return resolve(cls, SECTION, None, {SECTION: table})

    @property
    def walltime_s(self) -> int:
        """The walltime in seconds."""
        m = WALLTIME.match(self.walltime)
        assert m is not None
        h, mi, se = (int(g) for g in m.groups())
        return h * 3600 + mi * 60 + se


def check_batch_system(cfg: ParslSettings) -> None:
    """Refuse a provider whose batch commands or partition this host does not know."""
    if cfg.provider == "slurm":
        if shutil.which("sbatch") is None:
            raise ConfigError("[compute.parsl] provider slurm, but sbatch is not on this "
                              "host's PATH; run the IOC on a login node or use provider local")
        if cfg.partition and shutil.which("sinfo"):
            out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                                 timeout=30).stdout.split()
            if out and cfg.partition not in out:
                raise ConfigError(f"[compute.parsl] partition {cfg.partition!r} is unknown to "
                                  f"Slurm here (sinfo lists {', '.join(sorted(set(out)))})")
    elif cfg.provider == "pbspro" and shutil.which("qsub") is None:
        raise ConfigError("[compute.parsl] provider pbspro, but qsub is not on this host's "
                          "PATH; run the IOC on a login node or use provider local")


def make_config(cfg: ParslSettings, run_dir: Path) -> Any:
    """The Parsl ``Config``: one HighThroughputExecutor labelled ``ptychoflow``."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import MpiExecLauncher, SrunLauncher
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    # the worker pool is started by name from PATH: put this Python's scripts first
    worker_init = "\n".join(filter(None, [
        cfg.worker_init,
        f"export PATH={Path(sys.executable).parent}:$PATH" if cfg.provider == "local" else "",
        "export PTYCHOFLOW_BLOCK_START=$(date +%s)",
        f"export PTYCHOFLOW_WALLTIME_S={cfg.walltime_s}" if cfg.provider != "local" else ""]))
    common: dict[str, Any] = {
        "nodes_per_block": cfg.nodes_per_block, "init_blocks": cfg.init_blocks,
        "min_blocks": 0, "max_blocks": cfg.max_blocks, "worker_init": worker_init}
    provider: Any
    if cfg.provider == "local":
        common["nodes_per_block"] = 1
        provider = LocalProvider(**common)
    elif cfg.provider == "slurm":
        provider = SlurmProvider(partition=cfg.partition or None, account=cfg.account or None,
                                 walltime=cfg.walltime, launcher=SrunLauncher(),
                                 scheduler_options=cfg.scheduler_options, **common)
    else:
        provider = PBSProProvider(queue=cfg.partition or None, account=cfg.account or None,
                                  walltime=cfg.walltime, launcher=MpiExecLauncher(),
                                  scheduler_options=cfg.scheduler_options,
                                  cpus_per_node=max(1, int(cfg.workers * cfg.cores_per_worker)),
                                  **common)
    address = cfg.address or ("127.0.0.1" if cfg.provider == "local" else None)
    htex = HighThroughputExecutor(
        label="ptychoflow", provider=provider, max_workers_per_node=cfg.workers,
        cores_per_worker=cfg.cores_per_worker,
        available_accelerators=cfg.gpus_per_worker * cfg.workers if cfg.gpus_per_worker else (),
        address=address, heartbeat_period=5, heartbeat_threshold=20, poll_period=10)
    return Config(executors=[htex], run_dir=str(run_dir), retries=0, strategy="simple",
                  initialize_logging=False)


class ParslCompute:
    """A Parsl DataFlowKernel with one HighThroughputExecutor."""

    name = "Parsl"
    section = SECTION
    shares_files = True

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None:
        self.settings = settings
        self.table = table
        self.cfg: ParslSettings | None = None
        self._error = ""
        if table is not None:
            try:
                self.cfg = ParslSettings.from_table(table)
            except ConfigError as exc:
                self._error = str(exc)
        self.workers = self.cfg.workers if self.cfg else 1
        self._dfk: Any = None
        self._app: Any = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse when ``[compute.parsl]`` is missing or wrong, naming what to fix."""
        if self.table is None:
            raise BackendNotConfigured(
                "Compute back end Parsl is not configured in this IOC; set it up in the "
                "[compute.parsl] section of the configuration (provider = \"local\" is "
                "enough on one host), or choose Local")
        if self.cfg is None:
            raise BackendNotConfigured(self._error)
        try:
            check_batch_system(self.cfg)
        except ConfigError as exc:
            raise BackendNotConfigured(str(exc)) from exc

    def start(self) -> None:
        """Start the DataFlowKernel and its executor (blocks are asked for here)."""
        with self._lock:
            if self._dfk is not None:
                return
            self.check()
            assert self.cfg is not None
            from parsl.app.app import python_app
            from parsl.dataflow.dflow import DataFlowKernel

            # Parsl starts its interchange (and local workers) by script name from PATH:
            # this Python's scripts folder goes first, as in an activated environment
            scripts = str(Path(sys.executable).parent)
            if scripts not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
            run_dir = Path(self.cfg.run_dir or Path(self.settings.work_path) / "parsl")
            run_dir.mkdir(parents=True, exist_ok=True)
            self._dfk = DataFlowKernel(make_config(self.cfg, run_dir))
            self._app = python_app(run_stage, data_flow_kernel=self._dfk,
                                   executors=["ptychoflow"])
            log.info("Parsl executor started (%s provider, %d worker(s) per node, run dir %s)",
                     self.cfg.provider, self.cfg.workers, run_dir)

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter | None) -> cf.Future[dict[str, Any]]:
        """Submit one stage; the AppFuture is a :class:`concurrent.futures.Future`."""
        self.start()
        fut: cf.Future[dict[str, Any]] = self._app(fn, scan_path, workdir, params, reporter)
        return fut

    def is_worker_lost(self, exc: BaseException) -> bool:
        """Parsl's WorkerLost / ManagerLost (a worker or a whole node went away)."""
        from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

        return isinstance(exc, WorkerLost | ManagerLost)

    def shutdown(self) -> None:
        """Stop the executor and cancel its blocks."""
        with self._lock:
            dfk, self._dfk = self._dfk, None
        if dfk is not None:
            try:
                dfk.cleanup()
            except Exception:  # shutting down: report, do not raise
                log.exception("Parsl shutdown")
