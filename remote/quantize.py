"""An int8 copy of an exported model, calibrated on a scan: ``model-vN-int8.onnx``.

On a CPU edge an int8 network is what makes the stream fast: on the 2-core
development machine OpenVINO ran the 128x128 PtychoNN's int8 copy at 485
frames/s on one thread, against 291 for the float32 model in bfloat16 and 316
for ONNX Runtime on the int8 file. Static quantization needs frames like those
the edge will see to choose its scales, so the copy is calibrated on a scan's
own frames, preprocessed exactly as the card says; what it costs is measured
on other frames of that scan (the change of the phase against the float32
model, in radians: 0.017 rad RMS on the demo's trained 64x64 network) and
written into the copy's card, so whoever deploys it sees the price first.

The copy keeps the model's version (the same trained network) and gets a card
of its own with its own checksum; the card is renamed into place before the
ONNX file, as export does, so the edge never finds the copy without its card.
Load it on the edge by path (``Edge:Model:Load model-v3-int8.onnx``), or run the
edge with ``--int8`` to have it stand in for ``model-v3.onnx``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.modelcard import (
    ModelCard,
    ModelCardError,
    card_path,
    int8_path,
    pick_outputs,
    sha256_file,
)
from ptychoflow.remote._files import atomic_path
from ptychoflow.scanfile import read_scan

CALIBRATION_FRAMES = 256
HELD_OUT_FRAMES = 64


class QuantizeError(ValueError):
    """A model or scan that cannot give an int8 copy; the message says what to change."""


def _split(n: int, calibration: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices for calibration and for measuring the error: disjoint, spread over
    the whole scan, so both see every part of the sample.
    """
    if n < 2:
        raise QuantizeError(f"the scan has {n} frame(s); quantizing needs at least 2, some to "
                            "calibrate and some to measure the error on")
    held = np.unique(np.linspace(0, n - 1, min(HELD_OUT_FRAMES, max(1, n // 4))).astype(int))
    rest = np.setdiff1d(np.arange(n), held)
    cal = rest[np.unique(np.linspace(0, len(rest) - 1, min(calibration, len(rest)))
                         .astype(int))]
    return cal, held


def _phase_change(fp32: Path, int8: Path, frames: np.ndarray) -> dict[str, float]:
    """RMS and largest change of the phase output (the one the edge publishes as phase),
    int8 against float32, in radians.
    """
    import onnxruntime as ort

    out = []
    for path in (fp32, int8):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        # the phase output picked the way the edge picks it
        res = sess.run(None, {sess.get_inputs()[0].name: frames.astype(np.float32)})
        out.append(res[pick_outputs(names)[0]])
    diff = np.abs(out[1].astype(np.float64) - out[0])
    return {"int8_phase_change_rms_rad": round(float(np.sqrt(np.mean(diff ** 2))), 5),
            "int8_phase_change_max_rad": round(float(diff.max()), 5)}


def quantize_model(model: str | os.PathLike[str], scan: str | os.PathLike[str],
                   calibration: int = CALIBRATION_FRAMES,
                   frames: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``model-vN-int8.onnx`` and its card beside ``model``; returns what was done.

    ``frames``: the scan's detector frames when the caller has read them already
    (``scan`` is then only recorded). Raises :class:`QuantizeError` (a
    ``ValueError``) for a model without a valid card or a scan whose frames the
    model cannot take; nothing is written then.
    """
    from ptychoflow.int8 import quantize_int8

    src = Path(model)
    if not src.is_file():
        raise QuantizeError(f"model {src} does not exist")
    try:
        card = ModelCard.load(card_path(src))
        card.verify_file(src)
    except ModelCardError as exc:
        raise QuantizeError(f"{src.name}: {exc}; quantize an exported model-vN.onnx with its "
                            "card") from exc
    if "quantized_from" in card.provenance:
        raise QuantizeError(f"{src.name} is already an int8 copy of "
                            f"{card.provenance['quantized_from']}; quantize that one")
    if calibration < 1:
        raise QuantizeError(f"calibration frames must be at least 1, got {calibration}")
    data = read_scan(scan).data if frames is None else frames
    pre = card.preprocessing
    try:
        pre.check_frame_shape(data.shape[1:])
    except ValueError as exc:
        raise QuantizeError(f"scan {Path(scan).name}: {exc}; calibrate on a scan taken for "
                            "this model") from exc
    cal_idx, held_idx = _split(len(data), calibration)
    cal, held = pre(data[cal_idx]), pre(data[held_idx])

    dst = int8_path(src)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        quantize_int8(src, tmp, cal, input_name=card.input.name)
        change = _phase_change(src, tmp, held)
        new = dataclasses.replace(
            card, model_file=dst.name, sha256=sha256_file(tmp),
            metrics={**card.metrics, **change},
            provenance={**card.provenance, "quantized_from": src.name,
                        "quantized_from_sha256": card.sha256,
                        "quantization": "int8 QDQ, per-channel weights",
                        "calibration_scan": str(Path(scan).resolve()),
                        "calibration_frames": len(cal_idx),
                        "measured_on_frames": len(held_idx)})
        with atomic_path(card_path(dst)) as ctmp:
            new.save(ctmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"model": str(dst), "card": str(card_path(dst)), "version": card.version,
            "quantized_from": str(src), "calibration_frames": len(cal_idx),
            "measured_on_frames": len(held_idx), **change}
