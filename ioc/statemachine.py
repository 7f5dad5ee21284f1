"""The workflow's states and the transitions between them.

Idle → Transferring → Reconstructing → Training → Deploying → Done, and from any
active state to Failed or Aborted. A new run may start from any final state; a run
aborted while it waits for its turn, before its first stage, goes from Idle to Aborted.
Kept free of EPICS so the rules are unit-tested on their own.
"""

from __future__ import annotations

from ptychoflow.ioc.stagetable import (  # noqa: F401 - the states are re-exported
    ABORTED,
    DEPLOYING,
    DONE,
    FAILED,
    IDLE,
    RECONSTRUCTING,
    STAGES,
    TRAINING,
    TRANSFERRING,
)
from ptychoflow.pvnames import STATES

PIPELINE: tuple[tuple[str, str], ...] = tuple((s.state, s.name) for s in STAGES)
ACTIVE = frozenset(state for state, _ in PIPELINE)
FINAL = frozenset({IDLE, DONE, FAILED, ABORTED})


class TransitionError(RuntimeError):
    """A state change the workflow does not allow (a bug in the orchestrator)."""


def allowed(current: str, new: str) -> bool:
    """Whether the workflow may go from ``current`` to ``new``."""
    order = [s for s, _ in PIPELINE]
    if current in FINAL:
        return new == order[0] or new == FAILED or (current == IDLE and new == ABORTED)
    if new in (FAILED, ABORTED):
        return True
    i = order.index(current)
    return new == (order[i + 1] if i + 1 < len(order) else DONE)


class StateMachine:
    """The current state, changed only along allowed transitions."""

    def __init__(self, state: str = IDLE) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self.state = state

    @property
    def busy(self) -> bool:
        """A run is active."""
        return self.state in ACTIVE

    def go(self, new: str) -> str:
        """Move to ``new`` or raise :class:`TransitionError`; returns the new state."""
        if not allowed(self.state, new):
            raise TransitionError(f"workflow cannot go from {self.state} to {new}")
        self.state = new
        return new

    def index(self) -> int:
        """The state as the mbbi index of ``Workflow:State_RBV``."""
        return STATES.index(self.state)
