"""The physics check: does a prediction explain the frame it was made from?

A network's phase image is only a guess; the frame is a measurement. Given the
probe of the reconstruction the network was trained on, the prediction implies
a far-field intensity, ``|F{probe * object patch}|^2``; comparing it with the
measured frame, preprocessed as the network saw it, gives a misfit that needs
no ground truth. On scans like the training scans it sits at the value the
model card records; when the sample, the probe or the geometry changes the
network's guesses stop explaining the frames and it rises.

The forward model works on the region the network input comes from: the
central ``crop`` detector pixels (the whole frame without a crop), whose real
space pixel is the network's output pixel ``lambda z / (crop p)`` and whose
field is the probe's field. The probe (``N x N`` at the reconstruction's pixel)
is resampled to that grid by cropping its spectrum; the predicted ``S x S``
patch sits in the centre (its pixel ``(S - 1) / 2`` on the scan position, as
:mod:`ptychoflow.remote.pairs` cuts the labels) and the rest of the field,
which the network does not predict, is filled with the patch's mean border
value. The intensity is then area-binned to ``S x S`` exactly as
:class:`~ptychoflow.preprocess.Preprocess` bins, scaled to the frame's total
counts (the flux and the probe's power cancel, so beam-intensity drifts do not
count as misfit), put through the same intensity transform, and compared with
the network input:

    error = || x - T(c * bin(I_pred)) || / || x ||

Numpy only: the edge runs it without torch, and export computes the card's
value with the same code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.preprocess import Preprocess, area_matrix

CHECK_ATTRIBUTE = "Consistency"
"""The NDAttribute on ``Edge:Phase`` that carries a checked frame's misfit."""
CARD_METRIC = "consistency"
"""The card's metric: the median misfit of the model's predictions on its training scan."""


class PhysicsCheckError(ValueError):
    """A probe or geometry the check cannot use; the message says what to fix."""


def probe_path(model_path: str | os.PathLike[str]) -> Path:
    """``model-v3.onnx`` (and its int8 copy ``model-v3-int8.onnx``) -> ``model-v3-probe.npy``."""
    p = Path(model_path)
    return p.with_name(f"{p.stem.removesuffix('-int8')}-probe.npy")


def save_probe(path: str | os.PathLike[str], probe: np.ndarray,
               pixel_size_m: float) -> dict[str, Any]:
    """Write the probe atomically; returns the card's ``probe`` entry (file, sha256, pixel)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.part")
    try:
        with tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(probe, np.complex64), allow_pickle=False)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": p.name, "sha256": digest, "pixel_size_m": float(pixel_size_m),
            "shape": list(probe.shape)}


def load_probe(entry: Mapping[str, Any], folder: str | os.PathLike[str]) -> tuple[np.ndarray,
                                                                                   float]:
    """The probe a card names, checked against its sha256: (probe, pixel size in metres)."""
    try:
        name, digest, pixel = str(entry["file"]), str(entry["sha256"]), \
            float(entry["pixel_size_m"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PhysicsCheckError(f"the card's probe entry is incomplete ({exc!r}); re-export "
                                "the model") from exc
    path = Path(folder) / Path(name).name  # only ever beside the model
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PhysicsCheckError(f"probe {path.name} is not beside the model ({exc.strerror}); "
                                "deploy it with the model (the transfer sends it)") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise PhysicsCheckError(f"probe {path.name}: sha256 {actual[:12]}… does not match the "
                                f"card ({digest[:12]}…); the file was changed or truncated")
    probe = np.load(path, allow_pickle=False)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or not np.iscomplexobj(probe):
        raise PhysicsCheckError(f"probe {path.name} is {probe.dtype} {probe.shape}; expected a "
                                "square complex array")
    if not (np.all(np.isfinite(probe)) and pixel > 0):
        raise PhysicsCheckError(f"probe {path.name} is not finite or its pixel {pixel} is not "
                                "positive")
    return probe.astype(np.complex64), pixel


def _inverse(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Binned counts from network inputs: the intensity transform undone."""
    u = x / np.float32(pre.scale)
    if pre.intensity == "sqrt":
        u = u * u
    elif pre.intensity == "log1p":
        u = np.expm1(u)
    return np.maximum(u, 0.0)


def _forward(m: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The intensity transform and scale, as :class:`Preprocess` applies them."""
    if pre.intensity == "sqrt":
        m = np.sqrt(m)
    elif pre.intensity == "log1p":
        m = np.log1p(m)
    return m * np.float32(pre.scale)


@dataclass(frozen=True)
class ForwardModel:
    """What a prediction implies a frame looks like, for one model (see the module doc)."""

    probe: np.ndarray  # (n, n) complex64 on the output grid, centred on the patch centre
    preprocess: Preprocess
    field_px: int  # n: detector pixels of the region the input comes from (crop or frame)

    @classmethod
    def build(cls, probe: np.ndarray, probe_pixel_m: float, preprocess: Preprocess,
              output_pixel_m: float) -> ForwardModel:
        """Resample the probe onto the output grid; refuse geometries that do not fit."""
        if not output_pixel_m > 0:
            raise PhysicsCheckError("the model has no output pixel size; the check needs one")
        big = probe.shape[0]
        n = int(round(big * probe_pixel_m / output_pixel_m))
        crop = preprocess.crop
        if crop is not None and n != crop:
            raise PhysicsCheckError(
                f"the probe's field ({big} px of {probe_pixel_m:.3e} m) is {n} output pixels, "
                f"but the model crops frames to {crop}; the probe is not from this model's "
                "training geometry")
        s = preprocess.input_size
        if n < s:
            raise PhysicsCheckError(f"the probe's field is {n} output pixels, smaller than the "
                                    f"network's {s}x{s} patch; the probe is from another geometry")
        spec = np.fft.fftshift(np.fft.fft2(probe.astype(np.complex128)))
        out = np.zeros((n, n), np.complex128)
        lo_in, lo_out = max(0, big // 2 - n // 2), max(0, n // 2 - big // 2)
        k = min(big, n)
        out[lo_out:lo_out + k, lo_out:lo_out + k] = spec[lo_in:lo_in + k, lo_in:lo_in + k]
        # the probe's pixel n // 2 sits on the position, the patch's (S - 1) / 2: shift
        shift = (n - s) // 2 + (s - 1) / 2 - n // 2
        ramp = np.exp(-2j * np.pi * shift * np.fft.fftfreq(n))
        phasor = np.fft.ifftshift(out) * ramp[:, None] * ramp[None, :]
        resampled = np.fft.ifft2(phasor)
        return cls(resampled.astype(np.complex64), preprocess, n)

    def frame_fits(self, shape: tuple[int, ...]) -> str | None:
        """Why frames of ``shape`` cannot be checked (None: they can)."""
        if self.preprocess.crop is None and tuple(shape[-2:]) != (self.field_px, self.field_px):
            return (f"frames are {shape[-2]}x{shape[-1]} but the model's probe covers "
                    f"{self.field_px}x{self.field_px} detector pixels")
        return None

    def intensity(self, phase: np.ndarray, amplitude: np.ndarray | None = None) -> np.ndarray:
        """Far-field intensity (B, n, n), zero frequency centred, of predicted patches."""
        ph = np.asarray(phase, np.float32).reshape(-1, *np.shape(phase)[-2:])
        obj = np.empty(ph.shape, np.complex64)  # exp(i phase) in single precision
        obj.real, obj.imag = np.cos(ph), np.sin(ph)
        if amplitude is not None:
            obj *= np.asarray(amplitude, np.float32).reshape(ph.shape)
        shape: tuple[int, ...] = ph.shape
        b, s = shape[0], shape[-1]
        n = self.field_px
        o0 = (n - s) // 2
        border = np.concatenate([obj[:, 0], obj[:, -1], obj[:, 1:-1, 0], obj[:, 1:-1, -1]],
                                axis=1).mean(axis=1)
        grid = np.empty((b, n, n), np.complex64)
        grid[...] = border[:, None, None]
        grid[:, o0:o0 + s, o0:o0 + s] = obj
        grid *= self.probe
        f = np.fft.fftshift(np.fft.fft2(grid), axes=(-2, -1))
        return (f.real ** 2 + f.imag ** 2).astype(np.float32)

    def errors(self, x: np.ndarray, phase: np.ndarray,
               amplitude: np.ndarray | None = None) -> np.ndarray:
        """Normalised misfit (B,) of predictions against their network inputs ``x``."""
        pre = self.preprocess
        s = pre.input_size
        xs = np.asarray(x, np.float32).reshape(-1, s, s)
        pred = self.intensity(phase, amplitude)
        n = self.field_px
        if n % s == 0 and n != s:  # integer binning, as Preprocess's area matrix bins
            pred = pred.reshape(-1, s, n // s, s, n // s).mean(axis=(2, 4))
        elif n != s:
            a = area_matrix(n, s)
            pred = a @ pred @ a.T
        measured = _inverse(xs, pre)
        total = pred.sum(axis=(1, 2))
        c = np.divide(measured.sum(axis=(1, 2)), total, out=np.zeros_like(total),
                      where=total > 0)
        q = _forward(pred * c.astype(np.float32)[:, None, None], pre)
        norm = np.sqrt((xs ** 2).sum(axis=(1, 2)))
        err = np.sqrt(((xs - q) ** 2).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(norm > 0, err / norm, np.nan)


def card_value(errors: np.ndarray) -> float:
    """The figure a card records and ``Edge:Consistency_RBV`` runs: the median misfit."""
    e = np.asarray(errors, np.float64)
    e = e[np.isfinite(e)]
    return float(np.median(e)) if e.size else float("nan")
