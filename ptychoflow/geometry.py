"""How a beamline's detector and stages differ from ptychoflow's conventions, in one place.

Detectors and stages disagree about orientation and axis signs: the recurring
bug class of every ptychography code, where a map comes out mirrored or a scan
is stitched rotated. ptychoflow's convention: frames (H, W) with rows along y
and columns along x, positions (y, x) in metres from the object centre, +x to
the right along columns and +y down along rows (as the simulator writes them).

A :class:`Geometry` says how what a beamline sends maps onto that:

* the frame: ``transpose`` (swap rows and columns) first, then ``flip_rows``
  (upside down) and ``flip_cols`` (mirror);
* the positions: ``x_sign``/``y_sign`` (+1 or -1) and ``position_unit`` (m, mm,
  um, nm), applied before anything else sees them; ``swap_xy`` goes with a
  transposed frame when the stage axes are the detector's.

It is applied where frames and positions enter: the remote stages, to a scan as
they read it (:meth:`Geometry.scan`), so reconstruction and training work in
ptychoflow's convention; the edge, to each live frame and position. Training
records it in the model card (``geometry``), and the edge serving that model
applies the card's, so the network sees at inference what it saw in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "nm": 1e-9}


@dataclass(frozen=True)
class Geometry:
    """Frame orientation and position axes of a beamline (identity: ptychoflow's own)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    swap_xy: bool = False
    x_sign: int = 1
    y_sign: int = 1
    position_unit: str = "m"

    def __post_init__(self) -> None:
        if self.x_sign not in (1, -1) or self.y_sign not in (1, -1):
            raise ValueError(f"x_sign and y_sign are +1 or -1, got {self.x_sign} and "
                             f"{self.y_sign}")
        if self.position_unit not in UNITS:
            raise ValueError(f"position_unit {self.position_unit!r} unknown; use one of "
                             f"{', '.join(UNITS)}")

    @property
    def identity(self) -> bool:
        """Nothing to do: the beamline already follows ptychoflow's conventions."""
        return self == Geometry()

    def frames(self, a: np.ndarray) -> np.ndarray:
        """Frames (..., H, W) as ptychoflow orients them (a view where it can be)."""
        if self.transpose:
            a = np.swapaxes(a, -1, -2)
        if self.flip_rows:
            a = a[..., ::-1, :]
        if self.flip_cols:
            a = a[..., :, ::-1]
        return a

    def frame_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape :meth:`frames` gives a frame of ``shape``."""
        return (*shape[:-2], shape[-1], shape[-2]) if self.transpose else shape

    def xy(self, x: float, y: float) -> tuple[float, float]:
        """One position (x, y) as sent -> (x, y) in metres, ptychoflow's axes."""
        s = UNITS[self.position_unit]
        if self.swap_xy:
            x, y = y, x
        return self.x_sign * s * x, self.y_sign * s * y

    def positions_yx(self, yx: np.ndarray) -> np.ndarray:
        """(N, 2) positions (y, x) as stored -> (y, x) in metres, ptychoflow's axes."""
        p = np.asarray(yx, dtype=np.float64) * UNITS[self.position_unit]
        if self.swap_xy:
            p = p[:, ::-1]
        return p * np.array([self.y_sign, self.x_sign], dtype=np.float64)

    def scan(self, scan: Any) -> Any:
        """A :class:`~ptychoflow.scanfile.Scan` in ptychoflow's conventions (itself if identity)."""
        if self.identity:
            return scan
        meta = {**scan.metadata, "geometry": self.to_dict()}
        return dataclasses.replace(scan, data=np.ascontiguousarray(self.frames(scan.data)),
                                   positions=self.positions_yx(scan.positions), metadata=meta)

    @classmethod
    def parse(cls, text: str) -> Geometry:
        """From the one-line setting every part takes (``geometry`` in ``[edge]``, ``[ioc]``,
        ``ptychoflow remote``): words ``transpose``, ``flip_rows``, ``flip_cols``,
        ``swap_xy`` and ``x_sign=-1``, ``y_sign=-1``, ``position_unit=um``; empty: identity.
        """
        flags = {"transpose", "flip_rows", "flip_cols", "swap_xy"}
        values: dict[str, Any] = {}
        for word in text.replace(",", " ").split():
            key, _, value = word.partition("=")
            if key in flags and not value:
                values[key] = True
            elif key in ("x_sign", "y_sign") and value in ("1", "+1", "-1"):
                values[key] = int(value)
            elif key == "position_unit" and value:
                values[key] = value
            else:
                raise ValueError(f"geometry word {word!r} unknown; use {', '.join(sorted(flags))}"
                                 ", x_sign=-1, y_sign=-1, position_unit=m|mm|um|nm")
        return cls(**values)

    def words(self) -> str:
        """The one-line form :meth:`parse` reads (empty for the identity)."""
        d = self.to_dict()
        out = [k for k in ("transpose", "flip_rows", "flip_cols", "swap_xy") if d[k]]
        out += [f"{k}={d[k]}" for k in ("x_sign", "y_sign") if d[k] != 1]
        if self.position_unit != "m":
            out.append(f"position_unit={self.position_unit}")
        return " ".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the model card's ``geometry``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Geometry:
        """From a card or settings; unknown keys are refused by name."""
        if not d:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown geometry setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**d)
