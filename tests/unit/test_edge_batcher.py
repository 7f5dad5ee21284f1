"""The frame queue: bounded, drops the oldest (counted), hands out micro-batches."""

from __future__ import annotations

import threading
import time

from ptychoflow.edge.input.framequeue import FrameQueue


def test_full_queue_drops_oldest_and_counts() -> None:
    q: FrameQueue[int] = FrameQueue(4)
    seen = _Order()
    q.observer = seen
    for i in range(10):
        q.put(i)
    dropped = seen.since()
    assert len(q) == 4 and q.dropped == 6 and dropped == [0, 1, 2, 3, 4, 5]
    assert q.get_batch(10, 0.0) == [6, 7, 8, 9]


def test_batch_is_capped_at_max_n() -> None:
    q: FrameQueue[int] = FrameQueue(100)
    for i in range(10):
        q.put(i)
    assert q.get_batch(4, 0.0) == [0, 1, 2, 3]
    assert q.get_batch(4, 0.0) == [4, 5, 6, 7]
    assert q.get_batch(4, 0.0) == [8, 9]


def test_waits_up_to_the_latency_budget_for_more_frames() -> None:
    q: FrameQueue[int] = FrameQueue(100)
    q.put(1)
    threading.Timer(0.05, q.put, args=(2,)).start()
    t0 = time.monotonic()
    assert q.get_batch(8, budget_s=1.0) == [1, 2] or q.get_batch(8, 0.0) == [2]
    assert time.monotonic() - t0 >= 0.9  # kept waiting for a full batch until the budget


def test_returns_early_when_batch_fills() -> None:
    q: FrameQueue[int] = FrameQueue(100)
    q.put(1)
    threading.Timer(0.05, lambda: [q.put(i) for i in range(2, 5)]).start()
    t0 = time.monotonic()
    assert q.get_batch(4, budget_s=5.0) == [1, 2, 3, 4]
    assert time.monotonic() - t0 < 4.0


def test_timeout_and_close() -> None:
    q: FrameQueue[int] = FrameQueue(2)
    assert q.get_batch(4, 0.0, timeout=0.05) == []
    threading.Timer(0.05, q.close).start()
    assert q.get_batch(4, 0.0, timeout=10.0) == []


def test_a_waiting_consumer_wakes_for_its_first_frame() -> None:
    # put() wakes the consumer only once it has what it waits for: here one frame
    q: FrameQueue[int] = FrameQueue(100)
    threading.Timer(0.05, q.put, args=(7,)).start()
    t0 = time.monotonic()
    assert q.get_batch(4, 0.0, timeout=10.0) == [7]
    assert time.monotonic() - t0 < 5.0


class _Order:
    """Records what the queue tells its observer, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[int]]] = []

    def dropped(self, item: int) -> None:
        self.events.append(("dropped", [item]))

    def taken(self, items: list[int]) -> None:
        self.events.append(("taken", items))

    def since(self) -> list[int]:
        """The frames dropped since the last call, oldest first."""
        out = [i for kind, items in self.events if kind == "dropped" for i in items]
        self.events = []
        return out


def test_the_observer_hears_of_dropped_frames_in_stream_order() -> None:
    q: FrameQueue[int] = FrameQueue(3)
    seen = _Order()
    q.observer = seen
    for i in range(1, 6):  # 1 and 2 dropped
        q.put(i)
    assert seen.events == [("dropped", [1]), ("dropped", [2])]
    assert q.get_batch(2, 0.0) == [3, 4]
    assert seen.since() == [1, 2]  # older than what was taken
    for i in (6, 7, 8):  # full again at 8: 5 dropped
        q.put(i)
    assert q.get_batch(1, 0.0, timeout=0.1) == [6]
    assert seen.since() == [5]
    assert q.get_batch(5, 0.0, timeout=0.1) == [7, 8]
    assert seen.since() == []
    assert q.dropped == 3
