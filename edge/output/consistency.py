"""``Edge:Consistency_RBV``: the running physics-check misfit of the served model.

Checked frames carry their misfit as the ``Consistency`` attribute
(:mod:`ptychoflow.edge.infer.physics`); the publisher feeds each to a
:class:`ConsistencyMeter`, whose value is the median of the last ``window``,
the figure the model card records on the training scan
(:func:`ptychoflow.physcheck.card_value`), so the two compare directly. The
median ignores the odd frame (a beam dump, the scan's edge) that one bad
prediction would let swing a mean. A new model starts a new window: its
misfits are its own.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ptychoflow.ntnda import Frame
from ptychoflow.physcheck import CHECK_ATTRIBUTE

WINDOW = 64


class ConsistencyMeter:
    """The running median of checked frames' misfits; NaN before the first."""

    def __init__(self, window: int = WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=window)

    def take(self, frame: Frame) -> dict[str, Any] | None:
        """The frame's attributes for ``Edge:Phase`` (None: not checked); counts its misfit."""
        e = frame.attributes.get(CHECK_ATTRIBUTE)
        if not isinstance(e, int | float) or not math.isfinite(e):
            return None
        self._values.append(float(e))
        return {CHECK_ATTRIBUTE: float(e)}

    def value(self) -> float:
        """The running value (NaN when no frame was checked since the last reset)."""
        return round(float(np.median(self._values)), 5) if self._values else math.nan

    def reset(self) -> None:
        """A new model: forget the old one's misfits."""
        self._values.clear()
