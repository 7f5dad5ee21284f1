"""The four remote stages of a workflow run, in the contract of :mod:`ptychoflow.stages`.

``reconstruct -> train -> export`` (the scan file reaches the compute site
before them through the IOC's transfer back end): each is a plain, picklable
function ``fn(scan_path, workdir, params, progress=None) -> dict`` that any
executor (a local process, a Parsl worker, a Globus Compute endpoint) can run.
The orchestrator merges each result into ``params`` for the next stage, so
stages find ``params["path"]`` (the transferred scan), ``params["reconstruction"]``
and ``params["checkpoint"]``. Heavy imports (torch, pty-chi, onnx) happen
inside the stage, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptychoflow.geometry import Geometry
from ptychoflow.scanfile import Scan, read_scan
from ptychoflow.stages import Reporter

Params = dict[str, Any]
NETWORK_PHASE = "network-phase.npy"
"""The export stage's stitched phase map of the scan (plus ``.json`` geometry)."""


class StageError(RuntimeError):
    """A stage that cannot run with the parameters it was given."""


def _scan_path(scan_path: str, params: Params) -> Path:
    return Path(params.get("path") or scan_path)


def _read(path: Path, params: Params | None = None) -> Scan:
    """The scan in ptychoflow's conventions: the beamline's ``geometry`` (frame orientation,
    position axes) applied here, where every stage reads it (ptychoflow.geometry).
    """
    try:
        geometry = Geometry.from_dict((params or {}).get("geometry"))
    except (TypeError, ValueError) as exc:
        raise StageError(f"geometry: {exc}") from exc
    scan = geometry.scan(read_scan(path))
    scan.metadata["path"] = str(path)
    return scan


def _stem(path: Path) -> str:
    from ptychoflow.remote.dataset import scan_key

    return scan_key(path)


def reconstruct(scan_path: str, workdir: str, params: Params,
                progress: Reporter | None = None) -> dict[str, Any]:
    """Iterative reconstruction (rPIE by default) into ``workdir/<scan>-recon.h5``.

    Alongside it ``<scan>-recon.cxi``, the same object and probe as CXI for other
    ptychography tools (ptychodus opens it), unless ``params["recon_cxi"]`` is false.
    """
    from ptychoflow.remote.recon import (
        ReconSettings,
        reconstruct_scan,
        write_reconstruction,
        write_reconstruction_cxi,
    )

    path = _scan_path(scan_path, params)
    try:
        settings = ReconSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise StageError(f"reconstruction parameters: {exc}") from exc
    streaming: dict[str, Any] = {}
    if params.get("stream_dir"):  # the scan is still arriving in chunks: follow them
        from ptychoflow.remote.streaming import reconstruct_chunks

        geometry = Geometry.from_dict(params.get("geometry"))
        rec, scan, path = reconstruct_chunks(params, workdir, settings, progress, geometry.scan)
        streaming = {"path": str(path), "scan_path": str(path), "streaming": True,
                     "stream_final_seconds": rec.settings["final_seconds"]}
    else:
        scan = _read(path, params)
        rec = reconstruct_scan(scan, settings, progress)
    out = write_reconstruction(Path(workdir) / f"{_stem(path)}-recon.h5", rec)
    result: dict[str, Any] = {**streaming, "reconstruction": str(out), "epochs": len(rec.errors),
                              "final_error": rec.errors[-1], "algorithm": settings.algorithm,
                              "recon_seconds": rec.seconds,
                              "recon_seconds_per_frame": rec.seconds / scan.n_frames}
    if params.get("recon_cxi", True):
        cxi = write_reconstruction_cxi(out.with_suffix(".cxi"), rec, scan)
        result["reconstruction_cxi"] = str(cxi)
    return result


def train(scan_path: str, workdir: str, params: Params,
          progress: Reporter | None = None) -> dict[str, Any]:
    """Add this scan's pairs to the training set in ``train_dir`` and train one round."""
    from ptychoflow.remote.dataset import TrainSet
    from ptychoflow.remote.train import TrainSettings, train_round

    if not params.get("reconstruction"):
        raise StageError("train needs params['reconstruction'] (the reconstruct stage's "
                         "output); run reconstruct first")
    try:
        settings = TrainSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise StageError(f"training parameters: {exc}") from exc
    root = Path(params.get("train_dir") or Path(workdir) / "trainset")
    resume = bool(params.get("resume_from"))
    if resume:  # the round's pairs are in the set already: go on where the allocation ended
        ts = TrainSet.open(root)
        if ts is None:
            raise StageError(f"cannot resume training: no training set in {root}")
    else:
        ts = _add_pairs(scan_path, params, root, settings.seed)
    result = train_round(ts, settings, progress, deadline=_deadline(params), resume=resume)
    result["train_dir"] = str(root)
    result["scans_in_set"] = len(ts.scans)
    return result


def _deadline(params: Params) -> float | None:
    """The end of the allocation this stage runs in (``params`` or the worker's block)."""
    import os

    if params.get("deadline"):
        return float(params["deadline"])
    try:
        return float(os.environ["PTYCHOFLOW_BLOCK_START"]) + float(
            os.environ["PTYCHOFLOW_WALLTIME_S"])
    except (KeyError, ValueError):
        end = os.environ.get("SLURM_JOB_END_TIME")
        return float(end) if end and end.isdigit() else None


def _add_pairs(scan_path: str, params: Params, root: Path, seed: int) -> Any:
    """Make the scan's training pairs and add them to the persistent set in ``root``."""
    from ptychoflow.preprocess import Preprocess
    from ptychoflow.remote.dataset import TrainSet
    from ptychoflow.remote.pairs import ObjectGrid, input_scale, make_pairs, output_pixel_size
    from ptychoflow.remote.recon import read_reconstruction

    path = _scan_path(scan_path, params)
    scan = _read(path, params)
    read_with = Geometry.from_dict(params.get("geometry")).to_dict()  # as _read applied it
    rec = read_reconstruction(params["reconstruction"])
    ts = TrainSet.open(root)
    if ts is None:
        # Binning by two keeps the real-space pixel and halves the field of view to about
        # twice the probe (a quarter of the frame), where the frame holds information.
        size = int(params.get("model_size") or (128 if scan.frame_shape[0] > 128 else 64))
        crop = params.get("crop")
        pre = Preprocess(size, int(crop) if crop else None,
                         params.get("intensity", "sqrt"))
        pre = Preprocess(pre.input_size, pre.crop, pre.intensity, input_scale(scan, pre))
        ts = TrainSet(root, pre, size, output_pixel_size(scan, pre),
                      bool(params.get("amplitude", False)), geometry=read_with)
    if Geometry.from_dict(ts.geometry).to_dict() != read_with:
        raise StageError(f"{path}: read with geometry {params.get('geometry') or {}} but the "
                         f"training set in {root} was made with {ts.geometry or {}}; use "
                         "another train_dir for another detector or stage orientation")
    px = output_pixel_size(scan, ts.preprocess)
    if abs(px / ts.output_pixel_size_m - 1) > 0.01:
        raise StageError(f"{path}: its geometry gives an output pixel of {px:.3e} m but the "
                         f"training set in {root} uses {ts.output_pixel_size_m:.3e} m; use "
                         "another train_dir for this energy/distance/detector")
    grid = ObjectGrid.centred(rec.object, rec.pixel_size_m)
    x, y = make_pairs(scan, grid, ts.preprocess, ts.output_size, ts.amplitude)
    ts.add(_stem(path), x, y, {"scan": str(path), "reconstruction": params["reconstruction"]},
           seed=seed)
    return ts


def export(scan_path: str, workdir: str, params: Params,
           progress: Reporter | None = None) -> dict[str, Any]:
    """Export the best checkpoint to ONNX + card in ``model_dir`` and measure its quality."""
    from ptychoflow.remote.export import export_checkpoint
    from ptychoflow.remote.train import load_checkpoint

    ckpt_path = params.get("checkpoint") or Path(
        params.get("train_dir") or Path(workdir) / "trainset") / "checkpoints" / "best.pt"
    if not Path(ckpt_path).exists():
        raise StageError(f"no checkpoint at {ckpt_path}; run the train stage first or set "
                         "checkpoint")
    ckpt = load_checkpoint(ckpt_path)
    path = _scan_path(scan_path, params)
    scan = _read(path, params)
    if progress is not None:
        progress(0.1, message="measuring quality")
    quality, x, stitched = evaluate_scan(ckpt, scan, params.get("reconstruction"))
    from ptychoflow.remote.consistency import training_check

    check = training_check(ckpt, x, params.get("reconstruction"))  # the card's physics figure
    if progress is not None:
        progress(0.5, message="exporting ONNX")
    version = params.get("version")
    result = export_checkpoint(
        ckpt, params.get("model_dir") or Path(workdir) / "models",
        _parity_frames(params, workdir, x),
        version=int(version) if version not in (None, "") else None,
        metrics={"quality": quality, "quality_scan": str(path), **check.metrics(str(path))},
        build_tensorrt=bool(params.get("tensorrt", True)), probe=check.probe)
    if params.get("int8"):
        from ptychoflow.remote.quantize import quantize_model

        if progress is not None:
            progress(0.8, message="quantizing an int8 copy")
        q = quantize_model(result["model"], path, frames=scan.data)
        result["int8_model"] = q["model"]
        result["int8_phase_change_rms_rad"] = q["int8_phase_change_rms_rad"]
    if progress is not None:
        progress(1.0, message=f"model v{result['version']} exported")
    result["quality"] = quality
    result["metrics"] = check.metrics(str(path))  # registered with the model (the IOC's rule)
    # the map the quality was measured on, for the run report (never stitched twice)
    result["network_phase"] = str(stitched.save(Path(workdir) / NETWORK_PHASE))
    return result


def _parity_frames(params: Params, workdir: str, x: Any) -> Any:
    """Held-out validation inputs of the training set (else frames of this scan)."""
    from ptychoflow.remote.dataset import TrainSet, TrainSetError

    try:
        ts = TrainSet.open(params.get("train_dir") or Path(workdir) / "trainset")
        if ts is not None:
            xv = ts.load(float(params.get("val_fraction", 0.1)))[2]
            if len(xv) and xv.shape[1:] == x.shape[1:]:
                return xv[:16]
    except TrainSetError:
        pass
    return x[:: max(1, len(x) // 16)][:16]


def evaluate_scan(ckpt: Any, scan: Scan, reconstruction: str | None = None) -> \
        tuple[dict[str, Any], Any, Any]:
    """Quality of a checkpoint's stitched phase on ``scan`` vs the reconstruction and truth.

    Returns the figures, the network's inputs and the stitched map (a
    :class:`~ptychoflow.remote.phasemap.PhaseMap`).
    """
    from ptychoflow.preprocess import Preprocess
    from ptychoflow.remote.quality import scan_quality_and_map
    from ptychoflow.remote.train import predict

    pre = Preprocess.from_dict(ckpt.meta["preprocess"])
    x = pre(scan.data)
    phases = predict(ckpt.model(), x)[:, 0]
    quality, stitched = scan_quality_and_map(phases, scan, float(ckpt.meta["output_pixel_size_m"]),
                                             reconstruction)
    return quality, x, stitched
