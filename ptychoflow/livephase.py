"""The live phase image a streaming reconstruction reports, small enough for a progress line.

Progress records travel as JSON lines (:mod:`ptychoflow.stages`), so the image
goes as float16 bytes in base64, at most :data:`MAX_SIDE` pixels a side (area
averaged down when larger): about 44 kB for 128 x 128, once a second. The IOC
publishes it as a waveform with its sizes, areaDetector's NDStdArrays
convention (:func:`decode`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ptychoflow.pvnames import CONTROL

MAX_SIDE = 128


def _shrink(a: np.ndarray) -> np.ndarray:
    """Integer-bin ``a`` until no side exceeds :data:`MAX_SIDE`."""
    k = max(1, -(-max(a.shape) // MAX_SIDE))
    if k == 1:
        return a
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def encode(phase: np.ndarray) -> dict[str, Any]:
    """A 2-D phase map (radians) as a JSON-ready record: shape and base64 float16 data."""
    a = np.asarray(phase, np.float64)
    if a.ndim != 2 or not a.size:
        raise ValueError(f"a live phase image must be 2-D and not empty, got shape {a.shape}")
    a = _shrink(np.nan_to_num(a))
    return {"shape": [int(a.shape[0]), int(a.shape[1])],
            "f16": base64.b64encode(a.astype("<f2").tobytes()).decode("ascii")}


def decode(record: Any) -> np.ndarray:
    """The image of :func:`encode` as float32 (H, W); a malformed record raises ValueError."""
    try:
        h, w = (int(x) for x in record["shape"])
        raw = base64.b64decode(record["f16"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a live phase record: {exc}") from exc
    if h < 1 or w < 1 or h > MAX_SIDE or w > MAX_SIDE or len(raw) != 2 * h * w:
        raise ValueError(f"live phase record of shape {h}x{w} holds {len(raw)} bytes")
    return np.frombuffer(raw, "<f2").astype(np.float32).reshape(h, w)


def live_phase_values(record: Any, count: Any) -> dict[str, Any]:
    """The live phase PVs (NDStdArrays: data, width, height, id) for one progress record."""
    img = decode(record)
    return {CONTROL.recon_phase_array_data.suffix: np.ascontiguousarray(img).ravel(),
            CONTROL.recon_phase_array_size0.suffix: int(img.shape[1]),
            CONTROL.recon_phase_array_size1.suffix: int(img.shape[0]),
            CONTROL.recon_phase_unique_id.suffix: int(count or 0)}
