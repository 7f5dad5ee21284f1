"""op/ holds exactly the generated screens, and every PV a screen names is in the PV interface."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ptychoflow.pvnames import CONTROL, EDGE, by_suffix
from ptychoflow.screens import SCREENS, WORKFLOW, Row, Section, split_pv
from ptychoflow.screens.files import generated
from ptychoflow.screens.phoebus import bob_text
from ptychoflow.screens.pydmui import CUSTOM, ui_text

OP = Path(__file__).resolve().parents[2] / "op"
PREFIX = "TST1:"
TABLES = {"ca": by_suffix(CONTROL), "pva": by_suffix(EDGE)}


def expand(name: str, prefix: str = PREFIX) -> str:
    """Expand the prefix macro as Phoebus ($(P)) and PyDM (${P}) do."""
    return name.replace("$(P)", prefix).replace("${P}", prefix)


def bob_pvs(path: Path) -> list[str]:
    """Every PV name of a .bob file (an action's $(pv_name) is its widget's own PV)."""
    root = ET.parse(path).getroot()
    return [el.text or "" for el in root.iter("pv_name") if el.text != "$(pv_name)"]


def ui_pvs(path: Path) -> list[str]:
    """Every channel of a .ui file (channel, imageChannel, widthChannel properties)."""
    root = ET.parse(path).getroot()
    return [p.findtext("string") or "" for p in root.iter("property")
            if p.get("name") in ("channel", "imageChannel", "widthChannel")]


def screen_files() -> list[Path]:
    return sorted(OP.glob("*.bob")) + sorted(OP.glob("*.ui"))


def test_op_files_are_generated_from_pvnames() -> None:
    files = generated()
    assert sorted(files) == sorted(p.name for p in screen_files())
    for name, text in files.items():
        assert (OP / name).read_text() == text, (
            f"op/{name} is stale: python -m ptychoflow.screens op")


@pytest.mark.parametrize("path", screen_files(), ids=lambda p: p.name)
def test_every_pv_on_a_screen_exists_in_the_pv_interface(path: Path) -> None:
    names = bob_pvs(path) if path.suffix == ".bob" else ui_pvs(path)
    assert len(names) >= 10
    for name in names:
        protocol, suffix = split_pv(name)
        full = expand(name).removeprefix(f"{protocol}://")
        assert full == PREFIX + suffix, name
        assert suffix in TABLES[protocol], (
            f"{path.name} names {name}, which is not a {protocol} PV of the interface")


def test_workflow_screens_carry_the_operator_pvs() -> None:
    wanted = {"Workflow:Start", "Workflow:Abort", "Workflow:Auto", "Scan:Path",
              "Transfer:Backend", "Compute:Backend", "Recon:Algorithm", "Recon:Epochs",
              "Train:Epochs", "Train:ValFraction", "Workflow:State_RBV", "Workflow:Busy_RBV",
              "Workflow:Progress_RBV", "Workflow:Message_RBV", "Workflow:RunId_RBV",
              "Workflow:ActiveRuns_RBV", "Workflow:QueuedScans_RBV", "Model:Version_RBV",
              "Model:Deployed_RBV", "Model:Quality_RBV", "Model:QualityTarget",
              "Model:TargetMet_RBV", "Model:Deploy", "Recon:Streaming", "Recon:Phase:ArrayData",
              "Recon:Phase:ArraySize0_RBV", "Recon:Phase:ArraySize1_RBV",
              "Recon:Phase:UniqueId_RBV"}
    bob = {split_pv(n) for n in bob_pvs(OP / "ptychoflow_workflow.bob")}
    ui = {split_pv(n) for n in ui_pvs(OP / "ptychoflow_workflow.ui")}
    assert {("ca", s) for s in wanted} <= bob
    assert bob == ui  # both toolkits show the same PVs


def test_edge_screens_show_the_images_over_pva() -> None:
    wanted = {"Edge:Phase", "Edge:Stitched", "Edge:FrameRate_RBV", "Edge:Latency_RBV",
              "Edge:Processed_RBV", "Edge:Dropped_RBV", "Edge:BadFrames_RBV",
              "Edge:Model:Version_RBV", "Edge:Message_RBV", "Edge:Model:Load", "Edge:Enable",
              "Edge:Stitched:Reset"}
    bob = ET.parse(OP / "ptychoflow_edge.bob").getroot()
    images = [w.findtext("pv_name") for w in bob.iter("widget") if w.get("type") == "image"]
    assert images == ["pva://$(P)Edge:Phase", "pva://$(P)Edge:Stitched"]
    ui = ET.parse(OP / "ptychoflow_edge.ui").getroot()
    views = [w for w in ui.iter("widget") if w.get("class") == "PyDMImageView"]
    assert [v.findtext("property[@name='imageChannel']/string") for v in views] == [
        "pva://${P}Edge:Phase", "pva://${P}Edge:Stitched"]
    # NTNDArray dimensions come [x, y]: PyDM must not read them as [height, width]
    assert all(v.findtext("property[@name='dimensionOrder']/enum")
               == "PyDMImageView::WidthFirst" for v in views)
    names = {split_pv(n) for n in bob_pvs(OP / "ptychoflow_edge.bob")}
    assert {("pva", s) for s in wanted} <= names
    assert names == {split_pv(n) for n in ui_pvs(OP / "ptychoflow_edge.ui")}


def test_workflow_screens_show_the_live_phase_waveform_in_its_own_shape() -> None:
    """Recon:Phase is a flat CA waveform (NDStdArrays): each toolkit must be told its shape."""
    bob = ET.parse(OP / "ptychoflow_workflow.bob").getroot()
    (image,) = [w for w in bob.iter("widget") if w.get("type") == "image"]
    assert image.findtext("pv_name") == "$(P)Recon:Phase:ArrayData"  # bare: Channel Access
    # Phoebus draws a number array as data_width x data_height: rules take them from the PVs
    rules = {r.get("prop_id"): (r.get("out_exp"), r.findtext("exp/expression"),
                                r.findtext("pv_name")) for r in image.iter("rule")}
    assert rules == {"data_width": ("true", "pv0", "$(P)Recon:Phase:ArraySize0_RBV"),
                     "data_height": ("true", "pv0", "$(P)Recon:Phase:ArraySize1_RBV")}
    ui = ET.parse(OP / "ptychoflow_workflow.ui").getroot()
    (view,) = [w for w in ui.iter("widget") if w.get("class") == "PyDMImageView"]
    assert view.findtext("property[@name='imageChannel']/string") == \
        "ca://${P}Recon:Phase:ArrayData"
    assert view.findtext("property[@name='widthChannel']/string") == \
        "ca://${P}Recon:Phase:ArraySize0_RBV"
    # the waveform is row after row (C order); PyDM's default reading order (Fortran) would
    # show it transposed, and WidthFirst (for NTNDArrays) fails on a flat array
    assert view.findtext("property[@name='readingOrder']/enum") == "PyDMImageView::Clike"
    assert view.find("property[@name='dimensionOrder']") is None
    # the operator turns streaming on and off from the same screen
    toggle = next(w for w in bob.iter("widget") if w.findtext("name") == "Recon_Streaming")
    assert toggle.get("type") == "bool_button" and toggle.findtext("on_label") == "On"
    box = next(w for w in ui.iter("widget") if w.get("name") == "Recon_Streaming")
    assert box.get("class") == "PyDMCheckbox"
    assert box.findtext("property[@name='channel']/string") == "ca://${P}Recon:Streaming"


def test_long_strings_are_shown_and_written_as_text() -> None:
    bob = ET.parse(OP / "ptychoflow_workflow.bob").getroot()
    by_name = {w.findtext("name"): w for w in bob.iter("widget")}
    assert by_name["Scan_Path"].get("type") == "textentry"
    assert by_name["Scan_Path"].findtext("format") == "6"  # STRING, not a number array
    assert by_name["Workflow_Message_RBV"].findtext("format") == "6"
    ui = ET.parse(OP / "ptychoflow_workflow.ui").getroot()
    path = next(w for w in ui.iter("widget") if w.get("name") == "Scan_Path")
    assert path.findtext("property[@name='displayFormat']/enum") == "PyDMLineEdit::String"


def test_ui_files_declare_every_pydm_widget_they_use() -> None:
    for path in OP.glob("*.ui"):
        root = ET.parse(path).getroot()
        used = {w.get("class") for w in root.iter("widget")} & set(CUSTOM)
        declared = {c.findtext("class"): c.findtext("header")
                    for c in root.iter("customwidget")}
        assert used and set(declared) == used, path.name
        assert all(h and h.startswith("pydm.widgets.") for h in declared.values())


def test_a_pv_missing_from_the_table_fails_the_generation() -> None:
    renamed = dataclasses.replace(WORKFLOW, sections=(
        Section("Run", (Row("Workflow:Go", "button", "Start"),)),))
    with pytest.raises(KeyError, match="Workflow:Go.*not in the PV table"):
        bob_text(renamed)
    with pytest.raises(KeyError, match="Workflow:Go"):
        ui_text(renamed)


def test_screens_are_written_by_the_module(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ptychoflow.screens", str(tmp_path)],
                       capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(generated())
    assert len(r.stdout.splitlines()) == 2 * len(SCREENS)


def test_gui_help_works_without_pydm() -> None:
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('pydm', 'qtpy', 'PyQt5'):\n"
            "            raise ModuleNotFoundError(name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from ptychoflow.cli import main\n"
            "try:\n"
            "    main(['gui', '--help'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--screen" in r.stdout and "--prefix" in r.stdout


def test_gui_opens_both_screens_headless_and_saves_screenshots(tmp_path: Path) -> None:
    pytest.importorskip("pydm")
    from ptychoflow.epicsenv import isolated_env  # no server: nothing on these ports answers

    env = isolated_env()
    env["QT_QPA_PLATFORM"] = "offscreen"
    r = subprocess.run([sys.executable, "-m", "ptychoflow.cli", "gui", "--prefix", PREFIX,
                        "--screenshot", str(tmp_path), "--screenshot-after", "0.5"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["edge.png", "workflow.png"]


def test_gui_generates_the_screens_where_op_is_not_installed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import tempfile

    from ptychoflow import gui

    monkeypatch.setattr(gui, "REPO_OP", tmp_path / "site-packages" / "op")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = gui.screen_folder()
    assert folder.parent == tmp_path
    assert {p.name: p.read_text() for p in folder.iterdir()} == generated()
    assert gui.screen_folder(str(OP)) == OP
