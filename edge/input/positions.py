"""Where each frame was taken: frame attributes first, then position channels or a file.

The simulator and areaDetector with position attributes send
``PositionX``/``PositionY`` (metres, relative to the object centre) with
every frame. For frames without them the configuration gives one of:

* **position channels** (:mod:`~ptychoflow.edge.input.channels`): two motor
  readbacks or a position stream, matched to each frame by time or uniqueId
  (:mod:`~ptychoflow.edge.input.matching` has the rules). Frames may come
  before their positions: the collector calls :meth:`PositionSource.settle`
  once per batch, which waits at most ``--position-wait-ms`` after the
  batch's last frame arrived;
* a **positions file**: row ``uniqueId - 1`` (areaDetector counts frames
  from 1) holds x and y in metres. Accepted: ``.npy`` (N, 2),
  ``.csv``/``.txt`` (two columns x y) or a scan ``.h5``
  (``/entry/instrument/positions/{x,y}``).

A frame with no position is published all the same, counted in
``Edge:Unplaced_RBV`` and left off the map: never placed where it was not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ptychoflow.edge.input.channels import PositionChannels
from ptychoflow.edge.input.matching import LivePositions
from ptychoflow.edge.settings import EdgeSettings
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


def has_attributes(frame: Frame) -> bool:
    """The frame carries its own position."""
    return ATTR_X in frame.attributes and ATTR_Y in frame.attributes


class PositionSource:
    """Looks a frame's position up; returns a message instead when there is none.

    ``live``: positions from channels (``channels`` feeds it and is closed with
    this source); ``wait_s``: how long after a batch's last frame arrived the
    collector may wait for them.
    """

    def __init__(self, path: str = "", live: LivePositions | None = None,
                 channels: PositionChannels | None = None, wait_s: float = 0.0) -> None:
        self.table = load_positions(path) if path else None
        self.live = live
        self.channels = channels
        self.wait_s = wait_s

    @classmethod
    def from_settings(cls, settings: EdgeSettings, conf: Mapping[str, str] | None = None,
                      message: Callable[[str], None] = lambda s: None) -> PositionSource:
        """The source the settings describe; channels are subscribed at once, so their
        history fills before the first frame.
        """
        if not settings.position_stream_pv and not settings.position_x_pv:
            return cls(settings.positions)
        motors = not settings.position_stream_pv
        live = LivePositions(settings.position_tolerance_ms / 1e3, settings.position_history,
                             interpolate=motors,
                             hold_s=settings.position_hold_ms / 1e3 if motors else 0.0)
        channels = PositionChannels(live, message, conf)
        try:
            if settings.position_stream_pv:
                channels.stream(settings.position_stream_pv, settings.position_x_column,
                                settings.position_y_column)
            else:
                channels.motors(settings.position_x_pv, settings.position_y_pv)
        except BaseException:
            channels.close()
            raise
        return cls(live=live, channels=channels, wait_s=settings.position_wait_ms / 1e3)

    def settle(self, frames: Sequence[Frame], arrived: float) -> None:
        """Before a batch's lookups: wait until the channels' positions cover its frames,
        at most until ``arrived`` (time.monotonic() of its last frame) + the wait.
        """
        if self.live is not None:
            self.live.wait([f for f in frames if not has_attributes(f)], arrived + self.wait_s)

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
        if self.live is not None:
            got = self.live.position(frame)
            if isinstance(got, str):
                return f"frame {frame.unique_id} (time {frame.timestamp:.6f}): {got}"
            return got
        if self.table is None:
            return (f"frame {frame.unique_id} has no PositionX/PositionY attributes and no "
                    "positions file or position channels are configured (set --positions, "
                    "--position-x-pv/--position-y-pv or --position-stream-pv, or --no-stitch)")
        row = frame.unique_id - 1
        if not 0 <= row < len(self.table):
            return (f"frame {frame.unique_id} is beyond the {len(self.table)} rows of the "
                    "positions file")
        return float(self.table[row, 0]), float(self.table[row, 1])

    def close(self) -> None:
        """Stop following the position channels."""
        if self.channels is not None:
            self.channels.close()
            self.channels = None
