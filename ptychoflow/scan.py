"""What a ptychography scan is in memory: :class:`Scan`, and the error every reader raises.

Here, apart from :mod:`ptychoflow.scanfile` (our file layout, its writers, and
``read_scan``) and :mod:`ptychoflow.formats` (the readers of every layout), so
that both build on it without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PART_SUFFIX = ".part"
PLANCK_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength [m] = PLANCK_EV_M / energy [eV]


class ScanFileError(ValueError):
    """A scan file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[type[ScanFileError], tuple[str, str]]:
        # a stage's error crosses from its worker process by pickle: rebuilt from the two
        # arguments, not from the one message (which would break the process pool)
        return type(self), (self.path, self.problem)


@dataclass
class Scan:
    """One ptychography scan in memory.

    ``positions`` is (N, 2) in metres, columns (y, x), relative to the object's
    centre; frames are centred diffraction patterns (zero frequency in the middle).
    """

    data: np.ndarray
    positions: np.ndarray
    energy_ev: float
    distance_m: float
    pixel_size_m: float
    probe: np.ndarray | None = None
    truth: np.ndarray | None = None
    truth_pixel_size_m: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames (and positions)."""
        return int(self.data.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one detector frame."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def wavelength_m(self) -> float:
        """X-ray wavelength from the photon energy."""
        return PLANCK_EV_M / self.energy_ev

    @property
    def object_pixel_size_m(self) -> float:
        """Real-space pixel of the far-field geometry: lambda * z / (N * p)."""
        return self.wavelength_m * self.distance_m / (self.frame_shape[0] * self.pixel_size_m)

    def positions_px(self) -> np.ndarray:
        """Positions in object pixels, (y, x)."""
        return self.positions / self.object_pixel_size_m

    def validate(self, source: str | os.PathLike[str] = "<scan>") -> None:
        """Raise :class:`ScanFileError` for anything a solver or trainer would choke on."""
        d = self.data
        if d.ndim != 3:
            raise ScanFileError(source, f"/entry/data/data must be (N, H, W), got shape {d.shape}")
        if d.shape[0] == 0:
            raise ScanFileError(source, "/entry/data/data holds no frames")
        if d.shape[1] != d.shape[2]:
            raise ScanFileError(source, f"frames must be square, got {d.shape[1]}x{d.shape[2]}")
        if self.positions.shape != (d.shape[0], 2):
            raise ScanFileError(
                source, f"{d.shape[0]} frames but positions have shape {self.positions.shape}; "
                "every frame needs one (x, y) position")
        if np.issubdtype(d.dtype, np.floating) and not np.all(np.isfinite(d)):
            raise ScanFileError(source, "/entry/data/data contains NaN or infinity")
        if np.issubdtype(d.dtype, np.signedinteger) or np.issubdtype(d.dtype, np.floating):
            if d.size and float(d.min()) < 0:
                raise ScanFileError(source, "/entry/data/data has negative counts")
        if not np.all(np.isfinite(self.positions)):
            raise ScanFileError(source, "positions contain NaN or infinity")
        for name, v in (("energy", self.energy_ev), ("detector_distance", self.distance_m),
                        ("pixel_size", self.pixel_size_m)):
            if not (np.isfinite(v) and v > 0):
                raise ScanFileError(source, f"/entry/instrument attribute {name} must be a "
                                            f"positive number, got {v!r}")
        if self.probe is not None and self.probe.shape != d.shape[1:]:
            raise ScanFileError(source, f"probe shape {self.probe.shape} differs from the frame "
                                        f"shape {d.shape[1:]}")
        if self.truth is not None:
            if self.truth.ndim != 2:
                raise ScanFileError(source, "/entry/sample/truth must be a 2-D complex image")
            if not np.all(np.isfinite(self.truth)):
                raise ScanFileError(source, "/entry/sample/truth contains NaN or infinity")
            px = self.truth_pixel_size_m or self.object_pixel_size_m
            half = np.array(self.truth.shape) * px / 2
            span = np.abs(self.positions).max(axis=0) + np.array(d.shape[1:]) * px / 2
            if np.any(span > half * (1 + 1e-6)):
                raise ScanFileError(source, "scan positions plus frame reach outside the truth "
                                            "object; enlarge the object or shrink the scan")


