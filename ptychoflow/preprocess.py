"""Preprocessing of diffraction frames into network input: one implementation for all.

The edge applies it to every live frame and training applies it to every
training pair; the parameters travel in the model card, so the network always
sees at inference exactly what it saw in training.

Steps, in order:

1. centre-crop the frame to ``crop`` pixels (``None``: the whole frame);
2. resample to ``input_size`` by area averaging (integer binning when
   ``crop`` is a multiple of ``input_size``, any ratio otherwise);
3. intensity transform (``sqrt``, ``log1p`` or ``linear``) times ``scale``.

Resampling is two small matrix products, so a batch of frames costs two
``matmul`` calls and no Python loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

Intensity = Literal["sqrt", "log1p", "linear"]


@lru_cache(maxsize=32)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix whose rows average the input span each output pixel covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                m[i, j] = overlap
        m[i] /= m[i].sum()
    m.setflags(write=False)
    return m


@dataclass(frozen=True)
class Preprocess:
    """How a detector frame becomes a network input; stored in the model card."""

    input_size: int = 128
    crop: int | None = None
    intensity: Intensity = "sqrt"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.crop is not None and self.crop < self.input_size:
            raise ValueError(f"crop {self.crop} is smaller than the network input "
                             f"{self.input_size}; upsampling invents data")
        if self.intensity not in ("sqrt", "log1p", "linear"):
            raise ValueError(f"unknown intensity transform {self.intensity!r}; use sqrt, "
                             "log1p or linear")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale}")

    def check_frame_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if frames of ``shape`` (H, W) cannot be preprocessed."""
        if len(shape) != 2:
            raise ValueError(f"expected a 2-D frame, got shape {shape}")
        need = self.crop if self.crop is not None else self.input_size
        if min(shape) < need:
            raise ValueError(f"frame {shape[0]}x{shape[1]} is smaller than the "
                             f"{need}x{need} the model needs")

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W) or (H, W) counts of any dtype -> (B, 1, S, S) float32."""
        a = np.asarray(frames)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"expected (B, H, W) frames, got shape {a.shape}")
        self.check_frame_shape(a.shape[1:])
        h, w = a.shape[1:]
        c = self.crop
        if c is not None and (h != c or w != c):
            y0, x0 = (h - c) // 2, (w - c) // 2
            a = a[:, y0:y0 + c, x0:x0 + c]
            h = w = c
        # one float32 copy of the input, then every step in place (the edge runs this
        # on every frame); an unsigned detector cannot count below zero
        x = a.astype(np.float32, copy=True)
        s = self.input_size
        if h != s or w != s:
            x = area_matrix(h, s) @ x @ area_matrix(w, s).T
        if self.intensity != "linear" and a.dtype.kind != "u":
            np.maximum(x, 0.0, out=x)
        if self.intensity == "sqrt":
            np.sqrt(x, out=x)
        elif self.intensity == "log1p":
            np.log1p(x, out=x)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x[:, None])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the model card."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        return cls(**d)
