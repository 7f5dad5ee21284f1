"""The live stitched map: each prediction placed at its scan position and averaged.

Positions are metres relative to the object centre (as the detector
attributes ``PositionX``/``PositionY`` give them); the patch of a frame taken
at (x, y) is centred on the map at (x, y) / pixel size from the map centre,
x along columns and y along rows. The map's pixel grid is that of the scan's
first patch; a patch off that grid is resampled bilinearly onto it (losing its
outermost row and column), so sub-pixel positions are honoured and a linear
phase ramp comes out exact. Sum and weight maps are accumulated and the map is
their ratio, so overlaps average. The map
grows as the scan covers new ground, up to ``max_size`` pixels a side.

Stitching runs for every frame on the publishing thread, so :meth:`Stitcher.add`
does no allocation: the maps are float32 (a pixel overlapped by a whole scan
of ~1,000 patches keeps six significant digits) and the resampled patch is
built in place in scratch buffers.
"""

from __future__ import annotations

import math

import numpy as np


class StitchError(ValueError):
    """A patch that cannot be placed (position off the allowed map)."""


class Stitcher:
    """Accumulates predictions into one map; :meth:`reset` starts a new scan."""

    def __init__(self, pixel_size_m: float, max_size: int = 8192) -> None:
        if not pixel_size_m > 0:
            raise ValueError(f"pixel size must be positive, got {pixel_size_m}; set "
                             "output_pixel_size_m in the card or --pixel-size-m")
        self.pixel = float(pixel_size_m)
        self.max_size = int(max_size)
        self.reset()

    def reset(self) -> None:
        """Forget the current map."""
        self._sum = np.zeros((0, 0), dtype=np.float32)
        self._w = np.zeros((0, 0), dtype=np.float32)
        self._rows = np.zeros((0, 0), dtype=np.float32)  # scratch of add()
        self._cols = np.zeros((0, 0), dtype=np.float32)
        self._origin = (0, 0)  # map pixel (0, 0) in global pixel coordinates (row, col)
        self._grid: tuple[float, float] | None = None  # sub-pixel offset of the map grid
        self.count = 0

    @property
    def origin_m(self) -> tuple[float, float]:
        """Position (y, x) in metres of (the centre of) map pixel (0, 0)."""
        gy, gx = self._grid or (0.0, 0.0)
        return (self._origin[0] + gy) * self.pixel, (self._origin[1] + gx) * self.pixel

    def _ensure(self, r0: int, c0: int, r1: int, c1: int) -> None:
        """Grow the map (with margin) so global rows r0..r1, cols c0..c1 fit."""
        h, w = self._sum.shape
        or_, oc = self._origin
        if h and r0 >= or_ and c0 >= oc and r1 <= or_ + h and c1 <= oc + w:
            return
        if h:
            r0, c0 = min(r0, or_), min(c0, oc)
            r1, c1 = max(r1, or_ + h), max(c1, oc + w)
        nh, nw = r1 - r0, c1 - c0
        if max(nh, nw) > self.max_size:
            raise StitchError(f"map would be {nh}x{nw} pixels, over the {self.max_size} limit; "
                              "check positions and pixel size or raise stitch_max_size")
        # grow with a margin so a scan does not reallocate the map at every new row
        mr = min(nh // 4, (self.max_size - nh) // 2)
        mc = min(nw // 4, (self.max_size - nw) // 2)
        nr0, nr1, nc0, nc1 = r0 - mr, r1 + mr, c0 - mc, c1 + mc
        s = np.zeros((nr1 - nr0, nc1 - nc0), dtype=np.float32)
        wt = np.zeros_like(s)
        if h:
            s[or_ - nr0:or_ - nr0 + h, oc - nc0:oc - nc0 + w] = self._sum
            wt[or_ - nr0:or_ - nr0 + h, oc - nc0:oc - nc0 + w] = self._w
        self._sum, self._w, self._origin = s, wt, (nr0, nc0)

    def add(self, patch: np.ndarray, x_m: float, y_m: float) -> None:
        """Place ``patch`` (h, w) centred at (x, y) metres from the object centre."""
        if not (math.isfinite(x_m) and math.isfinite(y_m)):
            raise StitchError(f"position ({x_m}, {y_m}) is not finite")
        h, w = patch.shape
        # global coordinate of the patch's top-left pixel centre
        top = y_m / self.pixel - (h - 1) / 2.0
        left = x_m / self.pixel - (w - 1) / 2.0
        if self._grid is None:
            # the map's pixel grid is that of the scan's first patch, so a scan whose
            # steps are whole pixels is placed without any interpolation
            self._grid = (top - math.floor(top), left - math.floor(left))
        top -= self._grid[0]
        left -= self._grid[1]
        r, c = math.floor(top), math.floor(left)
        fr, fc = top - r, left - c
        self._ensure(r, c, r + h + 1, c + w + 1)
        or_, oc = self._origin
        r -= or_
        c -= oc
        p = patch.astype(np.float32, copy=False)
        if fr < 1e-6 and fc < 1e-6:  # on the map's grid: no interpolation
            self._sum[r:r + h, c:c + w] += p
            self._w[r:r + h, c:c + w] += 1.0
        else:
            # off the grid: resample the patch bilinearly onto the map's pixels (separable:
            # rows, then columns); the outermost row and column, which only one side of
            # the interpolation reaches, are left out, so a linear phase is reproduced
            # exactly at any sub-pixel offset. Rows: t = p[1:] + fr * (p[:-1] - p[1:]).
            # Columns on t flattened, q[k] = t[k+1] + fc * (t[k] - t[k+1]): contiguous
            # runs instead of strided column views (a fifth less time per patch); the
            # last column of each row mixes two rows and is left out with the edge.
            if self._rows.shape != (h - 1, w):
                self._rows = np.empty((h - 1, w), np.float32)
                self._cols = np.empty((h - 1, w), np.float32)
            p = np.ascontiguousarray(p)
            t = self._rows
            np.subtract(p[:-1], p[1:], out=t)
            t *= np.float32(fr)
            t += p[1:]
            tf, q = t.reshape(-1), self._cols.reshape(-1)[:-1]
            np.subtract(tf[:-1], tf[1:], out=q)
            q *= np.float32(fc)
            q += tf[1:]
            self._sum[r + 1:r + h, c + 1:c + w] += self._cols[:, :w - 1]
            self._w[r + 1:r + h, c + 1:c + w] += 1.0
        self.count += 1

    # the publisher drives this and StitchProcess alike; in-process there is nothing
    # queued, nothing refused later and nothing to stop
    def flush(self) -> None:
        """Nothing to hand on: every patch is placed by :meth:`add`."""

    def errors(self) -> list[str]:
        """None: :meth:`add` raises at once for a patch it cannot place."""
        return []

    def close(self) -> None:
        """Nothing to release."""

    def image(self) -> np.ndarray:
        """The averaged map as float32 (0 where nothing was placed)."""
        out = np.zeros(self._sum.shape, dtype=np.float32)
        np.divide(self._sum, self._w, out=out, where=self._w > 0.5)
        return out

    def covered(self) -> np.ndarray:
        """Boolean mask of map pixels that received at least one prediction."""
        return self._w > 0.5

    def global_to_map(self, y_m: float, x_m: float) -> tuple[float, float]:
        """Map (row, col) of the point (x, y) metres from the object centre."""
        y0, x0 = self.origin_m
        return (y_m - y0) / self.pixel, (x_m - x0) / self.pixel


class ScanFollower:
    """Which map a frame belongs on, when scans follow each other (one map per scan).

    A new scan: the uniqueId went backwards or the scan id attribute changed.
    With several lanes the ids interleave, so each lane is compared with its own
    last frame. The lane that sees the new scan first starts the new map; the
    other lanes' frames of the old scan that still arrive are left off it (they
    are published all the same) until each of those lanes reaches the new scan.
    With one input this is the plain rule: a new scan starts a new map.
    """

    def __init__(self) -> None:
        self._uid: dict[int, int] = {}  # per lane: the last uniqueId placed
        self._key: dict[int, object] = {}  # per lane: that frame's scan id attribute
        self._scan: object = None  # the scan id attribute of the current map
        self._behind: set[int] = set()  # lanes yet to reach the scan another lane began

    def place(self, lane: int, unique_id: int, key: object) -> tuple[bool, bool]:
        """(start a new map first, put this frame on the map)."""
        prev = self._uid.get(lane)
        changed = prev is not None and (unique_id < prev or key != self._key[lane])
        self._uid[lane] = unique_id
        self._key[lane] = key
        if changed and lane in self._behind:
            self._behind.discard(lane)  # joins the scan another lane began
            return False, True
        if changed or (prev is None and key != self._scan and not self._behind):
            self._scan = key
            self._behind = {x for x in self._uid if x != lane} if changed else set()
            return True, True
        return False, lane not in self._behind
