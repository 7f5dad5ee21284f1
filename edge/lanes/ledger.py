"""Frames lost upstream of the edge: gaps in one input's ids, and ids no lane saw.

With one input the edge counts a gap in ``uniqueId`` as frames lost before it
(the source's queue for the edge overflowed, say):
:class:`~ptychoflow.edge.input.gaps.GapCounter`.
With several lanes the ids interleave across lanes in whatever way the
scatter chose, so no lane can tell a gap from a frame another lane got. The edge process can: every
frame a lane accounts for (handed over for publishing, skipped as bad,
dropped from its queue, or discarded while disabled or without a model)
is reported to the :class:`FrameLedger`, in the order the lane took them.

Each lane's ids increase within a scan, so once every lane has reported an
id at or above ``u``, any id up to ``u`` that no lane reported will never
come: it is counted as missed. At the end of a scan (a lane's ids go back,
or the scan id attribute changes) and when nothing is in flight anywhere,
everything up to the highest id seen is settled the same way; should one of
the ids then counted arrive after all (held upstream for over a second), it
is taken off the count again. Frames before
the first one seen of a scan are not counted (the edge may have started
mid-scan), as with one input.

A frame that did not decode and whose uniqueId could not be read was still
a frame the lane took (and counted bad); it holds one of the ids no lane
reported. The lane's next id bounds which: the first id counted missed
between that lane's neighbours of the frame is taken to be it, and not
counted again. ``GapCounter`` does the same for one input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ptychoflow.edge.input.gaps import MAX_GAP

_UNBOUNDED = 1 << 62
log = logging.getLogger(__name__)


@dataclass
class _Scan:
    seen: set[int] = field(default_factory=set)
    hi: dict[int, int] = field(default_factory=dict)  # per lane: the highest id reported
    settled: int | None = None  # every id up to here is accounted for or counted missed
    # frames whose id could not be read: [after id, before id, how many] (see the module doc)
    unknown: list[list[int]] = field(default_factory=list)
    # ids counted missed while a lane was not yet past them (settle_all): one may still come
    late: set[int] = field(default_factory=set)
    jumps: int = 0  # new numberings passed over (see gaps.MAX_GAP)

    def _take_unread(self, u: int) -> bool:
        """Whether missing id ``u`` is one a lane took without reading it (used up once)."""
        for span in self.unknown:
            if span[0] < u < span[1] and span[2] > 0:
                span[2] -= 1
                return True
        return False

    def settle(self, upto: int, early: bool = False) -> int:
        """Count the ids up to ``upto`` no lane reported; returns how many.

        ``early``: some lane is not past ``upto`` yet, so keep the ids in ``late``.
        """
        if self.settled is None:
            if not self.seen:
                return 0
            self.settled = min(self.seen) - 1
        missed = 0
        seen = self.seen
        if upto - self.settled > MAX_GAP:  # a new numbering, not lost frames (gaps.MAX_GAP):
            self.seen = {u for u in seen if u > upto}  # and never a walk over billions of ids
            log.warning("uniqueId jumped from %d to %d: taken as a new numbering, not "
                        "counted as missed", self.settled, upto)
            self.settled, self.jumps = upto, self.jumps + 1
            self.unknown = [sp for sp in self.unknown if sp[1] > upto + 1]
            return 0
        for u in range(self.settled + 1, upto + 1):
            if u in seen:
                seen.remove(u)
            elif not (self.unknown and self._take_unread(u)):
                missed += 1
                if early:
                    self.late.add(u)
        self.settled = max(self.settled, upto)
        if self.unknown:  # spans wholly settled can take no more ids
            self.unknown = [sp for sp in self.unknown if sp[2] > 0 and sp[1] > self.settled + 1]
        return missed


class FrameLedger:
    """Counts frames no lane ever saw (see the module doc); not thread-safe by itself."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.missed = 0
        self._gen = [0] * lanes  # the scan each lane is in
        self._key: list[Any] = [None] * lanes  # and that scan's id attribute
        self._scans: dict[int, _Scan] = {0: _Scan()}
        self._unread = [0] * lanes  # per lane: frames since its last id whose id was unread

    def account(self, lane: int, frames: Iterable[tuple[int, Any]]) -> None:
        """Lane ``lane`` accounted for these (uniqueId, scan key) frames, in its order.

        A uniqueId of 0 or less is a frame whose id could not be read (module doc).
        """
        touched = set()
        for uid, key in frames:
            if uid <= 0:
                self._unread[lane] += 1
                continue
            scan = self._scans[self._gen[lane]]
            prev = scan.hi.get(lane)
            if (prev is not None and uid < prev) or (prev is not None
                                                     and key != self._key[lane]):
                touched.add(self._gen[lane])
                self._gen[lane] += 1  # a new scan: the lane joins it (first, or after others)
                scan = self._scans.setdefault(self._gen[lane], _Scan())
                prev = None
            self._key[lane] = key
            if self._unread[lane]:
                scan.unknown.append([-1 if prev is None else prev, uid, self._unread[lane]])
                self._unread[lane] = 0
            if scan.settled is not None and uid <= scan.settled:
                if uid in scan.late:  # counted missed when everything looked settled
                    scan.late.discard(uid)
                    self.missed -= 1
                continue
            scan.seen.add(uid)
            if uid > scan.hi.get(lane, uid - 1):
                scan.hi[lane] = uid
            touched.add(self._gen[lane])
        for g in touched:
            self._settle(g)

    def _settle(self, g: int) -> None:
        scan = self._scans.get(g)
        if scan is None:
            return
        # lanes in this scan, and lanes still in an earlier one that will come to it
        inside = [lane for lane in range(self.lanes) if self._gen[lane] <= g]
        if not inside:  # every lane has moved on: the scan is over
            if scan.hi:
                self.missed += scan.settle(max(scan.hi.values()))
            del self._scans[g]
            return
        if all(lane in scan.hi for lane in inside):
            low = min(scan.hi[lane] for lane in inside)
            self.missed += scan.settle(low)
            if scan.late:  # every lane is past these now: they will not come
                scan.late = {u for u in scan.late if u > low}

    def settle_all(self) -> None:
        """Nothing is in flight anywhere: every id up to the highest seen is final."""
        for lane, n in enumerate(self._unread):
            scan = self._scans.get(self._gen[lane])
            if n and scan is not None:  # unread frames after the lane's last id
                scan.unknown.append([scan.hi.get(lane, -1), _UNBOUNDED, n])
            self._unread[lane] = 0
        for g in list(self._scans):
            scan = self._scans[g]
            if scan.hi:
                self.missed += scan.settle(max(scan.hi.values()), early=True)
            if g < min(self._gen):
                del self._scans[g]
