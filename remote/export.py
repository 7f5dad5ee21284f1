"""From a checkpoint to a served model: ONNX, checks, model card, optional TensorRT engine.

The ONNX file has a dynamic batch axis (the edge batches frames as they come),
passes ``onnx.checker`` and must reproduce the PyTorch checkpoint on held-out
frames to within ``PARITY_TOL`` (the graph is the checkpoint's inference form,
see :mod:`ptychoflow.remote.subpixel`); only then are ``model-vN.onnx`` and its
card renamed into the model folder, the card just before the ONNX, so the edge
never finds a model without its card nor a half-written one.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.modelcard import ModelCard, TensorSpec, card_path, model_file, sha256_file
from ptychoflow.physcheck import probe_path, save_probe
from ptychoflow.remote._files import atomic_path
from ptychoflow.remote.ptychonn import Checkpoint, PtychoNN

INPUT_NAME = "diffraction"
PARITY_TOL = 1e-4
log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """An export that failed a check; nothing was added to the model folder."""


def next_version(model_dir: str | os.PathLike[str]) -> int:
    """One more than the highest ``model-vN.onnx`` in the folder (1 when empty)."""
    found = [int(m.group(1)) for p in Path(model_dir).glob("model-v*.onnx")
             if (m := re.fullmatch(r"model-v(\d+)\.onnx", p.name))]
    return max(found, default=0) + 1


def to_onnx(model: PtychoNN, path: str | os.PathLike[str], fold: bool = True) -> None:
    """Export with a dynamic batch axis, weights inside the one file.

    What is exported is :func:`~ptychoflow.remote.subpixel.for_inference` of
    ``model``: the same function with each upsampling folded into the
    convolution after it, which the edge runs faster; :func:`check_onnx` holds
    it to the plain model. ``fold=False`` exports the plain layers (to compare).
    """
    import torch

    from ptychoflow.remote.subpixel import for_inference

    s = model.config.input_size
    example = torch.zeros(2, 1, s, s)
    batch = torch.export.Dim("batch", min=1, max=4096)
    net = for_inference(model) if fold else model.cpu().eval()
    torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME],
                      output_names=model.output_names, dynamic_shapes=({0: batch},),
                      dynamo=True, external_data=False, verbose=False, optimize=True)


def check_onnx(path: str | os.PathLike[str], model: PtychoNN, frames: np.ndarray) -> float:
    """``onnx.checker`` plus parity with PyTorch on ``frames``; returns the max abs diff."""
    import onnx
    import onnxruntime as ort
    import torch

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX fails onnx.checker: {exc}") from exc
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_dim = sess.get_inputs()[0].shape[0]
    if isinstance(batch_dim, int):
        raise ExportError(f"exported ONNX has a fixed batch of {batch_dim}; the batch axis "
                          "must be dynamic")
    got = sess.run(None, {INPUT_NAME: frames.astype(np.float32)})
    with torch.no_grad():
        ref = model.cpu().eval()(torch.from_numpy(frames.astype(np.float32)))
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, refs, strict=True))
    if not diff < PARITY_TOL:
        raise ExportError(f"ONNX and PyTorch disagree by {diff:.2e} (limit {PARITY_TOL:.0e}) "
                          "on held-out frames; the export is not faithful")
    return diff


def tensorrt_engine(onnx_path: Path) -> dict[str, Any]:
    """Build a TensorRT engine beside the model where TensorRT and a GPU exist."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
        import torch
    except ImportError:
        return {"tensorrt": "skipped: TensorRT is not installed (the edge can still build "
                            "one from the ONNX with its TensorRT provider)"}
    if not torch.cuda.is_available():
        return {"tensorrt": "skipped: no CUDA GPU on this node"}
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"tensorrt": f"failed: {errs}"}
    cfg = builder.create_builder_config()
    if builder.platform_has_fast_fp16:
        cfg.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    shape = network.get_input(0).shape
    s = shape[2]
    prof.set_shape(INPUT_NAME, (1, 1, s, s), (16, 1, s, s), (256, 1, s, s))
    cfg.add_optimization_profile(prof)
    engine = builder.build_serialized_network(network, cfg)
    if engine is None:
        return {"tensorrt": "failed: TensorRT could not build the engine"}
    out = onnx_path.with_suffix(".engine")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(engine))
    return {"tensorrt": str(out)}


def export_checkpoint(ckpt: Checkpoint, model_dir: str | os.PathLike[str],
                      parity_frames: np.ndarray, version: int | None = None,
                      metrics: dict[str, Any] | None = None,
                      training: dict[str, Any] | None = None,
                      build_tensorrt: bool = True,
                      probe: tuple[np.ndarray, float] | None = None) -> dict[str, Any]:
    """Write ``model-vN.onnx`` and ``model-vN.json`` (each atomically, the card first).

    ``probe``: (probe, pixel in metres) of the training reconstruction, written as
    ``model-vN-probe.npy`` before the card that names it (the edge's physics check).
    """
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    n = int(version) if version is not None else next_version(folder)
    if n < 1:
        raise ExportError(f"model version must be at least 1, got {n}")
    onnx_path = model_file(folder, n)
    if onnx_path.exists() or card_path(onnx_path).exists():
        raise ExportError(f"{onnx_path} already exists; versions are never overwritten, "
                          f"pick another (next free: {next_version(folder)})")
    model = ckpt.model()
    cpath = card_path(onnx_path)
    try:
        digest, diff = _write_model(ckpt, model, onnx_path, cpath, n, parity_frames, metrics,
                                    training, probe)
    except BaseException:
        if not onnx_path.exists():  # the model never arrived: take back an orphan card
            cpath.unlink(missing_ok=True)
            probe_path(onnx_path).unlink(missing_ok=True)
        raise
    result: dict[str, Any] = {"model": str(onnx_path), "card": str(card_path(onnx_path)),
                              "version": n, "sha256": digest, "parity_max_abs_diff": diff}
    if probe is not None:
        result["probe"] = str(probe_path(onnx_path))
    if build_tensorrt:
        result.update(tensorrt_engine(onnx_path))
    return result


def _write_model(ckpt: Checkpoint, model: PtychoNN, onnx_path: Path, cpath: Path, n: int,
                 parity_frames: np.ndarray, metrics: dict[str, Any] | None,
                 training: dict[str, Any] | None,
                 probe: tuple[np.ndarray, float] | None = None) -> tuple[str, float]:
    """Export, check, write the card, then rename the ONNX in; returns (sha256, parity)."""
    from ptychoflow.preprocess import Preprocess

    s = ckpt.config.input_size
    meta = ckpt.meta
    with atomic_path(onnx_path) as tmp_onnx:
        tmp = tmp_onnx.with_suffix(".onnx")
        try:
            to_onnx(model, tmp)
            diff = check_onnx(tmp, model, parity_frames)
            os.replace(tmp, tmp_onnx)
        finally:
            tmp.unlink(missing_ok=True)
        digest = sha256_file(tmp_onnx)
        probe_entry = save_probe(probe_path(onnx_path), *probe) if probe is not None else {}
        card = ModelCard(
            version=n, model_file=onnx_path.name, sha256=digest,
            input=TensorSpec(INPUT_NAME, [-1, 1, s, s]),
            outputs=[TensorSpec(name, [-1, 1, s, s]) for name in model.output_names],
            preprocessing=Preprocess.from_dict(meta["preprocess"]),
            output_pixel_size_m=float(meta["output_pixel_size_m"]),
            geometry=dict(meta.get("geometry") or {}),
            training={"scans": meta.get("scans", []), "pairs": meta.get("pairs"),
                      "epoch": meta.get("epoch"), "round": meta.get("round"),
                      "settings": meta.get("settings", {}),
                      "network": {"name": "PtychoNN", **ckpt.config.to_dict()},
                      **(training or {})},
            metrics={"best_val_loss": meta.get("best_val_loss"), "parity_max_abs_diff": diff,
                     **(metrics or {})},
            provenance={"exporter": "ptychoflow.remote.export", "opset": _opset(tmp_onnx),
                        # why the graph's layers are not the checkpoint's, one for one
                        "graph": "upsampling folded into the next convolution "
                                 "(ptychoflow.remote.subpixel)"},
            probe=probe_entry,
        )
        # card first: until the ONNX is renamed in, there is no model to load without one
        card.save(cpath)
    return digest, diff


def _opset(path: Path) -> int | None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
