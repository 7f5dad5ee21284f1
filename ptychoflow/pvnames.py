"""The one source of ptychoflow's PV names and their record metadata.

The control IOC builds its records from :data:`CONTROL`, the edge its PVs from
:data:`EDGE`, the simulator from :data:`DETECTOR`; ophyd devices, screens, the
record database in ``db/``, the README's PV table and the tests all derive from
the same tables, so a name can only ever be changed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


MESSAGE_LENGTH = 1024
PATH_LENGTH = 1024

# Control IOC (CA and PVA, served by pythonSoftIOC from one record set).
CONTROL: tuple[PVSpec, ...] = (
    PVSpec("Workflow:Start", "bo", "W", "Start a run on Scan:Path", enums=("Idle", "Start")),
    PVSpec("Workflow:Abort", "bo", "W", "Abort the active run", enums=("Idle", "Abort")),
    PVSpec("Workflow:Auto", "bo", "W", "Run on every new scan file", enums=("Off", "On"),
           autosave=True),
    PVSpec("Workflow:State_RBV", "mbbi", "R", "Workflow state", enums=STATES),
    PVSpec("Workflow:Busy_RBV", "bi", "R", "A run is active", enums=("Idle", "Busy")),
    PVSpec("Workflow:Progress_RBV", "ai", "R", "Progress of the active stage", egu="%",
           low=0, high=100, prec=1),
    PVSpec("Workflow:Message_RBV", "lsi", "R", "Last status or error", initial="",
           length=MESSAGE_LENGTH),
    PVSpec("Workflow:Report_RBV", "lsi", "R", "Report of the last run (index.html)", initial="",
           length=PATH_LENGTH),
    PVSpec("Workflow:RunId_RBV", "longin", "R", "Current or last run id"),
    PVSpec("Workflow:ActiveRuns_RBV", "longin", "R", "Runs in progress (overlap in Auto)"),
    PVSpec("Workflow:QueuedScans_RBV", "longin", "R", "Scans waiting for a run (Auto)"),
    PVSpec("Scan:Path", "lso", "W", "Scan file to process", initial="", length=PATH_LENGTH),
    PVSpec("Transfer:Backend", "mbbo", "W", "Transfer back end", enums=TRANSFER_BACKENDS,
           autosave=True),
    PVSpec("Transfer:Rate_RBV", "ai", "R", "Transfer rate", egu="MB/s", prec=2),
    PVSpec("Compute:Backend", "mbbo", "W", "Compute back end", enums=COMPUTE_BACKENDS,
           autosave=True),
    PVSpec("Recon:Algorithm", "mbbo", "W", "Reconstruction algorithm", enums=ALGORITHMS,
           autosave=True),
    PVSpec("Recon:Epochs", "longout", "W", "Reconstruction epochs", initial=100, low=1,
           high=10000, autosave=True),
    PVSpec("Recon:Epoch_RBV", "longin", "R", "Reconstruction epoch"),
    PVSpec("Recon:Error_RBV", "ai", "R", "Reconstruction data error", prec=4),
    PVSpec("Train:Epochs", "longout", "W", "Training epochs", initial=50, low=1, high=1000,
           autosave=True),
    PVSpec("Train:ValFraction", "ao", "W", "Validation fraction", initial=0.1, low=0.01,
           high=0.5, autosave=True, prec=2),
    PVSpec("Train:Epoch_RBV", "longin", "R", "Training epoch"),
    PVSpec("Train:Loss_RBV", "ai", "R", "Training loss", prec=5),
    PVSpec("Train:ValLoss_RBV", "ai", "R", "Validation loss", prec=5),
    PVSpec("Train:BestValLoss_RBV", "ai", "R", "Best validation loss", prec=5),
    PVSpec("Model:Version_RBV", "longin", "R", "Newest registered model"),
    PVSpec("Model:Deploy", "longout", "W", "Deploy a registered model version", low=0,
           high=1_000_000),
    PVSpec("Model:Quality_RBV", "ai", "R", "SSIM of edge vs iterative", low=-1, high=1, prec=3),
    PVSpec("Model:Deployed_RBV", "longin", "R", "Model version the edge was given last"),
    PVSpec("Model:QualityTarget", "ao", "W", "SSIM target that releases the cluster",
           initial=0.0, low=0, high=1, autosave=True, prec=3),
    PVSpec("Model:TargetMet_RBV", "bi", "R", "Quality target met: Auto paused",
           enums=("No", "Yes")),
)

# Edge service (pure pvAccess, served by p4p).
EDGE: tuple[PVSpec, ...] = (
    PVSpec("Edge:Phase", "NTNDArray", "R", "Latest phase prediction", egu="rad"),
    PVSpec("Edge:Amplitude", "NTNDArray", "R", "Latest amplitude prediction"),
    PVSpec("Edge:Stitched", "NTNDArray", "R", "Stitched phase map of the scan", egu="rad"),
    PVSpec("Edge:Stitched:Reset", "NTScalar:i", "W", "Start a new stitched map"),
    PVSpec("Edge:Enable", "NTScalar:i", "W", "Run inference", initial=1),
    PVSpec("Edge:Input", "NTScalar:s", "W",
           "Detector NTNDArray PV to follow (several, space-separated: one lane each)",
           initial=""),
    PVSpec("Edge:Model:Load", "NTScalar:s", "W", "Model path or version to load", initial=""),
    PVSpec("Edge:Model:Version_RBV", "NTScalar:i", "R", "Version of the serving model"),
    PVSpec("Edge:FrameRate_RBV", "NTScalar:d", "R", "Frames processed per second", egu="Hz"),
    PVSpec("Edge:Latency_RBV", "NTScalar:d", "R", "Input to publish latency", egu="ms"),
    PVSpec("Edge:Processed_RBV", "NTScalar:l", "R", "Frames processed"),
    PVSpec("Edge:Dropped_RBV", "NTScalar:l", "R", "Frames dropped (edge too slow)"),
    PVSpec("Edge:BadFrames_RBV", "NTScalar:l", "R", "Frames refused as invalid"),
    PVSpec("Edge:Message_RBV", "NTScalar:s", "R", "Last status or error", initial=""),
)

# Detector simulator (pure pvAccess, like areaDetector's NDPluginPva plus a few scalars).
DETECTOR: tuple[PVSpec, ...] = (
    PVSpec("Pva1:Image", "NTNDArray", "R", "Detector frame"),
    PVSpec("cam1:Acquire", "NTScalar:i", "W", "Acquire (1) or stop (0)"),
    PVSpec("cam1:AcquireRate", "NTScalar:d", "W", "Frame rate, 0 = as fast as possible",
           egu="Hz"),
    PVSpec("cam1:ArrayCounter_RBV", "NTScalar:l", "R", "Frames sent"),
    PVSpec("cam1:ArrayRate_RBV", "NTScalar:d", "R", "Measured frame rate", egu="Hz"),
    PVSpec("HDF1:FullFileName_RBV", "NTScalar:s", "R", "Scan file being written", initial=""),
)


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
