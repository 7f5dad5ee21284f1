"""Operator screens, generated from the PV tables: Phoebus ``.bob`` and PyDM ``.ui``.

A screen is described once, here, as sections of rows; each row names a PV by
its suffix in :data:`ptychoflow.pvnames.CONTROL` or :data:`~ptychoflow.pvnames.EDGE`
and says how to show it (a readback, an entry, a combo box...). The Phoebus
writer (:mod:`ptychoflow.screens.phoebus`) and the PyDM writer (:mod:`ptychoflow.screens.pydmui`)
turn the same description into their own XML, so both screens carry the same
PVs, the same descriptions (tooltips) and units, and a PV renamed in
``pvnames`` either renames the widget or fails the generation.

The files live in ``op/``; ``python -m ptychoflow.screens [FOLDER]`` rewrites
them, and a unit test fails when a committed file differs from what this
module writes. PV names use the ``P`` macro (``$(P)`` in Phoebus, ``${P}`` in
PyDM), as areaDetector screens do; control PVs go over Channel Access, edge PVs
over pvAccess (``pva://``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ptychoflow.pvnames import CONTROL, EDGE, PVSpec, by_suffix

Kind = Literal["readback", "text", "entry", "combo", "button", "toggle", "led", "progress",
               "image"]
Protocol = Literal["ca", "pva"]


@dataclass(frozen=True)
class Row:
    """One PV on a screen: the widget kind, its label and (for buttons) the value written."""

    suffix: str
    kind: Kind
    label: str = ""
    value: str = "1"  # what a button writes


@dataclass(frozen=True)
class Section:
    """A titled group of rows; ``column`` places it on the screen (sections stack per column)."""

    title: str
    rows: tuple[Row, ...]
    column: int = 0


@dataclass(frozen=True)
class Screen:
    """A whole screen: its file stem, window title, PV table and the protocol of its PVs."""

    stem: str
    title: str
    table: tuple[PVSpec, ...]
    protocol: Protocol
    sections: tuple[Section, ...]
    images: tuple[Row, ...] = ()
    link: str = ""  # stem of a related screen, opened by a button

    def spec(self, row: Row) -> PVSpec:
        """The PV a row shows; an unknown suffix is a generation error, not a silent gap."""
        specs = by_suffix(self.table)
        if row.suffix not in specs:
            raise KeyError(f"screen {self.stem}: {row.suffix!r} is not in the PV table; "
                           f"rename it in ptychoflow/screens.py to match ptychoflow/pvnames.py")
        return specs[row.suffix]

    def label(self, row: Row) -> str:
        """The row's label: given, or the suffix's last part without ``_RBV``."""
        return row.label or row.suffix.split(":")[-1].removesuffix("_RBV")

    def rows(self) -> tuple[Row, ...]:
        """Every row of the screen, images first."""
        return self.images + tuple(r for s in self.sections for r in s.rows)


WORKFLOW = Screen(
    stem="ptychoflow_workflow",
    title="ptychoflow workflow $(P)",
    table=CONTROL,
    protocol="ca",
    link="ptychoflow_edge",
    sections=(
        Section("Run", (
            Row("Workflow:Start", "button", "Start"),
            Row("Workflow:Abort", "button", "Abort"),
            Row("Workflow:Auto", "toggle", "Auto"),
            Row("Scan:Path", "entry", "Scan file"),
        )),
        Section("Settings", (
            Row("Transfer:Backend", "combo", "Transfer"),
            Row("Compute:Backend", "combo", "Compute"),
            Row("Recon:Algorithm", "combo", "Algorithm"),
            Row("Recon:Epochs", "entry", "Recon epochs"),
            Row("Train:Epochs", "entry", "Train epochs"),
            Row("Train:ValFraction", "entry", "Val fraction"),
        )),
        Section("Status", (
            Row("Workflow:State_RBV", "readback", "State"),
            Row("Workflow:Busy_RBV", "led", "Busy"),
            Row("Workflow:Progress_RBV", "progress", "Progress"),
            Row("Workflow:Message_RBV", "text", "Message"),
            Row("Workflow:RunId_RBV", "readback", "Run id"),
            Row("Workflow:ActiveRuns_RBV", "readback", "Active runs"),
            Row("Workflow:QueuedScans_RBV", "readback", "Queued scans"),
            Row("Workflow:Report_RBV", "text", "Report"),
        ), column=1),
        Section("Stages", (
            Row("Transfer:Rate_RBV", "readback", "Transfer rate"),
            Row("Recon:Epoch_RBV", "readback", "Recon epoch"),
            Row("Recon:Error_RBV", "readback", "Recon error"),
            Row("Train:Epoch_RBV", "readback", "Train epoch"),
            Row("Train:Loss_RBV", "readback", "Train loss"),
            Row("Train:ValLoss_RBV", "readback", "Val loss"),
            Row("Train:BestValLoss_RBV", "readback", "Best val loss"),
        ), column=1),
        Section("Model", (
            Row("Model:Version_RBV", "readback", "Newest version"),
            Row("Model:Deployed_RBV", "readback", "Deployed"),
            Row("Model:Deploy", "entry", "Deploy version"),
            Row("Model:Quality_RBV", "readback", "Quality (SSIM)"),
            Row("Model:QualityTarget", "entry", "Quality target"),
            Row("Model:TargetMet_RBV", "led", "Target met"),
        )),
    ),
)

EDGE_SCREEN = Screen(
    stem="ptychoflow_edge",
    title="ptychoflow edge $(P)",
    table=EDGE,
    protocol="pva",
    images=(Row("Edge:Phase", "image", "Phase (latest frame)"),
            Row("Edge:Stitched", "image", "Stitched phase map")),
    sections=(
        Section("Throughput", (
            Row("Edge:FrameRate_RBV", "readback", "Frame rate"),
            Row("Edge:Latency_RBV", "readback", "Latency"),
            Row("Edge:Processed_RBV", "readback", "Processed"),
            Row("Edge:Dropped_RBV", "readback", "Dropped"),
            Row("Edge:BadFrames_RBV", "readback", "Bad frames"),
        )),
        Section("Control", (
            Row("Edge:Enable", "toggle", "Enable"),
            Row("Edge:Stitched:Reset", "button", "New map"),
            Row("Edge:Model:Version_RBV", "readback", "Model version"),
            Row("Edge:Model:Load", "entry", "Load model"),
            Row("Edge:Input", "entry", "Input PV"),
            Row("Edge:Message_RBV", "text", "Message"),
        ), column=1),
    ),
)

SCREENS: tuple[Screen, ...] = (WORKFLOW, EDGE_SCREEN)


def pv_name(screen: Screen, row: Row, macro: str, name_ca: bool = False) -> str:
    """The PV name a widget uses: the macro, the suffix, ``pva://`` on pvAccess screens.

    ``macro`` is how the target spells the prefix (``$(P)`` or ``${P}``); PyDM
    names every plugin (``name_ca``: ``ca://``), Phoebus uses its default (CA)
    for bare names.
    """
    name = macro + screen.spec(row).suffix
    if screen.protocol == "pva":
        return "pva://" + name
    return "ca://" + name if name_ca else name


def is_string(spec: PVSpec) -> bool:
    """Long strings (char waveforms over CA) and string scalars show as text."""
    return spec.record in ("lso", "lsi", "NTScalar:s")


MACRO_PV = re.compile(r"^(?:(ca|pva)://)?(?:\$\(P\)|\$\{P\})(.+)$")


def split_pv(name: str) -> tuple[str, str]:
    """``pva://$(P)Edge:Phase`` -> (``pva``, ``Edge:Phase``); a bare name is CA."""
    m = MACRO_PV.match(name.strip())
    if not m:
        raise ValueError(f"{name!r} does not start with the $(P) or ${{P}} prefix macro")
    return m.group(1) or "ca", m.group(2)
