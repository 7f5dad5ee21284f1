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

:class:`StitchProcess` has the :class:`~ptychoflow.edge.stitch.Stitcher`
methods the publisher uses. Patches are copied into shared-memory slots and
only their positions go through the pipe; a few slots let the publisher run
ahead, and when all are taken it waits for one (so no patch is skipped, and
a slow map slows the edge down rather than growing memory). Errors the map
raises (a position off the allowed map) come back with the freed slot and are
handed out by :meth:`errors`. :meth:`image` waits for every patch sent so
far, so the map published is as complete as the in-process one.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ptychoflow.edge.stitch import Stitcher, StitchError

SLOTS = 4
SLOT_BYTES = 4 << 20  # patches per slot: as many as fit in 4 MiB (64 of 128x128)


class StitchProcessError(RuntimeError):
    """The stitching process has gone (crashed or killed); stitch in-process from now on."""


def _serve(conn: Connection, pixel: float, max_size: int) -> None:
    """The child: apply the parent's messages to a Stitcher until told to close."""
    from ptychoflow.edge.scheduling import name_os_thread

    name_os_thread("edge-stitch")
    st = Stitcher(pixel, max_size)
    shms: list[SharedMemory] = []
    views: list[np.ndarray] = []
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the edge went away
            break
        kind = msg[0]
        if kind == "add":
            _, slot, positions = msg
            bad = []
            for k, (x, y) in enumerate(positions):
                try:
                    st.add(views[slot][k], x, y)
                except StitchError as exc:
                    bad.append(str(exc))
            conn.send(("free", slot, bad))
        elif kind == "slots":
            views = []  # no view may outlive the mapping it reads
            for shm in shms:
                shm.close()
            _, names, shape = msg
            # the edge creates and unlinks them; this side only maps them (a spawned
            # child shares its parent's resource tracker, which cleans up after a crash)
            shms = [SharedMemory(name=n) for n in names]
            views = [np.ndarray(shape, np.float32, buffer=s.buf) for s in shms]
        elif kind == "reset":
            st.reset()
        elif kind == "pixel":
            st = Stitcher(msg[1], max_size)
        elif kind == "image":
            conn.send(("image", st.image(), st.origin_m, st.count))
        elif kind == "close":
            break
    views.clear()
    for shm in shms:
        shm.close()


class StitchProcess:
    """A Stitcher in a child process; use from one thread (the publisher)."""

    def __init__(self, pixel_size_m: float, max_size: int = 8192) -> None:
        Stitcher(pixel_size_m, max_size)  # the same argument checks, here, at once
        self.pixel = float(pixel_size_m)
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.pixel, int(max_size)),
                                 name="edge-stitch", daemon=True)
        self._proc.start()
        child.close()
        self._shms: list[SharedMemory] = []
        self._views: list[np.ndarray] = []
        self._free: list[int] = []
        self._slot: int | None = None  # the slot being filled
        self._fill: list[tuple[float, float]] = []
        self._errors: list[str] = []
        self._origin = (0.0, 0.0)
        self.count = 0  # patches sent since the last reset

    # ---- the parent's side of the protocol -----------------------------------------------
    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            self._conn.send(msg)
        except (OSError, ValueError) as exc:
            raise StitchProcessError(f"the stitching process has gone ({exc})") from exc

    def _receive(self) -> tuple[Any, ...]:
        """The next message from the child, handling freed slots on the way."""
        try:
            msg = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise StitchProcessError(f"the stitching process has gone ({exc!r})") from exc
        if msg[0] == "free":
            self._free.append(msg[1])
            self._errors.extend(msg[2])
        return msg

    def _slots_for(self, shape: tuple[int, int]) -> None:
        """(Re)make the shared slots for patches of ``shape`` once every slot is back."""
        while len(self._free) < len(self._shms):
            self._receive()
        self._close_slots()
        cap = max(1, SLOT_BYTES // (4 * shape[0] * shape[1]))
        nbytes = 4 * cap * shape[0] * shape[1]
        self._shms = [SharedMemory(create=True, size=nbytes) for _ in range(SLOTS)]
        self._views = [np.ndarray((cap, *shape), np.float32, buffer=s.buf) for s in self._shms]
        self._free = list(range(SLOTS))
        self._send(("slots", [s.name for s in self._shms], (cap, *shape)))

    def _close_slots(self) -> None:
        self._views = []
        for shm in self._shms:
            shm.close()
            shm.unlink()
        self._shms = []

    # ---- the Stitcher interface ----------------------------------------------------------
    def add(self, patch: np.ndarray, x_m: float, y_m: float) -> None:
        """Queue ``patch`` at (x, y) metres; errors of the map come back through :meth:`errors`."""
        if not (math.isfinite(x_m) and math.isfinite(y_m)):
            raise StitchError(f"position ({x_m}, {y_m}) is not finite")
        if patch.ndim != 2:
            raise StitchError(f"a patch is a 2-D image, got shape {patch.shape}")
        if not self._views or self._views[0].shape[1:] != patch.shape:
            self.flush()
            self._slots_for(patch.shape)
        if self._slot is None:
            while not self._free:
                self._receive()
            self._slot = self._free.pop()
        self._views[self._slot][len(self._fill)] = patch
        self._fill.append((float(x_m), float(y_m)))
        self.count += 1
        if len(self._fill) == self._views[0].shape[0]:
            self.flush()

    def flush(self) -> None:
        """Hand the patches queued so far to the child."""
        if self._slot is not None and self._fill:
            self._send(("add", self._slot, self._fill))
            self._slot, self._fill = None, []

    def errors(self) -> list[str]:
        """Why patches the child could not place were refused (since the last call)."""
        while self._conn.poll():
            self._receive()
        out, self._errors = self._errors, []
        return out

    def reset(self) -> None:
        """Start a new map (after the patches already queued)."""
        self.flush()
        self._send(("reset",))
        self.count = 0

    def repixel(self, pixel_size_m: float) -> None:
        """Start a new map with another pixel size (a model with another card)."""
        Stitcher(pixel_size_m, 1)  # the same check, here, at once
        self.flush()
        self._send(("pixel", float(pixel_size_m)))
        self.pixel = float(pixel_size_m)
        self.count = 0

    def image(self) -> np.ndarray:
        """The averaged map with every patch queued so far; sets :attr:`origin_m`."""
        self.flush()
        self._send(("image",))
        while True:
            msg = self._receive()
            if msg[0] == "image":
                _, img, self._origin, self.count = msg
                return img

    @property
    def origin_m(self) -> tuple[float, float]:
        """(y, x) metres of map pixel (0, 0), as of the last :meth:`image`."""
        return self._origin

    def close(self) -> None:
        """Stop the child and free the shared memory."""
        try:
            self.flush()
            self._send(("close",))
        except StitchProcessError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._close_slots()
