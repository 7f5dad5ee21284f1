"""A stitched phase map with its geometry, saved beside the stage that made it.

The export stage stitches the new model's predictions on the run's scan to
measure its quality; it keeps that map (``network-phase.npy`` plus a JSON file
with the pixel size and origin) so the run report shows what the network made
of the scan without running the network again. Both files are written
atomically: a reader finds both or neither.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptychoflow.remote._files import atomic_path, write_json

FORMAT = "ptychoflow-phase-map-1"


@dataclass(frozen=True)
class PhaseMap:
    """Phase in radians on a regular grid (NaN where nothing was stitched).

    ``origin_m`` is the position (y, x) in metres of the centre of pixel (0, 0), in the
    scan's coordinates (the frame of ``/entry/instrument/positions``).
    """

    phase: np.ndarray
    pixel_size_m: float
    origin_m: tuple[float, float]

    def extent_m(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in metres for ``imshow(origin="upper")``."""
        h, w = self.phase.shape
        p = self.pixel_size_m
        y0, x0 = self.origin_m
        return x0 - p / 2, x0 + (w - 0.5) * p, y0 + (h - 0.5) * p, y0 - p / 2

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (``.npy``) and its ``.json`` geometry, each atomically."""
        npy = Path(path)
        with atomic_path(npy) as tmp:
            with tmp.open("wb") as fh:
                np.save(fh, self.phase.astype(np.float32))
        write_json(npy.with_suffix(".json"), {
            "format": FORMAT, "pixel_size_m": self.pixel_size_m,
            "origin_m": list(self.origin_m), "shape": list(self.phase.shape),
            "units": "rad"})
        return npy


def load_phase_map(path: str | os.PathLike[str]) -> PhaseMap:
    """Read a map written by :meth:`PhaseMap.save`."""
    npy = Path(path)
    meta = json.loads(npy.with_suffix(".json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{npy}: not a ptychoflow phase map (format {meta.get('format')!r})")
    phase = np.load(npy)
    y0, x0 = meta["origin_m"]
    return PhaseMap(phase, float(meta["pixel_size_m"]), (float(y0), float(x0)))
