"""The stitched map in a process of its own (``--stitch-process``).

Stitching is the largest piece of Python work per frame in the edge (about
30 us a patch hot in cache, 50-70 us in a running edge), and everything
Python in one process takes turns on one interpreter lock. At thousands of
frames a second that turn is what limits the stream: with a do-nothing model
on 2 cores shared with source and client (``benchmarks/edge_io_ceiling.py``,
a 7 kHz source), the edge delivered 5,800 frames/s stitching itself and 6,560
with this process, none lost either way. At a few hundred frames/s, where the
engine holds the cores, the extra copy and process cost about 2 % (int8
engine on 2 cores: 0.86-0.88 of the engine against 0.88-0.90), so it is off
by default.

:class:`StitchProcess` is a :class:`~ptychoflow.edge.messages.MapSink`, as the
in-process :class:`~ptychoflow.stitch.Stitcher` is. Patches are copied into
shared-memory slots and only their positions go through the pipe
(:mod:`ptychoflow.edge.channel`); a few slots let the publisher run ahead, and
when all are taken it waits for one (so no patch is skipped, and a slow map
slows the edge down rather than growing memory). Errors the map raises (a
position off the allowed map) come back with the freed slot and are handed out
by :meth:`errors`. :meth:`image` waits for every patch sent so far, so the map
published is as complete as the in-process one.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from ptychoflow.edge.channel import ChannelClosed, Pipe, Slots
from ptychoflow.stitch import Stitcher, StitchError

SLOTS = 4
SLOT_BYTES = 4 << 20  # patches per slot: as many as fit in 4 MiB (64 of 128x128)


class StitchProcessError(RuntimeError):
    """The stitching process has gone (crashed or killed); stitch in-process from now on."""


# ---- the messages: to the child ------------------------------------------------------------
@dataclass(frozen=True)
class NewSlots:
    """Map these slots, each holding ``shape`` (patches, rows, cols) float32 patches."""

    names: list[str]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Place:
    """Place the first ``len(positions)`` patches of ``slot`` at these (x, y) metres."""

    slot: int
    positions: list[tuple[float, float]]


@dataclass(frozen=True)
class Reset:
    """Start a new map."""


@dataclass(frozen=True)
class Repixel:
    """Start a new map with another pixel size."""

    pixel: float


@dataclass(frozen=True)
class SendImage:
    """Send the map (after every patch before this message)."""


@dataclass(frozen=True)
class Finish:
    """Stop."""


# ---- and back --------------------------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    """``slot`` may be filled again; why any of its patches was refused."""

    slot: int
    refused: list[str]


@dataclass(frozen=True)
class MapImage:
    """The map, its origin (y, x) in metres and its patch count."""

    image: np.ndarray
    origin_m: tuple[float, float]
    count: int


def _serve(conn: object, pixel: float, max_size: int) -> None:
    """The child: apply the parent's messages to a Stitcher until told to finish."""
    from ptychoflow.edge.threads import name_os_thread

    name_os_thread("edge-stitch")
    pipe = Pipe(conn)  # type: ignore[arg-type]
    st = Stitcher(pixel, max_size)
    slots: Slots | None = None
    shape: tuple[int, int, int] = (0, 0, 0)
    while True:
        try:
            msg = pipe.recv()
        except ChannelClosed:  # the edge went away
            break
        match msg:
            case Place(slot, positions):
                assert slots is not None
                (patches,) = slots.arrays(slot, shape)
                refused = []
                for k, (x, y) in enumerate(positions):
                    try:
                        st.add(patches[k], x, y)
                    except StitchError as exc:
                        refused.append(str(exc))
                pipe.send(Placed(slot, refused))
            case NewSlots(names, new_shape):
                if slots is not None:
                    slots.close()
                # the edge creates and unlinks them; this side only maps them (a spawned
                # child shares its parent's resource tracker, which cleans up after a crash)
                slots, shape = Slots.attach(names), new_shape
            case Reset():
                st.reset()
            case Repixel(new_pixel):
                st = Stitcher(new_pixel, max_size)
            case SendImage():
                pipe.send(MapImage(st.image(), st.origin_m, st.count))
            case Finish():
                break
    if slots is not None:
        slots.close()


class StitchProcess:
    """A Stitcher in a child process; use from one thread (the publisher)."""

    def __init__(self, pixel_size_m: float, max_size: int = 8192) -> None:
        Stitcher(pixel_size_m, max_size)  # the same argument checks, here, at once
        self.pixel = float(pixel_size_m)
        ctx = mp.get_context("spawn")
        mine, child = ctx.Pipe()
        self._pipe = Pipe(mine)
        self._proc = ctx.Process(target=_serve, args=(child, self.pixel, int(max_size)),
                                 name="edge-stitch", daemon=True)
        self._proc.start()
        child.close()
        self._slots: Slots | None = None
        self._shape: tuple[int, int, int] = (0, 0, 0)
        self._free: list[int] = []
        self._slot: int | None = None  # the slot being filled
        self._fill: list[tuple[float, float]] = []
        self._errors: list[str] = []
        self._origin = (0.0, 0.0)
        self.count = 0  # patches sent since the last reset

    # ---- the parent's side of the protocol -----------------------------------------------
    def _send(self, msg: object) -> None:
        try:
            self._pipe.send(msg)
        except ChannelClosed as exc:
            raise StitchProcessError(f"the stitching process has gone ({exc})") from exc

    def _receive(self) -> Placed | MapImage:
        """The next message from the child, handling freed slots on the way."""
        try:
            msg = self._pipe.recv()
        except ChannelClosed as exc:
            raise StitchProcessError(f"the stitching process has gone ({exc})") from exc
        if isinstance(msg, Placed):
            self._free.append(msg.slot)
            self._errors.extend(msg.refused)
        return msg  # type: ignore[no-any-return]

    def _slots_for(self, shape: tuple[int, int]) -> None:
        """(Re)make the shared slots for patches of ``shape`` once every slot is back."""
        while self._slots is not None and len(self._free) < len(self._slots):
            self._receive()
        self._close_slots()
        cap = max(1, SLOT_BYTES // (4 * shape[0] * shape[1]))
        self._slots = Slots.create(SLOTS, 4 * cap * shape[0] * shape[1])
        self._shape = (cap, *shape)
        self._free = list(range(SLOTS))
        self._send(NewSlots(self._slots.names, self._shape))

    def _close_slots(self) -> None:
        if self._slots is not None:
            self._slots.close()
        self._slots = None

    # ---- the MapSink interface -------------------------------------------------------------
    def add(self, patch: np.ndarray, x_m: float, y_m: float) -> None:
        """Queue ``patch`` at (x, y) metres; errors of the map come back through :meth:`errors`."""
        if not (math.isfinite(x_m) and math.isfinite(y_m)):
            raise StitchError(f"position ({x_m}, {y_m}) is not finite")
        if patch.ndim != 2:
            raise StitchError(f"a patch is a 2-D image, got shape {patch.shape}")
        if self._slots is None or self._shape[1:] != patch.shape:
            self.flush()
            self._slots_for(patch.shape)
        assert self._slots is not None
        if self._slot is None:
            while not self._free:
                self._receive()
            self._slot = self._free.pop()
        (patches,) = self._slots.arrays(self._slot, self._shape)
        patches[len(self._fill)] = patch
        self._fill.append((float(x_m), float(y_m)))
        self.count += 1
        if len(self._fill) == self._shape[0]:
            self.flush()

    def flush(self) -> None:
        """Hand the patches queued so far to the child."""
        if self._slot is not None and self._fill:
            self._send(Place(self._slot, self._fill))
            self._slot, self._fill = None, []

    def errors(self) -> list[str]:
        """Why patches the child could not place were refused (since the last call)."""
        while self._pipe.poll():
            self._receive()
        out, self._errors = self._errors, []
        return out

    def reset(self) -> None:
        """Start a new map (after the patches already queued)."""
        self.flush()
        self._send(Reset())
        self.count = 0

    def repixel(self, pixel_size_m: float) -> None:
        """Start a new map with another pixel size (a model with another card)."""
        Stitcher(pixel_size_m, 1)  # the same check, here, at once
        self.flush()
        self._send(Repixel(float(pixel_size_m)))
        self.pixel = float(pixel_size_m)
        self.count = 0

    def image(self) -> np.ndarray:
        """The averaged map with every patch queued so far; sets :attr:`origin_m`."""
        self.flush()
        self._send(SendImage())
        while True:
            msg = self._receive()
            if isinstance(msg, MapImage):
                self._origin, self.count = msg.origin_m, msg.count
                return msg.image

    @property
    def origin_m(self) -> tuple[float, float]:
        """(y, x) metres of map pixel (0, 0), as of the last :meth:`image`."""
        return self._origin

    def close(self) -> None:
        """Stop the child and free the shared memory."""
        try:
            self.flush()
            self._send(Finish())
        except StitchProcessError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._pipe.close()
        self._close_slots()
