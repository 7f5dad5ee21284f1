"""The drift rule: when the edge's predictions stop explaining the frames, retrain.

The edge's physics check (``Edge:Consistency_RBV``, docs/edge.md) runs the
median misfit of predictions against the frames they came from; the model card
records the same figure on the training scan. A sample, probe or geometry the
network never saw shows as a misfit well above the card's. In Auto mode, once
the running value has stayed above ``Model:ConsistencyFactor`` times the
card's for ``Model:ConsistencyHold`` seconds, the IOC starts a retraining run
on the current scan, even when the quality gate had released remote compute
(the gate measured the old sample). One drift starts one run: the rule fires
again only after the value came back under the threshold or a new model is
served. Kept free of EPICS so the rule is unit-tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptychoflow.pvnames import CONTROL


@dataclass
class ConsistencyRule:
    """Decides, from each running value, when a drift has lasted long enough."""

    factor: float = 2.0
    hold_s: float = 30.0
    since: float | None = None  # when the value first went above the threshold
    fired: bool = False

    @property
    def enabled(self) -> bool:
        """A factor of 0 turns the rule off."""
        return self.factor > 0

    def update(self, value: float, reference: float | None, now: float) -> str | None:
        """Count one running value; returns why to retrain when the drift has held, once."""
        if (not self.enabled or reference is None or not math.isfinite(reference)
                or reference <= 0 or not math.isfinite(value)):
            self.since = None
            return None
        threshold = self.factor * reference
        if value <= threshold:
            self.since, self.fired = None, False  # back to normal: the next drift counts
            return None
        if self.since is None:
            self.since = now
        held = now - self.since
        if self.fired or held < self.hold_s:
            return None
        self.fired = True
        return (f"the edge's physics misfit {value:.4g} ({CONTROL.model_consistency_factor.suffix}"
                f" {self.factor:g} x the model card's {reference:.4g} = {threshold:.4g}) held for "
                f"{held:.0f} s (>= {CONTROL.model_consistency_hold.suffix} {self.hold_s:g} s)")

    def defer(self, now: float) -> None:
        """No run could start: try again after another hold."""
        self.fired, self.since = False, now

    def rearm(self) -> None:
        """A new model is served: its misfits start a new count."""
        self.since, self.fired = None, False
