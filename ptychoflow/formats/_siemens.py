"""Tike's Siemens-star reference set (``.npz.bz2``): frames, probe and positions in pixels."""

from __future__ import annotations

import bz2
import io
import os
from pathlib import Path

import numpy as np

from ptychoflow.scan import Scan, ScanFileError

# Nominal geometry for the Siemens-star set, which ships positions in pixels only.
SIEMENS_ENERGY_EV = 8800.0
SIEMENS_DISTANCE_M = 2.0
SIEMENS_PIXEL_M = 75e-6


def read_siemens_star(path: str | os.PathLike[str]) -> Scan:
    """Read Tike's Siemens-star set (``.npz.bz2``) into a :class:`Scan`.

    Its frames have zero frequency at the corner: they are ``fftshift``-ed to the
    centre like a detector's. Positions come in object pixels (y, x); they are
    given metres through a nominal geometry (8.8 keV, 2 m, 75 µm pixels), which
    only sets the physical scale, not the reconstruction.
    """
    p = Path(path)
    if not p.exists():
        raise ScanFileError(p, "no such file; the Siemens-star set lives in ../shared/data/")
    try:
        raw = bz2.open(p).read() if p.name.endswith(".bz2") else p.read_bytes()
        npz = np.load(io.BytesIO(raw))
        data = np.asarray(npz["data"])[0]
        probe = np.asarray(npz["probe"]).reshape(data.shape[1:])
        scan_px = np.asarray(npz["scan"])[0].astype(np.float64)
    except (OSError, EOFError, KeyError, ValueError) as exc:
        raise ScanFileError(p, f"not a readable Siemens-star archive ({exc})") from exc
    data = np.fft.fftshift(data, axes=(-2, -1)).astype(np.float32)
    data = np.clip(data, 0, None)
    scan_px -= scan_px.mean(axis=0)
    s = Scan(data=data, positions=np.zeros((data.shape[0], 2)), energy_ev=SIEMENS_ENERGY_EV,
             distance_m=SIEMENS_DISTANCE_M, pixel_size_m=SIEMENS_PIXEL_M,
             probe=probe.astype(np.complex64), metadata={"source": "siemens-star-small (Tike)"})
    s.positions = scan_px * s.object_pixel_size_m
    s.validate(p)
    return s
