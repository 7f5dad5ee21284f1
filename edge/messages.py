"""The edge's vocabulary: what goes down the publisher's queue, and the parts' interfaces.

Frames come in through a :class:`FrameSource` (one input on threads of the edge
process, :class:`~ptychoflow.edge.input.intake.Intake`, or one process per input,
:class:`~ptychoflow.edge.lanes.parent.LaneSet`); either puts on one short queue,
in order per input:

* a :class:`Batch`: frames with their outputs, to publish;
* a :class:`ModelChanged`: batches after it come from that model;
* :data:`CLOSE`: last, once every frame in hand is out.

The publisher (:mod:`ptychoflow.edge.output.publisher`) takes them off and
places the phases on a :class:`MapSink`: the in-process
:class:`~ptychoflow.stitch.Stitcher` or the stitching process
(:class:`~ptychoflow.edge.output.stitchproc.StitchProcess`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from ptychoflow.ntnda import Frame

Position = tuple[float, float] | None
"""A frame's scan position (x, y) in metres; None when not stitching."""


class _Close:
    """The type of :data:`CLOSE`."""

    def __repr__(self) -> str:
        return "CLOSE"


CLOSE: Final = _Close()
"""Put on the queue last, once every frame in hand is submitted."""


@dataclass(frozen=True)
class ModelNote:
    """The model being served, as the publisher and the status PVs need it.

    A lane sends its own to the edge process the same way.
    """

    version: int
    path: str
    pixel_size_m: float
    where: str
    check: str = ""  # the physics check: on (every k-th frame) or why it is off

    @property
    def name(self) -> str:
        """The model's file name."""
        return Path(self.path).name


@dataclass(frozen=True)
class ModelChanged:
    """The source switched models: the batches after this note come from ``model``."""

    model: ModelNote


class Batch(Protocol):
    """What the publisher takes off the queue: frames with their outputs."""

    frames: list[Frame]
    arrivals: list[float]
    positions: list[Position]
    lane: int

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(phase, amplitude or None), each (n, H, W); raises what the engine raised."""
        ...

    def release(self) -> None:
        """Called once the batch is published: its memory and its model may be let go."""
        ...


QueueItem = Batch | ModelChanged | _Close
"""Everything the publisher's queue carries."""


class FrameSource(Protocol):
    """Frames in: follows input PVs and puts :data:`QueueItem` s on the publisher's queue."""

    model: ModelNote | None  # the model served when the source started

    def start(self) -> None:
        """Start following the input(s)."""
        ...

    def follow(self, pvs: list[str]) -> None:
        """Edge:Input: follow these PVs instead (ValueError refuses the put)."""
        ...

    def set_enabled(self, on: bool) -> None:
        """Edge:Enable: when off, frames are taken and discarded (and counted)."""
        ...

    def request(self, spec: str) -> None:
        """Edge:Model:Load: load, check and swap in ``spec`` (ValueError refuses the put)."""
        ...

    @property
    def bad(self) -> int:
        """Frames refused as invalid."""
        ...

    @property
    def missed(self) -> int:
        """Frames that never reached the edge (gaps in uniqueId, ids no lane saw)."""
        ...

    @property
    def dropped(self) -> int:
        """Frames received and lost here: queue overflow, no model loaded."""
        ...

    @property
    def unplaced(self) -> int:
        """Frames published without a position: left off the map."""
        ...

    def stop(self) -> None:
        """Stop following; CLOSE follows the last frame in hand."""
        ...

    def close(self) -> None:
        """After the publisher took CLOSE: release models and processes."""
        ...


class MapSink(Protocol):
    """The stitched map, wherever it is computed; used from the publisher's thread only."""

    pixel: float
    count: int  # patches placed since the last reset

    def add(self, patch: np.ndarray, x_m: float, y_m: float) -> None:
        """Place ``patch`` centred at (x, y) metres; StitchError when it cannot be placed."""
        ...

    def flush(self) -> None:
        """Hand on the patches queued so far (nothing to do in process)."""
        ...

    def errors(self) -> list[str]:
        """Why patches placed later were refused, since the last call."""
        ...

    def reset(self) -> None:
        """Start a new map."""
        ...

    def image(self) -> np.ndarray:
        """The averaged map with every patch so far; sets :attr:`origin_m`."""
        ...

    @property
    def origin_m(self) -> tuple[float, float]:
        """(y, x) metres of map pixel (0, 0)."""
        ...

    def close(self) -> None:
        """Release what the map holds."""
        ...


class Every:
    """True at most once per ``period_s``: for messages that would otherwise come per frame."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last = -period_s

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True
