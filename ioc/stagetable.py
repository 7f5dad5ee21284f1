"""The one table of the workflow's stages: name, state, progress readbacks, who runs it.

Everything that used to map stages to states or to PVs in several places
(the state machine's pipeline, the settings' stage names, the orchestrator's
progress fields) derives from :data:`STAGES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ptychoflow.livephase import live_phase_values
from ptychoflow.pvnames import CONTROL, STATES

IDLE, TRANSFERRING, RECONSTRUCTING, TRAINING, DEPLOYING, DONE, FAILED, ABORTED = STATES


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    ``runs_on`` says who does the work: ``transfer`` stages are done by the
    orchestrator through the transfer back end (on the beamline host), ``compute``
    stages are submitted to the compute back end. ``lineage`` stages of successive
    runs happen one run at a time, in run order (one training lineage, model
    versions in order). ``retry_safe``: a stage whose worker died may be run once
    more, because it writes only its own atomic outputs.
    """

    name: str
    state: str
    fields: Mapping[str, str] = field(default_factory=dict)
    runs_on: Literal["transfer", "compute"] = "compute"
    lineage: bool = False
    makes_model: bool = False
    retry_safe: bool = True


STAGES: tuple[Stage, ...] = (
    Stage("transfer", TRANSFERRING, {"rate_mb_s": CONTROL.transfer_rate.suffix},
          runs_on="transfer"),
    Stage("reconstruct", RECONSTRUCTING, {"epoch": CONTROL.recon_epoch.suffix,
                                          "error": CONTROL.recon_error.suffix}),
    Stage("train", TRAINING, {"epoch": CONTROL.train_epoch.suffix,
                              "loss": CONTROL.train_loss.suffix,
                              "val_loss": CONTROL.train_val_loss.suffix,
                              "best_val_loss": CONTROL.train_best_val_loss.suffix},
          lineage=True, retry_safe=False),
    Stage("export", DEPLOYING, lineage=True, makes_model=True, retry_safe=False),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
COMPUTE_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.runs_on == "compute")
RESET_ON_START: dict[str, float | int] = {
    CONTROL.workflow_progress.suffix: 0.0, CONTROL.transfer_rate.suffix: 0.0,
    **{suffix: 0 for s in STAGES for suffix in s.fields.values()}}


def progress_values(item: dict[str, Any]) -> dict[str, Any]:
    """Read-back PV values carried by one progress record from a stage."""
    out: dict[str, Any] = {}
    fraction = item.get("fraction")
    if isinstance(fraction, int | float):
        out[CONTROL.workflow_progress.suffix] = max(0.0, min(100.0, 100.0 * float(fraction)))
    stage = BY_NAME.get(str(item.get("stage")))
    for key, suffix in (stage.fields if stage else {}).items():
        v = item.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[suffix] = v
    if item.get("live_phase"):  # streaming rPIE's current image
        out.update(live_phase_values(item["live_phase"], item.get("live_id")))
    return out
