"""Matching frames to positions that arrive on channels of their own: the rules, free of EPICS.

Beamlines often publish scan positions apart from the frames: two motor
readbacks, or one stream of captured positions (a PandA, a position-capture
plugin). Each sample carries its own time, so a frame is placed by the
positions *at its time*, never by the latest value:

* **By time** (motors, or a stream with a ``timestamp`` column). All times
  are POSIX (Unix) seconds, as ``Frame.timestamp`` (the frame's
  ``dataTimeStamp``) and pvAccess's ``timeStamp`` are; Channel Access's EPICS
  epoch is converted where it is read. For each axis the samples just before
  and just after the frame's time are looked at, and only those within the
  tolerance count: motors are *interpolated* linearly between the two when
  both are within it (a readback sampled while the motor moves), else the one
  that is within it is taken; a stream's rows are the positions captured at
  each trigger, so the *nearest* row within the tolerance is taken, never a
  blend of two triggers. Nothing is ever extrapolated: with no sample within
  the tolerance the frame has no position. One opt-in exception, for motors:
  a motor at rest posts nothing, so with a *hold* (``--position-hold-ms``) the
  last sample before the frame stands for it when it is at most that old and
  no later one is within the tolerance (the stepping axis of a raster fly
  scan); off by default, as a readback that updates slowly while the motor
  moves would then place frames where the motor was, not where it is.
* **By uniqueId** (a stream with a ``uniqueId`` column): exactly the row with
  the frame's id. A uniqueId going backwards starts a new scan, in the stream
  and in the frames alike; a frame is matched only with rows of its own scan,
  whichever of the two restarted first, so the first frames of a scan are
  never placed at the previous scan's positions.

Frames may come before their positions. :meth:`LivePositions.wait` waits,
up to a deadline the collector sets once per batch, until the positions cover
the batch's last frame: every axis has a sample at or after its time (later
samples are farther from it, so the match cannot change), or the stream has
its row (or a later one). A frame still not covered at the deadline is
matched with what there is, usually not at all, and left off the map.

Each axis keeps a bounded history (the newest ``history`` samples or rows),
so memory stays bounded whatever the channel's rate; a frame older than the
history has no position. A sample whose time goes backwards starts the
history afresh (a source whose clock was set back), as a later frame would
otherwise be matched among samples of two clocks.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence

from ptychoflow.ntnda import Frame

XY = tuple[float, float]


class AxisHistory:
    """One axis's samples (time, value) in time order; the newest ``size`` are kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._t: list[float] = []
        self._v: list[float] = []
        self._start = 0  # samples before it are gone; dropped in chunks, so appends stay O(1)
        self._trimmed = False  # samples have been dropped: an older frame is out of reach

    def __len__(self) -> int:
        return len(self._t) - self._start

    @property
    def latest(self) -> float | None:
        """Time of the newest sample."""
        return self._t[-1] if len(self) else None

    def add(self, t: float, v: float) -> None:
        """Append a sample (a later one at the same time replaces it)."""
        last = self.latest
        if last is not None and t <= last:
            if t == last:
                self._v[-1] = v
                return
            self.clear()  # the clock went back: samples of two clocks do not mix
        self._t.append(t)
        self._v.append(v)
        if len(self) > self.size:
            self._start += 1
            self._trimmed = True
            if self._start >= self.size:  # compact: the lists stay under twice the size
                del self._t[:self._start], self._v[:self._start]
                self._start = 0

    def clear(self) -> None:
        """Forget every sample."""
        self._t, self._v, self._start, self._trimmed = [], [], 0, False

    def covers(self, t: float) -> bool:
        """A sample at or after ``t`` is in: none that comes later can match ``t`` better."""
        last = self.latest
        return last is not None and last >= t

    def at(self, t: float, tolerance: float, interpolate: bool, hold: float = 0.0
           ) -> float | str:
        """The value at time ``t`` from the samples within ``tolerance`` of it, or why none;
        ``hold``: else the last sample before ``t`` if it is at most that old.
        """
        if not len(self):
            return "no sample yet"
        i = bisect.bisect_right(self._t, t, lo=self._start)
        before = i - 1 if i > self._start else None
        after = i if i < len(self._t) else None
        near_b = before is not None and t - self._t[before] <= tolerance
        near_a = after is not None and self._t[after] - t <= tolerance
        if near_b and near_a and interpolate:
            assert before is not None and after is not None
            tb, ta = self._t[before], self._t[after]
            vb, va = self._v[before], self._v[after]
            return vb + (va - vb) * (t - tb) / (ta - tb)
        if near_b or near_a:
            if near_b and near_a:
                assert before is not None and after is not None
                return (self._v[before] if t - self._t[before] <= self._t[after] - t
                        else self._v[after])
            j = before if near_b else after
            assert j is not None
            return self._v[j]
        if before is not None and t - self._t[before] <= hold:
            return self._v[before]  # nothing posted since: a motor at rest
        gaps = []
        if before is not None:
            gaps.append(f"{(t - self._t[before]) * 1e3:.1f} ms before")
        if after is not None:
            gaps.append(f"{(self._t[after] - t) * 1e3:.1f} ms after")
        if before is None and self._trimmed:
            gaps.append("older than the history kept")
        return "nearest samples " + ", ".join(gaps)


def _next_scan(gen: int, last: int | None, uid: int, other: int) -> int:
    """The scan number after id ``uid``: a uniqueId going backwards starts a new scan, which
    catches up with the other side's scan if that one restarted first.
    """
    if last is None or uid >= last:
        return gen
    return other if gen < other else gen + 1


class IdTable:
    """A stream's rows by uniqueId, scan by scan (see the module doc); not thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: dict[int, XY] = {}
        self.previous: dict[int, XY] = {}  # the scan before: for its last frames still queued
        self.scan = 0  # of the stream
        self.last: int | None = None
        self.frame_scan = 0
        self.frame_last: int | None = None

    def add(self, uid: int, xy: XY) -> None:
        """One row of the stream."""
        scan = _next_scan(self.scan, self.last, uid, self.frame_scan)
        if scan != self.scan:
            self.previous = self.rows if scan == self.scan + 1 else {}
            self.rows, self.scan = {}, scan
        self.last = uid
        self.rows[uid] = xy
        while len(self.rows) > self.size:
            del self.rows[next(iter(self.rows))]

    def scan_of(self, uids: Sequence[int]) -> tuple[int, int | None]:
        """The scan of the last of ``uids`` (frames in order) and its id, noting nothing."""
        scan, last = self.frame_scan, self.frame_last
        for uid in uids:
            scan, last = _next_scan(scan, last, uid, self.scan), uid
        return scan, last

    def note(self, uid: int) -> int:
        """The next frame, in order: its scan number."""
        self.frame_scan, self.frame_last = self.scan_of([uid])
        return self.frame_scan

    def covers(self, uid: int, scan: int) -> bool:
        """The row of frame ``uid`` of ``scan`` is in, or can no longer come."""
        if scan != self.scan:
            return scan < self.scan
        return uid in self.rows or (self.last is not None and self.last >= uid)

    def at(self, uid: int, scan: int) -> XY | str:
        """The position of frame ``uid`` of ``scan``, or why there is none."""
        if scan == self.scan:
            table = self.rows
        elif scan == self.scan - 1:
            table = self.previous
        elif scan > self.scan:
            return "the position stream has not started this scan yet"
        else:
            return "the position stream has moved on by two scans"
        xy = table.get(uid)
        if xy is None:
            return "the position stream has no row with this uniqueId"
        return xy


class LivePositions:
    """Positions from channels, matched to frames by time or by uniqueId; thread-safe.

    ``interpolate``: motors (interpolated between samples around the frame's
    time); off for a stream (the nearest row). Samples come from the channels'
    callbacks (:meth:`add`, :meth:`add_rows`), lookups from the collector.
    """

    def __init__(self, tolerance_s: float, history: int, interpolate: bool,
                 hold_s: float = 0.0) -> None:
        self.tolerance = tolerance_s
        self.interpolate = interpolate
        self.hold = hold_s
        self.axes = (AxisHistory(history), AxisHistory(history))
        self.ids = IdTable(history)
        self.by_id = False  # the stream carries uniqueId: frames match by id from then on
        self._cond = threading.Condition()

    def add(self, axis: int, t: float, v: float) -> None:
        """A readback sample of axis 0 (x) or 1 (y) at POSIX time ``t``."""
        with self._cond:
            self.axes[axis].add(t, v)
            self._cond.notify_all()

    def add_rows(self, xs: Sequence[float], ys: Sequence[float],
                 times: Sequence[float] | None = None,
                 ids: Sequence[int] | None = None) -> None:
        """Rows of a stream: with their uniqueIds (exact match) or their POSIX times."""
        with self._cond:
            if ids is not None:
                self.by_id = True
                for uid, x, y in zip(ids, xs, ys, strict=True):
                    self.ids.add(int(uid), (float(x), float(y)))
            elif times is not None:
                for t, x, y in zip(times, xs, ys, strict=True):
                    self.axes[0].add(float(t), float(x))
                    self.axes[1].add(float(t), float(y))
            self._cond.notify_all()

    def _covered(self, frames: Sequence[Frame]) -> bool:
        if self.by_id:
            scan, last = self.ids.scan_of([f.unique_id for f in frames])
            return last is None or self.ids.covers(last, scan)
        t = max(f.timestamp for f in frames)
        return all(a.covers(t) for a in self.axes)

    def wait(self, frames: Sequence[Frame], deadline: float) -> bool:
        """Wait until the positions cover ``frames`` (in order) or ``deadline``
        (time.monotonic()); True when covered.
        """
        if not frames:
            return True
        with self._cond:
            while not self._covered(frames):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def position(self, frame: Frame) -> XY | str:
        """(x, y) of ``frame`` (frames in order), or why it has none."""
        with self._cond:
            if self.by_id:
                scan = self.ids.note(frame.unique_id)
                return self.ids.at(frame.unique_id, scan)
            if frame.timestamp <= 0:
                return "the frame carries no dataTimeStamp to match positions by time"
            out = []
            for name, axis in zip("xy", self.axes, strict=True):
                v = axis.at(frame.timestamp, self.tolerance, self.interpolate, self.hold)
                if isinstance(v, str):
                    return (f"no {name} position within {self.tolerance * 1e3:g} ms of the "
                            f"frame's time ({v})")
                out.append(v)
            return out[0], out[1]
