"""``ptychoflow bench remote``: how well the compute back ends scale and overlap.

Three figures, each measured side by side in one run on this machine:

- ``parsl_efficiency``: N small reconstructions (real pty-chi rPIE, one thread
  each) on Parsl with 1 worker and with 2 workers; efficiency = t1 / (2 t2).
  The published figure for this workflow is 81 % (29.6x on 64 GPUs).
- ``overlap_speedup``: three scans through the orchestrator as Auto mode runs
  them (real stages on two Local workers, imports done before timing), from
  the first scan to the last model, strictly serial (``max_concurrent_stages``
  1) against overlapped (2). ``overlap_bound`` is the most overlap can give
  with the measured stage times, since training and export stay in run order.
- ``submit_latency_ms``: p50 from submit to the start of an empty stage, on
  Local and on Parsl.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ptychoflow.stages import Reporter

HELP = "compute back ends: Parsl scaling efficiency, overlap speed-up of runs, submit latency"
RECON = {"recon_epochs": 8, "device": "cpu", "algorithm": "rPIE"}
STAGE_TIMES: dict[int, dict[str, float]] = {}
# Reconstruction is the long stage at a beamline (rPIE epochs over every frame); the
# overlap bench keeps it about as long as a training round plus its export
OVERLAP_RECON_EPOCHS = 50


def recon_one_thread(scan_path: str, workdir: str, params: dict[str, Any],
                     progress: Reporter | None = None) -> dict[str, Any]:
    """The reconstruct stage pinned to one thread (so workers, not threads, scale)."""
    import torch

    torch.set_num_threads(1)
    from ptychoflow.remote.stages import reconstruct

    return reconstruct(scan_path, workdir, params, progress)


def empty_stage(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Reporter | None = None) -> dict[str, Any]:
    """Does nothing but say when it started."""
    return {"started": time.time()}


def import_science() -> int:
    """Import what the stages use, so the timed runs measure stages, not imports."""
    import onnx  # noqa: F401
    import ptychi  # noqa: F401
    import torch  # noqa: F401

    import ptychoflow.remote.export  # noqa: F401
    import ptychoflow.remote.recon  # noqa: F401
    import ptychoflow.remote.train  # noqa: F401

    return os.getpid()


def register(parser: argparse.ArgumentParser) -> None:
    """The bench's flags."""
    parser.add_argument("--recons", type=int, default=8,
                        help="reconstructions per Parsl configuration (at least 8)")
    parser.add_argument("--frames", type=int, default=64, help="frames per small scan")
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], choices=["parsl", "overlap"],
                        help="leave out a measurement")


def _scans(folder: Path, n: int, frames: int) -> list[Path]:
    from ptychoflow.scanfile import write_scan
    from ptychoflow.sim.physics import simulate_scan

    folder.mkdir(parents=True, exist_ok=True)
    return [write_scan(folder / f"scan-{i}.h5",
                       simulate_scan(n_frames=frames, size=64, step_m=4e-7, photons=1e6,
                                     probe_diameter_px=36, seed=i)) for i in range(n)]


def _parsl(root: Path, workers: int) -> Any:
    from ptychoflow.ioc.compute.parsl_htex import ParslCompute
    from ptychoflow.ioc.settings import IocSettings

    settings = IocSettings(work_root=str(root / f"work-{workers}"), data_root=str(root))
    compute = ParslCompute(settings, {"provider": "local", "workers": workers,
                                      "worker_init": "export OMP_NUM_THREADS=1"})
    compute.start()
    return compute


def _latency(compute: Any, root: Path, n: int) -> float:
    compute.submit(empty_stage, "", str(root), {}, None).result()  # warm
    lat = []
    for _ in range(n):
        t0 = time.time()
        started = compute.submit(empty_stage, "", str(root), {}, None).result()["started"]
        lat.append(1e3 * (started - t0))
    return round(statistics.median(lat), 2)


def _recon_wall(compute: Any, scans: list[Path], root: Path) -> float:
    compute.submit(empty_stage, "", str(root), {}, None).result()  # workers up
    t0 = time.perf_counter()
    futures = []
    for i, scan in enumerate(scans):
        out = root / f"recon-{compute.workers}-{i}"
        out.mkdir(parents=True, exist_ok=True)
        futures.append(compute.submit(recon_one_thread, str(scan), str(out),
                                      {**RECON, "path": str(scan)}, None))
    for f in futures:
        f.result()
    return time.perf_counter() - t0


class _Quiet:
    """A Sink that keeps the last message (the bench has no records)."""

    def __init__(self) -> None:
        self.last = ""

    def post(self, values: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        self.last = text

    def finished(self) -> None:
        pass


def _stage_seconds(registry: Any) -> dict[str, float]:
    """Mean seconds per state over the runs (from the registry's events)."""
    per: dict[str, list[float]] = {}
    for r in registry.runs():
        ev = r["events"]
        for a, b in zip(ev, ev[1:], strict=False):
            per.setdefault(a["state"], []).append(b["time"] - a["time"])
    return {k: round(statistics.mean(v), 2) for k, v in per.items() if k != "Idle"}


async def _three_runs(root: Path, scans: list[Path], concurrent: int) -> float:
    from ptychoflow.ioc.compute.local import LocalCompute
    from ptychoflow.ioc.orchestrator import Orchestrator
    from ptychoflow.ioc.registry import Registry
    from ptychoflow.ioc.settings import IocSettings
    from ptychoflow.ioc.transfer.local import LocalTransfer

    work = root / f"overlap-{concurrent}"
    settings = IocSettings(data_root=str(scans[0].parent), work_root=str(work),
                           max_concurrent_stages=concurrent)
    (work / "models").mkdir(parents=True)
    compute = LocalCompute(settings, {"workers": 2})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, compute.start)
    await loop.run_in_executor(None, compute.on_every_worker, import_science)
    registry = Registry(work / "registry.sqlite")
    sink = _Quiet()
    orch = Orchestrator(settings, registry, sink, {"Local": compute},
                        {"Local": LocalTransfer(settings, None)})
    params = {"algorithm": "rPIE", "recon_epochs": OVERLAP_RECON_EPOCHS, "train_epochs": 4,
              "val_fraction": 0.1,
              "transfer_backend": "Local", "compute_backend": "Local", "device": "cpu",
              "model_dir": str(work / "models"), "train_dir": str(work / "training"),
              "tensorrt": False}
    try:
        t0 = time.perf_counter()
        queue = list(scans)
        while queue or orch.busy:  # what Auto mode does with scans arriving together
            while queue and orch.admit("Local"):
                orch.launch(queue.pop(0), dict(params))
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - t0
        STAGE_TIMES[concurrent] = _stage_seconds(registry)
        bad = [r for r in registry.runs() if r["state"] != "Done"]
        if bad:
            raise RuntimeError(f"overlap bench: run {bad[0]['id']} ended {bad[0]['state']}: "
                               f"{bad[0]['message']}")
        return wall
    finally:
        orch.close()
        compute.shutdown()
        registry.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and return the figures."""
    from ptychoflow.ioc.compute.local import LocalCompute
    from ptychoflow.ioc.settings import IocSettings

    out: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-remote-") as tmp:
        root = Path(tmp)
        scans = _scans(root / "scans", max(args.recons, 3), args.frames)
        local = LocalCompute(IocSettings(work_root=str(root / "local")), {"workers": 1})
        try:
            local.start()
            out["submit_latency_ms"] = {"Local": _latency(local, root, args.latency_samples)}
        finally:
            local.shutdown()
        if "parsl" not in args.skip:
            walls = {}
            for workers in (1, 2):
                compute = _parsl(root, workers)
                try:
                    if workers == 1:
                        out["submit_latency_ms"]["Parsl"] = _latency(compute, root,
                                                                     args.latency_samples)
                    walls[workers] = _recon_wall(compute, scans[:args.recons], root)
                finally:
                    compute.shutdown()
            out["parsl_recons"] = args.recons
            out["parsl_t1_s"], out["parsl_t2_s"] = round(walls[1], 2), round(walls[2], 2)
            out["parsl_efficiency"] = round(walls[1] / (2 * walls[2]), 3)
        if "overlap" not in args.skip:
            serial = asyncio.run(_three_runs(root, scans[:3], 1))
            overlapped = asyncio.run(_three_runs(root, scans[:3], 2))
            out["serial_s"], out["overlapped_s"] = round(serial, 2), round(overlapped, 2)
            out["overlap_speedup"] = round(serial / overlapped, 3)
            st = out["stage_s_serial"] = STAGE_TIMES[1]
            out["stage_s_overlapped"] = STAGE_TIMES[2]
            # training and export stay one run at a time: the best overlap can do
            first = st.get("Transferring", 0) + st.get("Reconstructing", 0)
            lineage = st.get("Training", 0) + st.get("Deploying", 0)
            out["overlap_bound"] = round(3 * (first + lineage) / (first + 3 * lineage), 3)
    out["goals"] = {"parsl_efficiency": 0.85, "overlap_speedup": 1.25}
    return out
