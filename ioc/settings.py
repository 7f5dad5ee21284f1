"""Settings of ``ptychoflow ioc``: one dataclass, the ``[ioc]`` TOML section and the CLI flags.

Stages are named in a sub-table ``[ioc.stages]`` (``transfer = "module:function"``)
so a site can swap in its own stage without touching the IOC.
"""

from __future__ import annotations

import getpass
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptychoflow.config import ConfigError, setting
from ptychoflow.geometry import Geometry
from ptychoflow.ioc.stagetable import COMPUTE_STAGES
from ptychoflow.pvnames import CONTROL, DEFAULT_PREFIX
from ptychoflow.stages import StageFn

DEFAULT_STAGES = {name: f"ptychoflow.remote.stages:{name}" for name in COMPUTE_STAGES}


@dataclass
class IocSettings:
    """What a beamline configures for the control IOC."""

    prefix: str = setting(DEFAULT_PREFIX, "PV prefix")
    data_root: str = setting(".", "scan files must lie under this folder; Auto watches it")
    work_root: str = setting("runs", "run folders, registry.sqlite, autosave file and models")
    edge_prefix: str = setting("", "PV prefix of the edge service to deploy models to "
                                   "(empty: models are registered but not deployed)")
    writers: list[str] = setting([], "users allowed to write control PVs "
                                     "(empty: everyone; reading is always open)")
    writer_hosts: list[str] = setting([], "hosts allowed to write control PVs (empty: any host)")
    int8_models: bool = setting(False, "each exported model gets an int8 copy, "
                                       "model-vN-int8.onnx, which an edge run with --int8 "
                                       "serves (faster on CPU edges)")
    geometry: str = setting("", "how this beamline's frames and positions differ from "
                                "ptychoflow's conventions, e.g. 'transpose flip_rows x_sign=-1 "
                                "position_unit=um' (docs/files.md); recorded in each model card")
    poll_s: float = setting(0.5, "how often Auto mode looks for new scan files (s)")
    abort_grace_s: float = setting(3.0, "how long an aborted stage may take to stop before "
                                        "its worker process is terminated (s)")
    max_concurrent_stages: int = setting(0, "compute stages of overlapping runs at once, and "
                                            "runs Auto keeps in flight (0: the compute back "
                                            "end's workers)")
    quality_runs: int = setting(3, "consecutive runs meeting "
                                   f"{CONTROL.model_quality_target.suffix} that stop "
                                   "Auto sending scans to remote compute")
    stages: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STAGES),
                                   metadata={"cli": False, "help": "stage functions"})

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ConfigError("prefix must not be empty; set --prefix, e.g. PTYCHO:")
        try:
            Geometry.parse(self.geometry)
        except ValueError as exc:
            raise ConfigError(f"geometry in [ioc]: {exc}") from exc
        if self.poll_s <= 0 or self.abort_grace_s < 0:
            raise ConfigError("poll_s must be > 0 and abort_grace_s >= 0")
        if self.max_concurrent_stages < 0 or self.quality_runs < 1:
            raise ConfigError("max_concurrent_stages must be >= 0 and quality_runs >= 1")
        if "transfer" in self.stages:
            raise ConfigError("[ioc.stages] transfer: the transfer is no longer a compute stage; "
                              "the IOC does it through "
                              f"{CONTROL.transfer_backend.suffix} (configure "
                              "[transfer.local] or [transfer.globus]); remove the key")
        unknown = set(self.stages) - set(COMPUTE_STAGES)
        if unknown:
            raise ConfigError(f"unknown stage(s) {sorted(unknown)} in [ioc.stages]; "
                              f"known: {sorted(COMPUTE_STAGES)}")
        self.stages = {**DEFAULT_STAGES, **self.stages}
        for name, dotted in self.stages.items():
            if ":" not in dotted:
                raise ConfigError(f"[ioc.stages] {name} = {dotted!r} must be 'module:function'")

    @property
    def data_path(self) -> Path:
        """The data root, resolved (symlinks followed) for containment checks."""
        return Path(self.data_root).expanduser().resolve()

    @property
    def work_path(self) -> Path:
        """The work root, resolved."""
        return Path(self.work_root).expanduser().resolve()

    def acl_summary(self) -> dict[str, Any]:
        """Who may write, for the startup log."""
        return {"users": self.writers or ["<everyone>"],
                "hosts": self.writer_hosts or ["<any>"], "running_as": getpass.getuser()}


def load_stage(dotted: str) -> StageFn:
    """Import ``module:function``; the error says which setting names it."""
    module, _, name = dotted.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as exc:  # ImportError, AttributeError, or an error inside the module
        raise RuntimeError(f"cannot load stage {dotted!r} ({type(exc).__name__}: {exc}); "
                           f"check [ioc.stages] in the configuration") from exc
    if not callable(fn):
        raise RuntimeError(f"stage {dotted!r} is not a function; check [ioc.stages]")
    return fn  # type: ignore[no-any-return]
