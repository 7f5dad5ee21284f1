"""The edge's physics check: every k-th frame's prediction against the frame itself.

For a served model whose card names its training probe
(:mod:`ptychoflow.physcheck`), :func:`physics_check` builds a :class:`FrameCheck`:
frames whose ``uniqueId`` is a multiple of ``check_every`` are checked (a
property of the frame, so lanes that each see some of the frames check the
same ones one process would), each getting its misfit as the NDAttribute
``Consistency``, which ``Edge:Phase`` carries and the publisher runs into
``Edge:Consistency_RBV``. The check runs where the network input and the
outputs meet: when a batch's outputs are first read (the publisher with one
input, the lane process with several), so its cost lands on the frames
checked only.
"""

from __future__ import annotations

import numpy as np

from ptychoflow.edge.infer.modelcheck import ModelInfo
from ptychoflow.ntnda import Frame
from ptychoflow.physcheck import (
    CARD_METRIC,
    CHECK_ATTRIBUTE,
    ForwardModel,
    PhysicsCheckError,
    load_probe,
)


class FrameCheck:
    """Checks the frames of one served model (see the module doc)."""

    def __init__(self, model: ForwardModel, every: int) -> None:
        if every < 1:
            raise ValueError(f"check_every must be at least 1 here, got {every}")
        self.model = model
        self.every = every

    def rows(self, frames: list[Frame]) -> list[int]:
        """Indices of the frames of a batch to check."""
        return [i for i, f in enumerate(frames) if f.unique_id % self.every == 0
                and self.model.frame_fits(f.array.shape) is None]

    def apply(self, frames: list[Frame], x: np.ndarray, rows: list[int], phase: np.ndarray,
              amp: np.ndarray | None) -> None:
        """Set each checked frame's misfit as its ``Consistency`` attribute."""
        errors = self.model.errors(x[rows], phase[rows], None if amp is None else amp[rows])
        for i, e in zip(rows, errors, strict=True):
            if np.isfinite(e):
                frames[i].attributes[CHECK_ATTRIBUTE] = round(float(e), 6)


def physics_check(info: ModelInfo, every: int) -> tuple[FrameCheck | None, str]:
    """The check for a model, or None, and a line saying which (and why it is off)."""
    if every <= 0:
        return None, "physics check off (check_every = 0)"
    card = info.card
    if card is None:
        return None, "physics check off: the model has no card, so no probe"
    if not card.probe:
        return None, ("physics check off: the card names no probe (exported before the "
                      "check existed, or without a reconstruction); re-export the model")
    try:
        probe, pixel = load_probe(card.probe, info.path.parent)
        model = ForwardModel.build(probe, pixel, info.preprocess, info.pixel_size_m)
    except PhysicsCheckError as exc:
        return None, f"physics check off: {exc}"
    ref = card.metrics.get(CARD_METRIC)
    ref_text = f"{ref:.4g}" if isinstance(ref, int | float) else "not recorded"
    return FrameCheck(model, every), (f"physics check on every frame with uniqueId divisible "
                                      f"by {every} (training scan's value {ref_text})")
