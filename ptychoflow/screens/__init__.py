"""Operator screens, generated from the PV tables: Phoebus ``.bob`` and PyDM ``.ui``.

A screen is described once, here, as sections of rows; each row names a PV of
:data:`ptychoflow.pvnames.CONTROL` or :data:`~ptychoflow.pvnames.EDGE` by its
attribute there and says how to show it (a readback, an entry, a combo box...). The Phoebus
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
    """One PV on a screen: the widget kind, its label and (for buttons) the value written.

    ``pv`` is the PV from the screen's table, or a suffix (checked against the table
    when the screen is written).
    """

    pv: PVSpec | str
    kind: Kind
    label: str = ""
    value: str = "1"  # what a button writes
    width: PVSpec | str | None = None
    """An image sent as a flat waveform (areaDetector's NDStdArrays over CA) carries no
    shape: the toolkits reshape it by these PVs; an NTNDArray image (PVA) needs none."""
    height: PVSpec | str | None = None

    @property
    def suffix(self) -> str:
        """The PV's suffix, which also names the widget."""
        return self.pv if isinstance(self.pv, str) else self.pv.suffix


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
        """The PV a row shows; a PV not in the table is a generation error, not a silent gap."""
        specs = by_suffix(self.table)
        if row.suffix not in specs:
            raise KeyError(f"screen {self.stem}: {row.suffix!r} is not in the PV table; "
                           "rename it in ptychoflow/screens/__init__.py to match "
                           "ptychoflow/pvnames.py")
        return specs[row.suffix]

    def label(self, row: Row) -> str:
        """The row's label: given, or the suffix's last part without ``_RBV``."""
        return row.label or row.suffix.split(":")[-1].removesuffix("_RBV")

    def size_rows(self, row: Row) -> tuple[Row, Row] | None:
        """The width and height PVs of a waveform image as rows (``None``: an NTNDArray)."""
        if row.width is None or row.height is None:
            return None
        return Row(row.width, "readback"), Row(row.height, "readback")

    def rows(self) -> tuple[Row, ...]:
        """Every row of the screen, images first."""
        return self.images + tuple(r for s in self.sections for r in s.rows)


WORKFLOW = Screen(
    stem="ptychoflow_workflow",
    title="ptychoflow workflow $(P)",
    table=CONTROL,
    protocol="ca",
    link="ptychoflow_edge",
    # streaming rPIE's current phase while the detector is still acquiring
    images=(Row(CONTROL.recon_phase_array_data, "image", "Live phase (rPIE while acquiring)",
                width=CONTROL.recon_phase_array_size0, height=CONTROL.recon_phase_array_size1),),
    sections=(
        Section("Run", (
            Row(CONTROL.workflow_start, "button", "Start"),
            Row(CONTROL.workflow_abort, "button", "Abort"),
            Row(CONTROL.workflow_auto, "toggle", "Auto"),
            Row(CONTROL.scan_path, "entry", "Scan file"),
        )),
        Section("Settings", (
            Row(CONTROL.transfer_backend, "combo", "Transfer"),
            Row(CONTROL.compute_backend, "combo", "Compute"),
            Row(CONTROL.recon_algorithm, "combo", "Algorithm"),
            Row(CONTROL.recon_epochs, "entry", "Recon epochs"),
            Row(CONTROL.recon_streaming, "toggle", "Recon while acquiring"),
            Row(CONTROL.train_epochs, "entry", "Train epochs"),
            Row(CONTROL.train_val_fraction, "entry", "Val fraction"),
        )),
        Section("Status", (
            Row(CONTROL.workflow_state, "readback", "State"),
            Row(CONTROL.workflow_busy, "led", "Busy"),
            Row(CONTROL.workflow_progress, "progress", "Progress"),
            Row(CONTROL.workflow_message, "text", "Message"),
            Row(CONTROL.workflow_run_id, "readback", "Run id"),
            Row(CONTROL.workflow_active_runs, "readback", "Active runs"),
            Row(CONTROL.workflow_queued_scans, "readback", "Queued scans"),
            Row(CONTROL.workflow_report, "text", "Report"),
        ), column=1),
        Section("Stages", (
            Row(CONTROL.transfer_rate, "readback", "Transfer rate"),
            Row(CONTROL.recon_epoch, "readback", "Recon epoch"),
            Row(CONTROL.recon_error, "readback", "Recon error"),
            Row(CONTROL.recon_phase_unique_id, "readback", "Live images"),
            Row(CONTROL.recon_phase_array_size0, "readback", "Live width"),
            Row(CONTROL.recon_phase_array_size1, "readback", "Live height"),
            Row(CONTROL.train_epoch, "readback", "Train epoch"),
            Row(CONTROL.train_loss, "readback", "Train loss"),
            Row(CONTROL.train_val_loss, "readback", "Val loss"),
            Row(CONTROL.train_best_val_loss, "readback", "Best val loss"),
        ), column=1),
        Section("Model", (
            Row(CONTROL.model_version, "readback", "Newest version"),
            Row(CONTROL.model_deployed, "readback", "Deployed"),
            Row(CONTROL.model_deploy, "entry", "Deploy version"),
            Row(CONTROL.model_quality, "readback", "Quality (SSIM)"),
            Row(CONTROL.model_quality_target, "entry", "Quality target"),
            Row(CONTROL.model_target_met, "led", "Target met"),
            Row(CONTROL.model_consistency_factor, "entry", "Retrain at misfit x"),
            Row(CONTROL.model_consistency_hold, "entry", "... held for (s)"),
        )),
    ),
)

EDGE_SCREEN = Screen(
    stem="ptychoflow_edge",
    title="ptychoflow edge $(P)",
    table=EDGE,
    protocol="pva",
    images=(Row(EDGE.phase, "image", "Phase (latest frame)"),
            Row(EDGE.stitched, "image", "Stitched phase map")),
    sections=(
        Section("Throughput", (
            Row(EDGE.frame_rate, "readback", "Frame rate"),
            Row(EDGE.latency, "readback", "Latency"),
            Row(EDGE.processed, "readback", "Processed"),
            Row(EDGE.missed, "readback", "Missed"),
            Row(EDGE.dropped, "readback", "Dropped"),
            Row(EDGE.bad_frames, "readback", "Bad frames"),
            Row(EDGE.unplaced, "readback", "Unplaced"),
            Row(EDGE.consistency, "readback", "Physics misfit"),
        )),
        Section("Control", (
            Row(EDGE.enable, "toggle", "Enable"),
            Row(EDGE.stitched_reset, "button", "New map"),
            Row(EDGE.model_version, "readback", "Model version"),
            Row(EDGE.model_load, "entry", "Load model"),
            Row(EDGE.input, "entry", "Input PV"),
            Row(EDGE.message, "text", "Message"),
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
