"""The bounded frame queue between the PVA client and inference.

The monitor callback must return at once (p4p runs it on a small shared
pool), so it only appends here. The queue holds at most ``maxsize`` frames:
when the edge cannot keep up it drops the *oldest* frames and counts them, so
memory stays bounded and the newest data, what the operator is looking at,
always gets through. The consumer takes micro-batches: up to ``max_n``
frames, waiting at most the latency budget after the first one arrives.

A :class:`QueueObserver` hears of every frame dropped and every take, in the
stream's order (both under the queue's lock): the lanes account for every
frame that way (:mod:`ptychoflow.edge.lanes.child`); one input needs none.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class QueueObserver(Protocol[T_contra]):
    """Told of each frame dropped and each take, in order, under the queue's lock (be quick)."""

    def dropped(self, item: T_contra) -> None:
        """``item`` was dropped to make room (it is older than any frame still queued)."""
        ...

    def taken(self, items: Sequence[T_contra]) -> None:
        """``items`` were taken for a batch (possibly none)."""
        ...


class FrameQueue(Generic[T]):
    """Thread-safe bounded FIFO with drop-oldest and batch take."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.observer: QueueObserver[T] | None = None
        self._closed = False
        # frames the waiting consumer needs before it is worth waking: 1 while it waits
        # for a first frame, the batch size while it gathers one (it wakes by itself at
        # the end of the latency budget); one wake per batch rather than per frame
        self._want = 1

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Append; when full, drop (and count) the oldest frame."""
        with self._cond:
            if len(self._items) >= self.maxsize:
                dropped = self._items.popleft()
                self.dropped += 1
                if self.observer is not None:
                    self.observer.dropped(dropped)
            self._items.append(item)
            if len(self._items) >= self._want:
                self._cond.notify()

    def close(self) -> None:
        """Wake every waiting consumer; later takes return what is left, then nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self, max_n: int, budget_s: float, timeout: float | None = None) -> list[T]:
        """Up to ``max_n`` frames: waits ``timeout`` for the first, then ``budget_s`` for more.

        Returns an empty list on timeout or when closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return self._taken([])
            if len(self._items) < max_n and budget_s > 0 and not self._closed:
                deadline = time.monotonic() + budget_s
                self._want = max_n
                try:
                    while len(self._items) < max_n and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                finally:
                    self._want = 1
            n = min(max_n, len(self._items))
            return self._taken([self._items.popleft() for _ in range(n)])

    def _taken(self, items: list[T]) -> list[T]:
        if self.observer is not None:
            self.observer.taken(items)
        return items
