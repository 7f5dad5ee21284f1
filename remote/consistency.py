"""The physics check's figure on the training scan, for the model card.

The edge compares each prediction's implied far-field intensity with the frame
(:mod:`ptychoflow.physcheck`); the number means something only next to what the
same model scores on scans it was trained on. Export computes that here, with
the same code and the probe of the reconstruction the labels came from, and
the card records it (``metrics.consistency``) beside the probe file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychoflow.physcheck import CARD_METRIC, ForwardModel, PhysicsCheckError, card_value
from ptychoflow.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass
class TrainingCheck:
    """The card's figure and the probe to ship, or why there is none."""

    value: float | None
    probe: tuple[np.ndarray, float] | None
    why_not: str = ""

    def metrics(self, scan: str) -> dict[str, Any]:
        """The card's metrics entries."""
        if self.value is None:
            return {CARD_METRIC: None, f"{CARD_METRIC}_off": self.why_not}
        return {CARD_METRIC: round(self.value, 5), f"{CARD_METRIC}_scan": scan}


def training_check(ckpt: Any, x: np.ndarray, reconstruction: str | None) -> TrainingCheck:
    """Median misfit of ``ckpt``'s predictions on inputs ``x`` of its training scan."""
    from ptychoflow.remote.recon import ReconstructionError, read_reconstruction
    from ptychoflow.remote.train import predict

    if not reconstruction:
        return TrainingCheck(None, None, "no reconstruction given to export, so no probe")
    try:
        rec = read_reconstruction(reconstruction)
        pre = Preprocess.from_dict(ckpt.meta["preprocess"])
        fm = ForwardModel.build(rec.probe, rec.pixel_size_m, pre,
                                float(ckpt.meta["output_pixel_size_m"]))
    except (ReconstructionError, PhysicsCheckError) as exc:
        log.warning("physics check off for this model: %s", exc)
        return TrainingCheck(None, None, str(exc))
    out = predict(ckpt.model(), x)
    amp = out[:, 1] if out.shape[1] > 1 else None
    errors = fm.errors(x, out[:, 0], amp)
    return TrainingCheck(card_value(errors), (rec.probe, rec.pixel_size_m))
