"""The edge process's end of one lane: its process, pipe, slots, counters and restarts.

A lane that dies is restarted on the same input and model at once, unless it
died soon after its last restart: then after a wait that doubles each time
(:func:`restart_delay`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ptychoflow.edge.channel import ChannelClosed, Pipe, Slots
from ptychoflow.edge.lanes.protocol import Free
from ptychoflow.edge.messages import ModelNote, Position
from ptychoflow.ntnda import Frame

RESTART_AFTER_S = 10.0
"""A lane that dies is restarted at once unless it had run for less than this."""

RESTART_MAX_S = 300.0
"""The longest wait before restarting a lane that keeps dying (see :func:`restart_delay`)."""


def restart_delay(quick: int) -> float:
    """Seconds to wait before restarting a lane that died ``quick`` times running within
    RESTART_AFTER_S of its restart: none the first time, then 10, 20, 40 ... up to 300 s.

    A lane that keeps dying has something about its input or model that kills it;
    restarting it in a tight loop would spend the CPU the other lanes need and bury
    the cause in messages, while giving up would leave its frames unprocessed until
    someone restarts the edge even once the cause has gone (a GPU freed, a source fixed).
    """
    if quick <= 0:
        return 0.0
    return min(RESTART_MAX_S, RESTART_AFTER_S * 2.0 ** (quick - 1))


NO_IMAGE = np.zeros((0, 0), np.uint8)
"""The array of a frame the edge process only knows by id: its lane holds the image."""


class LaneBatch:
    """A lane's batch as the publisher takes it: outputs read in place from the slot."""

    __slots__ = ("frames", "arrivals", "positions", "lane", "_phase", "_amp", "_release")

    def __init__(self, lane: int, frames: list[Frame], arrivals: list[float],
                 positions: list[Position], phase: np.ndarray, amp: np.ndarray | None,
                 release: Callable[[], None]) -> None:
        self.lane = lane
        self.frames = frames
        self.arrivals = arrivals
        self.positions = positions
        self._phase, self._amp, self._release = phase, amp, release

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(phase, amplitude or None), each (n, H, W)."""
        return self._phase, self._amp

    def release(self) -> None:
        """Give the slot back to the lane."""
        self._phase = self._amp = None  # type: ignore[assignment]
        self._release()


def gpus_for_lanes(n: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each lane: the GPUs of this box in turn ("" for none)."""
    from ptychoflow.edge.infer.runners import gpu_count

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible is not None
           else [str(i) for i in range(gpu_count())])
    if len(ids) < 2:
        return [""] * n
    return [ids[i % len(ids)] for i in range(n)]


class LaneHandle:
    """The edge process's end of one lane: what it runs on, and what it has said."""

    def __init__(self, index: int, pv: str, proc: Any, pipe: Pipe, slots: Slots) -> None:
        self.index, self.pv, self.proc, self.pipe, self.slots = index, pv, proc, pipe, slots
        self.counts = {"bad": 0, "dropped": 0, "received": 0, "unplaced": 0}
        self.model: ModelNote | None = None
        self.base = dict.fromkeys(self.counts, 0)  # counts of its earlier processes
        self.restarted = -RESTART_AFTER_S  # time.monotonic() of the last restart
        self.quick = 0  # deaths running within RESTART_AFTER_S of a restart
        self.last: tuple[int, float] | None = None  # uniqueId and time stamp last published
        self.accounted = 0  # frames this lane's process has accounted for (ledger)
        self.closed = threading.Event()
        self.reader: threading.Thread | None = None

    def send(self, msg: object) -> None:
        """To the lane; nothing when it has gone (its reader says so)."""
        try:
            self.pipe.send(msg)
        except ChannelClosed:
            pass

    def replace(self, new: LaneHandle) -> None:
        """Take over the process, pipe and slots of ``new`` (a restart)."""
        self.proc, self.pipe, self.slots = new.proc, new.pipe, new.slots

    def freer(self, slot: int) -> Callable[[], None]:
        """What gives ``slot`` back, to this process of the lane only."""
        pipe = self.pipe

        def free() -> None:
            if self.pipe is pipe:  # not to a lane started since: the slot was the dead one's
                self.send(Free(slot))
        return free


def nothing() -> None:
    """The release of a batch that came inline: nothing to give back."""
