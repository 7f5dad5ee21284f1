"""Where each frame was taken: frame attributes first, a positions file second.

The simulator and areaDetector with position attributes send
``PositionX``/``PositionY`` (metres, relative to the object centre) with
every frame. Detectors that do not get a positions file from the
configuration: row ``uniqueId - 1`` (areaDetector counts frames from 1) holds
x and y in metres. Accepted: ``.npy`` (N, 2), ``.csv``/``.txt`` (two columns
x y) or a scan ``.h5`` (``/entry/instrument/positions/{x,y}``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychoflow.ntnda import Frame

ATTR_X, ATTR_Y = "PositionX", "PositionY"


def load_positions(path: str | Path) -> np.ndarray:
    """(N, 2) float64 array of x, y in metres; ValueError naming the problem."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"positions file {p} does not exist; fix --positions")
    if p.suffix in (".h5", ".hdf5", ".nxs"):
        import h5py

        with h5py.File(p, "r") as fh:
            try:
                x = np.asarray(fh["/entry/instrument/positions/x"], dtype=np.float64)
                y = np.asarray(fh["/entry/instrument/positions/y"], dtype=np.float64)
            except KeyError as exc:
                raise ValueError(f"{p} has no /entry/instrument/positions/x and y") from exc
        arr = np.stack([x, y], axis=1)
    elif p.suffix == ".npy":
        arr = np.asarray(np.load(p), dtype=np.float64)
    else:
        arr = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise ValueError(f"positions file {p} must hold finite (N, 2) x, y values in metres, "
                         f"got shape {arr.shape}")
    return arr


class PositionSource:
    """Looks a frame's position up; returns a message instead when there is none."""

    def __init__(self, path: str = "") -> None:
        self.table = load_positions(path) if path else None

    def position(self, frame: Frame) -> tuple[float, float] | str:
        """(x, y) metres, or a string saying why the frame has no usable position."""
        a = frame.attributes
        if ATTR_X in a and ATTR_Y in a:
            try:
                x, y = float(a[ATTR_X]), float(a[ATTR_Y])
            except (TypeError, ValueError):
                return (f"frame {frame.unique_id}: PositionX/PositionY are not numbers "
                        f"({a[ATTR_X]!r}, {a[ATTR_Y]!r})")
            if not (np.isfinite(x) and np.isfinite(y)):
                return f"frame {frame.unique_id}: position ({x}, {y}) is not finite"
            return x, y
        if self.table is None:
            return (f"frame {frame.unique_id} has no PositionX/PositionY attributes and no "
                    "positions file is configured (set --positions, or --no-stitch)")
        row = frame.unique_id - 1
        if not 0 <= row < len(self.table):
            return (f"frame {frame.unique_id} is beyond the {len(self.table)} rows of the "
                    "positions file")
        return float(self.table[row, 0]), float(self.table[row, 1])
