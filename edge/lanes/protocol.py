"""What the edge process and a lane process say to each other (frozen dataclasses on a pipe).

A batch's images travel in one of the edge's shared-memory slots
(:class:`~ptychoflow.edge.channel.Slots`); :class:`Handover` carries only which
slot and what the frames were. Each side dispatches with ``match``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychoflow.edge.messages import ModelNote, Position
from ptychoflow.physcheck import CHECK_ATTRIBUTE

Accounted = list[tuple[int, Any]]
"""(uniqueId, scan id attribute) of frames, in the order a lane took them (0: id unread)."""


# ---- to a lane --------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Follow the input PV."""


@dataclass(frozen=True)
class Stop:
    """Finish the frames in hand, hand them over, then say :class:`Closed`."""


@dataclass(frozen=True)
class Free:
    """The edge process has published the batch in ``slot``: it may be filled again."""

    slot: int


@dataclass(frozen=True)
class Seen:
    """A restarted lane: the source re-sends this frame, which its predecessor did."""

    unique_id: int
    timestamp: float


@dataclass(frozen=True)
class Follow:
    """Follow these PVs (Edge:Input)."""

    pvs: list[str]


@dataclass(frozen=True)
class Enable:
    """Edge:Enable."""

    on: bool


@dataclass(frozen=True)
class Load:
    """Edge:Model:Load: load, check and swap in ``spec``."""

    spec: str


# ---- from a lane ------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The lane has loaded its first model (None: it had none to load), or ``error``."""

    model: ModelNote | None
    error: str = ""


@dataclass(frozen=True)
class Refused:
    """A model load the lane refused."""

    spec: str
    why: str


@dataclass(frozen=True)
class Say:
    """A line for Message_RBV."""

    text: str


@dataclass(frozen=True)
class Swapped:
    """The lane's batches after this come from ``model``."""

    model: ModelNote


@dataclass(frozen=True)
class Handover:
    """A batch's outputs: in ``slot`` (``shape``, amplitude after phase), or inline."""

    unique_ids: list[int]
    timestamps: list[float]
    scan_keys: list[Any]  # each frame's scan id attribute (all the map needs)
    arrivals: list[float]
    positions: list[Position]
    slot: int | None
    shape: tuple[int, ...]
    amplitude: bool
    inline: tuple[np.ndarray, np.ndarray | None] | None = None  # too big for a slot
    # the frames taken or dropped since the last message, for the ledger: they ride along
    # (one message per batch, not two); Account carries them when no batch goes out
    account: Accounted | None = None
    # each frame's physics-check misfit (None: not checked); None when none was checked
    checks: list[float | None] | None = None

    def attributes(self, scan_attr: str) -> list[dict[str, Any]]:
        """Each frame's attributes as the publisher needs them: scan id, physics check."""
        checks = self.checks or [None] * len(self.unique_ids)
        return [{scan_attr: k} if c is None else {scan_attr: k, CHECK_ATTRIBUTE: c}
                for k, c in zip(self.scan_keys, checks, strict=True)]


@dataclass(frozen=True)
class Account:
    """Frames the lane took or dropped, in order, for the edge's ledger."""

    frames: Accounted


@dataclass(frozen=True)
class Counts:
    """The lane's counters, cumulative: bad, dropped, received, connected."""

    counts: dict[str, int]


@dataclass(frozen=True)
class Closed:
    """The lane's last batch is handed over; its final counters."""

    counts: dict[str, int]
