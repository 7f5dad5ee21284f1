"""Small, real stage functions for testing the orchestrator (not shipped).

They follow ptychoflow.stages' contract exactly: read the scan, write outputs
atomically under ``workdir``, report progress through the Reporter (which
raises Cancelled after an Abort) and return a result dict. The IOC under test
loads them by dotted name from a TOML file ([ioc.stages]); the folder of this
module is put on the IOC's PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.scanfile import read_scan

EPOCH_S = float(os.environ.get("IOC_TEST_EPOCH_S", "0.02"))


def _atomic_save(path: Path, array: np.ndarray) -> str:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
    return str(path)


def reconstruct(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    scan = read_scan(scan_path)
    image = np.zeros(scan.frame_shape)
    epochs = int(params["recon_epochs"])
    for epoch in range(1, epochs + 1):
        image += scan.data.mean(axis=0) / epochs
        time.sleep(EPOCH_S)
        if progress:
            progress(epoch / epochs, f"epoch {epoch}", epoch=epoch, error=1.0 / epoch)
    out = _atomic_save(Path(workdir) / "recon.npy", image)
    return {"reconstruction": out, "algorithm_used": params["algorithm"]}


def train(scan_path: str, workdir: str, params: dict[str, Any],
          progress: Any = None) -> dict[str, Any]:
    recon = np.load(params["reconstruction"])  # reconstruct's result reaches train
    epochs = int(params["train_epochs"])
    best = float("inf")
    for epoch in range(1, epochs + 1):
        loss, val = 1.0 / epoch, 1.5 / epoch
        best = min(best, val)
        time.sleep(EPOCH_S)
        if progress:
            progress(epoch / epochs, f"epoch {epoch}", epoch=epoch, loss=loss, val_loss=val,
                     best_val_loss=best)
    out = _atomic_save(Path(workdir) / "checkpoint.npy", recon * 2)
    return {"checkpoint": out, "best_val_loss": best}


def export(scan_path: str, workdir: str, params: dict[str, Any],
           progress: Any = None) -> dict[str, Any]:
    weights = np.load(params["checkpoint"])  # train's result reaches export
    model_dir = Path(params["model_dir"])
    model = model_dir / f"model-v{params['version']}.onnx"
    tmp = model.with_name(model.name + ".part")
    tmp.write_bytes(weights.tobytes())
    os.replace(tmp, model)
    if progress:
        progress(1.0, f"exported {model.name}")
    # a scan named *worse* makes a model that must not replace the deployed one
    ssim = 0.5 if "worse" in Path(params["path"]).name else 0.875
    return {"model": str(model), "version": params["version"],
            "quality": {"ssim": ssim}, "metrics": {"best_val_loss": params["best_val_loss"]}}


def train_slow(scan_path: str, workdir: str, params: dict[str, Any],
               progress: Any = None) -> dict[str, Any]:
    """Trains for up to a minute, writing a partial file, honouring cancel between steps."""
    partial = Path(workdir) / "partial.npy"
    _atomic_save(partial, np.zeros(3))
    for step in range(600):
        time.sleep(0.1)
        if progress:
            progress(step / 600, f"step {step}", epoch=step, loss=1.0)
    return {"checkpoint": str(partial)}


def train_stubborn(scan_path: str, workdir: str, params: dict[str, Any],
                   progress: Any = None) -> dict[str, Any]:
    """Ignores cancel (never calls progress after the first report): must be terminated."""
    if progress:
        progress(0.0, "stubborn start", epoch=0)
    _atomic_save(Path(workdir) / "partial.npy", np.zeros(3))
    time.sleep(120)
    return {"checkpoint": "never"}


def reconstruct_failing(scan_path: str, workdir: str, params: dict[str, Any],
                        progress: Any = None) -> dict[str, Any]:
    raise ValueError("synthetic solver divergence at epoch 3")


def reconstruct_dies_once(scan_path: str, workdir: str, params: dict[str, Any],
                          progress: Any = None) -> dict[str, Any]:
    """Its worker process dies the first time (as if killed or out of memory)."""
    marker = Path(workdir).parent / "died-once"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(9)
    return reconstruct(scan_path, workdir, params, progress)


def train_dies(scan_path: str, workdir: str, params: dict[str, Any],
               progress: Any = None) -> dict[str, Any]:
    """Its worker process always dies."""
    os._exit(9)


def train_walltime(scan_path: str, workdir: str, params: dict[str, Any],
                   progress: Any = None) -> dict[str, Any]:
    """Checkpoints at epoch 1 as if its allocation were ending, then resumes when resubmitted."""
    if not params.get("resume_from"):
        state = Path(workdir) / "resume.npy"
        _atomic_save(state, np.ones(3))
        return {"resume": True, "resume_from": str(state), "epoch": 1}
    np.load(params["resume_from"])
    return train(scan_path, workdir, params, progress)


def export_affine(scan_path: str, workdir: str, params: dict[str, Any],
                  progress: Any = None) -> dict[str, Any]:
    """A real ONNX model with its card, as the edge serves it: version N multiplies by N."""
    from ptychoflow.edge.bench.models import affine_model, write_card
    from ptychoflow.preprocess import Preprocess

    np.load(params["checkpoint"])
    version = int(params["version"])
    model = Path(params["model_dir"]) / f"model-v{version}.onnx"
    affine_model(model, 32, scale=float(version))
    write_card(model, version, Preprocess(input_size=32, intensity="linear"), 10e-9)
    return {"model": str(model), "card": str(model.with_suffix(".json")), "version": version,
            "quality": {"ssim": 0.9}, "metrics": {"best_val_loss": params["best_val_loss"]}}


def _slow(scan_path: str, part: Path, progress: Any) -> None:
    """For a scan named slow*: half-write ``part`` (as an atomic writer does before its
    rename), then work a minute.
    """
    if not Path(scan_path).name.startswith("slow"):
        return
    part.write_bytes(b"\x93NUMPY half-written")
    for step in range(600):
        time.sleep(0.1)
        if progress:
            progress(step / 600, f"step {step}", epoch=step)


def reconstruct_slow(scan_path: str, workdir: str, params: dict[str, Any],
                     progress: Any = None) -> dict[str, Any]:
    """Reconstructs a slow* scan for up to a minute, its output half-written meanwhile."""
    _slow(scan_path, Path(workdir) / "recon.npy.part", progress)
    return reconstruct(scan_path, workdir, params, progress)


def export_slow(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    """Exports a slow* scan for up to a minute, the model half-written in the model folder."""
    model = Path(params["model_dir"]) / f"model-v{params['version']}.onnx.part"
    _slow(scan_path, model, progress)
    return export(scan_path, workdir, params, progress)


def train_slow_half(scan_path: str, workdir: str, params: dict[str, Any],
                    progress: Any = None) -> dict[str, Any]:
    """Trains on a slow* scan for up to a minute, its checkpoint half-written meanwhile."""
    _slow(scan_path, Path(workdir) / "checkpoint.npy.part", progress)
    return train(scan_path, workdir, params, progress)


def reconstruct_fills(scan_path: str, workdir: str, params: dict[str, Any],
                      progress: Any = None) -> dict[str, Any]:
    """For a scan named fill*: writes an 8 MB output first (more than a full disk holds)."""
    if Path(scan_path).name.startswith("fill"):
        _atomic_save(Path(workdir) / "big.npy", np.zeros(1 << 20))
    return reconstruct(scan_path, workdir, params, progress)


def reconstruct_cut_input(scan_path: str, workdir: str, params: dict[str, Any],
                          progress: Any = None) -> dict[str, Any]:
    """For a scan named cut*: its copy at the compute site is cut short before it is read."""
    if Path(scan_path).name.startswith("cut"):
        size = os.path.getsize(scan_path)
        os.truncate(scan_path, size // 2)
    return reconstruct(scan_path, workdir, params, progress)


def reconstruct_live(scan_path: str, workdir: str, params: dict[str, Any],
                     progress: Any = None) -> dict[str, Any]:
    """Reports a live phase image as streaming rPIE does (``live_phase``, ``live_id``) a few
    times a second for up to a minute, then reconstructs: for screens to show it.

    The image is 40 high and 48 wide, a ramp along x: a viewer that swaps the axes or
    reads the waveform in the wrong order shows another shape or stripes the other way.
    """
    from ptychoflow.livephase import encode

    ramp = np.linspace(-np.pi / 2, np.pi / 2, 48, dtype=np.float32)
    record = encode(np.broadcast_to(ramp, (40, 48)).copy())
    for i in range(1, 201):
        if progress:
            progress(0.5, "reconstructing while acquiring", live_phase=record, live_id=i)
        time.sleep(0.3)
    return reconstruct(scan_path, workdir, params, progress)
