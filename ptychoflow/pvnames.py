"""The one source of ptychoflow's PV names and their record metadata.

The control IOC builds its records from :data:`CONTROL`, the edge its PVs from
:data:`EDGE`, the simulator from :data:`DETECTOR`; ophyd devices, screens, the
record database in ``db/``, the README's PV table and the tests all derive from
the same tables, so a name can only ever be changed here.

Each table is a tuple of :class:`PVSpec` (code that serves or lists every PV
iterates it) whose PVs are also typed attributes, so code that means one PV
names it, ``CONTROL.scan_path.name(prefix)``, and a type checker, not a typo
found at run time, tells when it is gone. The attribute is the suffix in snake
case without ``_RBV`` (:func:`attr_name`); the ophyd and ophyd-async devices
name their fields the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

DEFAULT_PREFIX = "PTYCHO:"

Access = Literal["R", "W"]

STATES = ("Idle", "Transferring", "Reconstructing", "Training", "Deploying", "Done", "Failed",
          "Aborted")
TRANSFER_BACKENDS = ("Local", "Globus")
COMPUTE_BACKENDS = ("Local", "Parsl", "GlobusCompute")
ALGORITHMS = ("rPIE", "ePIE", "LSQML", "DM")


@dataclass(frozen=True)
class PVSpec:
    """One PV: its suffix, EPICS record type and the metadata clients read.

    ``record`` is the EPICS record type (``bo``, ``mbbo``, ``ao``, ``longout``,
    ``lso``/``lsi`` for long strings, ``NTNDArray``/``NTScalar`` for pure PVA).
    """

    suffix: str
    record: str
    access: Access
    desc: str
    egu: str = ""
    initial: float | int | str = 0
    low: float | None = None
    high: float | None = None
    enums: tuple[str, ...] = ()
    autosave: bool = False
    prec: int = 3
    length: int = 0  # long strings: maximum length in characters
    extra: dict[str, str] = field(default_factory=dict)

    def name(self, prefix: str) -> str:
        """The full PV name under ``prefix``."""
        return prefix + self.suffix


def attr_name(suffix: str, strip: str = "") -> str:
    """The attribute of a PV: ``Workflow:State_RBV`` → ``workflow_state``.

    Each part of the suffix in snake case, ``_RBV`` dropped (a readback and its
    setting never share a name here, and the device attribute reads like the
    setting), and ``strip`` (``Edge:`` in :data:`EDGE`, whose every PV has it) left
    off; ``HDF1`` stays ``hdf1``.
    """
    parts = suffix.removeprefix(strip).removesuffix("_RBV").split(":")
    return "_".join(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", p).lower() for p in parts)


MESSAGE_LENGTH = 1024
LIVE_PHASE_PIXELS = 128 * 128  # ptychoflow.livephase.MAX_SIDE squared
PATH_LENGTH = 1024


class ControlPVs(NamedTuple):
    """The control IOC's PVs (CA and PVA, served by pythonSoftIOC from one record set)."""

    workflow_start: PVSpec = PVSpec("Workflow:Start", "bo", "W", "Start a run on Scan:Path",
                                    enums=("Idle", "Start"))
    workflow_abort: PVSpec = PVSpec("Workflow:Abort", "bo", "W", "Abort the active run",
                                    enums=("Idle", "Abort"))
    workflow_auto: PVSpec = PVSpec("Workflow:Auto", "bo", "W", "Run on every new scan file",
                                   enums=("Off", "On"), autosave=True)
    workflow_state: PVSpec = PVSpec("Workflow:State_RBV", "mbbi", "R", "Workflow state",
                                    enums=STATES)
    workflow_busy: PVSpec = PVSpec("Workflow:Busy_RBV", "bi", "R", "A run is active",
                                   enums=("Idle", "Busy"))
    workflow_progress: PVSpec = PVSpec("Workflow:Progress_RBV", "ai", "R",
                                       "Progress of the active stage", egu="%", low=0, high=100,
                                       prec=1)
    workflow_message: PVSpec = PVSpec("Workflow:Message_RBV", "lsi", "R", "Last status or error",
                                      initial="", length=MESSAGE_LENGTH)
    workflow_report: PVSpec = PVSpec("Workflow:Report_RBV", "lsi", "R",
                                     "Report of the last run (index.html)", initial="",
                                     length=PATH_LENGTH)
    workflow_run_id: PVSpec = PVSpec("Workflow:RunId_RBV", "longin", "R", "Current or last run id")
    workflow_active_runs: PVSpec = PVSpec("Workflow:ActiveRuns_RBV", "longin", "R",
                                          "Runs in progress (overlap in Auto)")
    workflow_queued_scans: PVSpec = PVSpec("Workflow:QueuedScans_RBV", "longin", "R",
                                           "Scans waiting for a run (Auto)")
    scan_path: PVSpec = PVSpec("Scan:Path", "lso", "W", "Scan file to process", initial="",
                               length=PATH_LENGTH)
    transfer_backend: PVSpec = PVSpec("Transfer:Backend", "mbbo", "W", "Transfer back end",
                                      enums=TRANSFER_BACKENDS, autosave=True)
    transfer_rate: PVSpec = PVSpec("Transfer:Rate_RBV", "ai", "R", "Transfer rate", egu="MB/s",
                                   prec=2)
    compute_backend: PVSpec = PVSpec("Compute:Backend", "mbbo", "W", "Compute back end",
                                     enums=COMPUTE_BACKENDS, autosave=True)
    recon_algorithm: PVSpec = PVSpec("Recon:Algorithm", "mbbo", "W", "Reconstruction algorithm",
                                     enums=ALGORITHMS, autosave=True)
    recon_epochs: PVSpec = PVSpec("Recon:Epochs", "longout", "W", "Reconstruction epochs",
                                  initial=100, low=1, high=10000, autosave=True)
    recon_epoch: PVSpec = PVSpec("Recon:Epoch_RBV", "longin", "R", "Reconstruction epoch")
    recon_error: PVSpec = PVSpec("Recon:Error_RBV", "ai", "R", "Reconstruction data error", prec=4)
    recon_streaming: PVSpec = PVSpec("Recon:Streaming", "bo", "W",
                                     "Reconstruct scans while acquired", enums=("Off", "On"),
                                     initial=1, autosave=True)
    # the live iterative phase, areaDetector's NDStdArrays convention (a CA client's image)
    recon_phase_array_data: PVSpec = PVSpec("Recon:Phase:ArrayData", "waveform", "R",
                                            "Live iterative phase image", egu="rad",
                                            length=LIVE_PHASE_PIXELS)
    recon_phase_array_size0: PVSpec = PVSpec("Recon:Phase:ArraySize0_RBV", "longin", "R",
                                             "Live phase image width", egu="px")
    recon_phase_array_size1: PVSpec = PVSpec("Recon:Phase:ArraySize1_RBV", "longin", "R",
                                             "Live phase image height", egu="px")
    recon_phase_unique_id: PVSpec = PVSpec("Recon:Phase:UniqueId_RBV", "longin", "R",
                                           "Live phase images published")
    train_epochs: PVSpec = PVSpec("Train:Epochs", "longout", "W", "Training epochs", initial=50,
                                  low=1, high=1000, autosave=True)
    train_val_fraction: PVSpec = PVSpec("Train:ValFraction", "ao", "W", "Validation fraction",
                                        initial=0.1, low=0.01, high=0.5, autosave=True, prec=2)
    train_epoch: PVSpec = PVSpec("Train:Epoch_RBV", "longin", "R", "Training epoch")
    train_loss: PVSpec = PVSpec("Train:Loss_RBV", "ai", "R", "Training loss", prec=5)
    train_val_loss: PVSpec = PVSpec("Train:ValLoss_RBV", "ai", "R", "Validation loss", prec=5)
    train_best_val_loss: PVSpec = PVSpec("Train:BestValLoss_RBV", "ai", "R",
                                         "Best validation loss", prec=5)
    model_version: PVSpec = PVSpec("Model:Version_RBV", "longin", "R", "Newest registered model")
    model_deploy: PVSpec = PVSpec("Model:Deploy", "longout", "W",
                                  "Deploy a registered model version", low=0, high=1_000_000)
    model_quality: PVSpec = PVSpec("Model:Quality_RBV", "ai", "R", "SSIM of edge vs iterative",
                                   low=-1, high=1, prec=3)
    model_deployed: PVSpec = PVSpec("Model:Deployed_RBV", "longin", "R",
                                    "Model version the edge was given last")
    model_quality_target: PVSpec = PVSpec("Model:QualityTarget", "ao", "W",
                                          "SSIM target that releases the cluster", initial=0.0,
                                          low=0, high=1, autosave=True, prec=3)
    model_target_met: PVSpec = PVSpec("Model:TargetMet_RBV", "bi", "R",
                                      "Quality target met: Auto paused", enums=("No", "Yes"))
    model_consistency_factor: PVSpec = PVSpec(
        "Model:ConsistencyFactor", "ao", "W",
        "Retrain when edge misfit exceeds card value times this (0: off)", initial=2.0, low=0,
        high=100, autosave=True, prec=2)
    model_consistency_hold: PVSpec = PVSpec(
        "Model:ConsistencyHold", "ao", "W", "Seconds the misfit must stay high to retrain",
        egu="s", initial=30.0, low=0, high=86400, autosave=True, prec=1)


class EdgePVs(NamedTuple):
    """The edge service's PVs (pure pvAccess, served by p4p); attributes drop ``Edge:``."""

    phase: PVSpec = PVSpec("Edge:Phase", "NTNDArray", "R", "Latest phase prediction", egu="rad")
    amplitude: PVSpec = PVSpec("Edge:Amplitude", "NTNDArray", "R", "Latest amplitude prediction")
    stitched: PVSpec = PVSpec("Edge:Stitched", "NTNDArray", "R",
                              "Stitched phase map of the scan", egu="rad")
    stitched_reset: PVSpec = PVSpec("Edge:Stitched:Reset", "NTScalar:i", "W",
                                    "Start a new stitched map")
    enable: PVSpec = PVSpec("Edge:Enable", "NTScalar:i", "W", "Run inference", initial=1)
    input: PVSpec = PVSpec(
        "Edge:Input", "NTScalar:s", "W",
        "Detector NTNDArray PV to follow (several, space-separated: one lane each)", initial="")
    model_load: PVSpec = PVSpec("Edge:Model:Load", "NTScalar:s", "W",
                                "Model path or version to load", initial="")
    model_version: PVSpec = PVSpec("Edge:Model:Version_RBV", "NTScalar:i", "R",
                                   "Version of the serving model")
    frame_rate: PVSpec = PVSpec("Edge:FrameRate_RBV", "NTScalar:d", "R",
                                "Frames processed per second", egu="Hz")
    latency: PVSpec = PVSpec("Edge:Latency_RBV", "NTScalar:d", "R", "Input to publish latency",
                             egu="ms")
    processed: PVSpec = PVSpec("Edge:Processed_RBV", "NTScalar:l", "R", "Frames processed")
    missed: PVSpec = PVSpec("Edge:Missed_RBV", "NTScalar:l", "R",
                            "Frames the edge never received (gaps in uniqueId)")
    dropped: PVSpec = PVSpec("Edge:Dropped_RBV", "NTScalar:l", "R",
                             "Frames received and dropped (edge too slow, no model)")
    bad_frames: PVSpec = PVSpec("Edge:BadFrames_RBV", "NTScalar:l", "R",
                                "Frames refused as invalid")
    unplaced: PVSpec = PVSpec("Edge:Unplaced_RBV", "NTScalar:l", "R",
                              "Frames published but left off the map (no position)")
    consistency: PVSpec = PVSpec("Edge:Consistency_RBV", "NTScalar:d", "R",
                                 "Physics check: running misfit of predictions to frames",
                                 prec=4)
    message: PVSpec = PVSpec("Edge:Message_RBV", "NTScalar:s", "R", "Last status or error",
                             initial="")


class DetectorPVs(NamedTuple):
    """The detector simulator's PVs: areaDetector's NDPluginPva image plus a few scalars."""

    pva1_image: PVSpec = PVSpec("Pva1:Image", "NTNDArray", "R", "Detector frame")
    cam1_acquire: PVSpec = PVSpec("cam1:Acquire", "NTScalar:i", "W", "Acquire (1) or stop (0)")
    cam1_acquire_rate: PVSpec = PVSpec("cam1:AcquireRate", "NTScalar:d", "W",
                                       "Frame rate, 0 = as fast as possible", egu="Hz")
    cam1_array_counter: PVSpec = PVSpec("cam1:ArrayCounter_RBV", "NTScalar:l", "R", "Frames sent")
    cam1_array_rate: PVSpec = PVSpec("cam1:ArrayRate_RBV", "NTScalar:d", "R",
                                     "Measured frame rate", egu="Hz")
    hdf1_full_file_name: PVSpec = PVSpec("HDF1:FullFileName_RBV", "NTScalar:s", "R",
                                         "Scan file being written", initial="")

    def image(self, k: int) -> PVSpec:
        """Image PV ``k`` (from 1) of K, as NDPluginScatter feeds K NDPluginPva: ``PvaK:Image``."""
        return replace(self.pva1_image, suffix=self.pva1_image.suffix.replace("1:", f"{k}:", 1))


CONTROL = ControlPVs()
EDGE = EdgePVs()
DETECTOR = DetectorPVs()


def by_suffix(table: tuple[PVSpec, ...]) -> dict[str, PVSpec]:
    """Index a PV table by suffix."""
    return {spec.suffix: spec for spec in table}


def markdown_table(table: tuple[PVSpec, ...]) -> str:
    """The README's PV table, generated so documentation never drifts from code."""
    rows = ["| PV | record | access | meaning | units / range / states |", "|---|---|---|---|---|"]
    for s in table:
        extra = []
        if s.egu:
            extra.append(s.egu)
        if s.low is not None and s.high is not None and s.access == "W":
            extra.append(f"{s.low:g}–{s.high:g}")
        if s.enums:
            extra.append(", ".join(s.enums))
        if s.autosave:
            extra.append("autosaved")
        rows.append(f"| `{s.suffix}` | {s.record} | {s.access} | {s.desc} | {'; '.join(extra)} |")
    return "\n".join(rows)
