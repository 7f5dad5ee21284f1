"""The bounded frame queue between the PVA client and inference.

The monitor callback must return at once (p4p runs it on a small shared
pool), so it only appends here. The queue holds at most ``maxsize`` frames:
when the edge cannot keep up it drops the *oldest* frames and counts them, so
memory stays bounded and the newest data, what the operator is looking at,
always gets through. The consumer takes micro-batches: up to ``max_n``
frames, waiting at most the latency budget after the first one arrives.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """Thread-safe bounded FIFO with drop-oldest and batch take."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.on_drop: Callable[[T], None] | None = None
        # with keep_dropped, the frames dropped since the last take, handed over by it
        # (taken_dropped), so a consumer learns of them in the stream's order
        self.keep_dropped = False
        self._dropped_items: list[T] = []
        self.taken_dropped: list[T] = []
        self._closed = False
        # frames the waiting consumer needs before it is worth waking: 1 while it waits
        # for a first frame, the batch size while it gathers one (it wakes by itself at
        # the end of the latency budget); one wake per batch rather than per frame
        self._want = 1

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Append; when full, drop (and count) the oldest frame."""
        dropped: T | None = None
        with self._cond:
            if len(self._items) >= self.maxsize:
                dropped = self._items.popleft()
                self.dropped += 1
                if self.keep_dropped:
                    self._dropped_items.append(dropped)
            self._items.append(item)
            if len(self._items) >= self._want:
                self._cond.notify()
        if dropped is not None and self.on_drop is not None:
            self.on_drop(dropped)

    def close(self) -> None:
        """Wake every waiting consumer; later takes return what is left, then nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self, max_n: int, budget_s: float, timeout: float | None = None) -> list[T]:
        """Up to ``max_n`` frames: waits ``timeout`` for the first, then ``budget_s`` for more.

        Returns an empty list on timeout or when closed and empty. The frames
        dropped before it are in ``taken_dropped`` afterwards (with ``keep_dropped``):
        all older than the frames returned, all newer than those taken before.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                self.taken_dropped, self._dropped_items = self._dropped_items, []
                return []
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
            self.taken_dropped, self._dropped_items = self._dropped_items, []
            return [self._items.popleft() for _ in range(n)]
