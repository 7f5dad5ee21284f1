"""The quality gate: once the network is good enough, stop sending scans to remote compute.

"Once the reconstructions of the trained model meet user quality metrics,
valuable HPC resources can be released" (the original work's aim). After
``runs`` consecutive runs whose model quality (SSIM against the iterative
reconstruction) met ``Model:QualityTarget``, Auto mode stops starting runs;
putting Auto again or lowering the target opens the gate. Kept free of EPICS so
the rule is unit-tested on its own.
"""

from __future__ import annotations

from ptychoflow.pvnames import CONTROL


class QualityGate:
    """Counts consecutive runs that met the target; ``closed`` once enough did."""

    def __init__(self, target: float = 0.0, runs: int = 3) -> None:
        if runs < 1:
            raise ValueError("the quality gate needs runs >= 1")
        self.target = target
        self.runs = runs
        self.streak = 0
        self.closed = False

    @property
    def enabled(self) -> bool:
        """A target of 0 (the default) means no gate."""
        return self.target > 0

    def record(self, quality: float | None) -> bool:
        """Count one run's model quality; returns ``True`` when this run closed the gate."""
        if not self.enabled or quality is None:
            return False
        self.streak = self.streak + 1 if quality >= self.target else 0
        if self.streak >= self.runs and not self.closed:
            self.closed = True
            return True
        return False

    def set_target(self, target: float) -> bool:
        """A new target; lowering it (or clearing it) reopens a closed gate. Returns reopened."""
        lowered = target < self.target
        self.target = target
        if (lowered or not self.enabled) and self.closed:
            self.reopen()
            return True
        return False

    def reopen(self) -> None:
        """Open the gate and start counting anew (Auto put again)."""
        self.closed = False
        self.streak = 0

    def note(self) -> str:
        """What the operator reads when the gate closes."""
        return (f"quality target {self.target:.3f} met by {self.streak} consecutive runs: Auto "
                "stops sending scans to remote compute; put "
                f"{CONTROL.workflow_auto.suffix} 1 or lower "
                f"{CONTROL.model_quality_target.suffix} to resume")
