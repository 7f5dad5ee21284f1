"""A channel between two processes of the edge: typed messages on a pipe, images in slots.

The lanes hand their batches' outputs to the edge process, and the edge process
hands patches to the stitching process, the same way: the images go into a few
shared-memory *slots* that the receiver reads in place, and only small frozen
dataclasses (which slot, which frames, which positions) go through the pipe.
A slot comes back to the writer with a message once it has been read, so a
slow reader slows the writer down rather than growing memory.

The edge process creates every slot (and unlinks it, also for a lane that
died); the other side only maps them by name.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np


class ChannelClosed(ConnectionError):
    """The other end has gone."""


class Pipe:
    """One end of a pipe; :meth:`send` may be called from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, msg: object) -> None:
        """Send one message; ChannelClosed when the other end has gone."""
        try:
            with self._lock:
                self.conn.send(msg)
        except (OSError, ValueError) as exc:  # BrokenPipeError, a closed handle
            raise ChannelClosed(f"{exc}") from exc

    def recv(self) -> Any:
        """The next message; ChannelClosed when the other end has gone."""
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise ChannelClosed(f"{exc!r}") from exc

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message is waiting (within ``timeout``); False once closed."""
        try:
            return self.conn.poll(timeout)
        except (EOFError, OSError):
            return False

    def close(self) -> None:
        """Close this end."""
        self.conn.close()


class Slots:
    """Shared-memory slots of float32 images: created here, or mapped by name."""

    def __init__(self, shms: list[SharedMemory], owner: bool) -> None:
        self._shms = shms
        self._owner = owner
        self._views: dict[tuple[int, tuple[tuple[int, ...], ...]], list[np.ndarray]] = {}

    @classmethod
    def create(cls, count: int, nbytes: int) -> Slots:
        """``count`` new slots of ``nbytes`` each (this side unlinks them at close)."""
        shms: list[SharedMemory] = []
        try:
            for _ in range(count):
                shms.append(SharedMemory(create=True, size=nbytes))
        except BaseException:
            cls(shms, True).close()
            raise
        return cls(shms, True)

    @classmethod
    def attach(cls, names: Sequence[str]) -> Slots:
        """Map the slots another process created."""
        return cls([SharedMemory(name=n) for n in names], False)

    @property
    def names(self) -> list[str]:
        """The slots' names, for the other side's :meth:`attach`."""
        return [s.name for s in self._shms]

    @property
    def nbytes(self) -> int:
        """The size of one slot."""
        return self._shms[0].size if self._shms else 0

    def __len__(self) -> int:
        return len(self._shms)

    def fits(self, *shapes: tuple[int, ...]) -> bool:
        """Whether float32 arrays of these shapes fit in one slot together."""
        return 4 * sum(int(np.prod(s)) for s in shapes) <= self.nbytes

    def arrays(self, slot: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
        """Float32 arrays of ``shapes`` laid out back to back in ``slot`` (views, cached)."""
        key = (slot, tuple(tuple(s) for s in shapes))
        views = self._views.get(key)
        if views is None:
            views, offset = [], 0
            for shape in key[1]:
                a = np.ndarray(shape, np.float32, self._shms[slot].buf, offset=offset)
                views.append(a)
                offset += a.nbytes
            self._views[key] = views
        return views

    def forget_views(self) -> None:
        """Drop the cached views (before closing: no view may outlive its mapping)."""
        self._views.clear()

    def close(self) -> None:
        """Unmap (and, where created here, unlink) every slot."""
        self.forget_views()
        for shm in self._shms:
            try:
                shm.close()
            except BufferError:  # a view outlived its reader: the mapping goes at exit
                pass
            if self._owner:
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass
        self._shms = []
