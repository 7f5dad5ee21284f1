"""Frames lost before one input: gaps in ``uniqueId``, which detectors count up by one.

A detector numbers its frames 1, 2, 3 ...; a jump means frames were lost
upstream of the edge (the source's queue for the edge overflowed, say). With
several lanes the ids interleave, so no lane counts gaps: the edge process's
ledger does (:mod:`ptychoflow.edge.lanes.ledger`).

A frame that did not decode and whose uniqueId could not be read was still a
frame: it holds one of the ids of the next gap, which is not counted again.
"""

from __future__ import annotations

# A jump in uniqueId larger than this is a new numbering (a detector restarted with another
# base, a garbled id), not frames lost: at 20,000 frames/s it is over three seconds of
# frames. Counting it would put billions into Missed_RBV for one odd frame.
MAX_GAP = 1 << 16


class GapCounter:
    """Frames lost before one input: gaps in ``uniqueId``, which detectors count up by one."""

    def __init__(self, counting: bool = True) -> None:
        self.missed = 0
        self.counting = counting  # off in a lane, whose ids skip the other lanes' frames
        self.last: int | None = None
        self.last_ts: float | None = None
        self._unknown = 0  # frames since ``last`` whose id could not be read
        self.jumps: list[tuple[int, int]] = []  # (from, to) of each new numbering, to say

    def reset(self) -> None:
        """A new source: its ids start afresh."""
        self.last, self.last_ts, self._unknown = None, None, 0

    def seen(self, uid: int, ts: float) -> None:
        """Take frame ``uid`` as the last one, without counting anything."""
        self.last, self.last_ts = uid, ts

    def frame(self, uid: int, ts: float | None = None) -> bool:
        """Count frame ``uid`` in (0 or less: one whose id could not be read, ``ts`` None:
        one that did not decode). False, counting nothing, for the frame just counted
        sent again: a reconnect re-sends the source's current value.
        """
        if uid <= 0:
            self._unknown += 1  # it fills one id of the gap before the next frame
            return True
        last = self.last
        if last is not None:
            if uid == last and ts is not None and ts == self.last_ts:
                return False
            if self.counting and uid > last + 1:
                gap = uid - last - 1 - self._unknown
                if gap > MAX_GAP:
                    self.jumps.append((last, uid))
                else:
                    self.missed += max(0, gap)
        self.last, self.last_ts, self._unknown = uid, ts, 0
        return True
