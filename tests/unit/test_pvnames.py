"""The PV table is the one place a PV suffix is spelled; everything else names it.

A suffix typed out as a string elsewhere is a copy that a rename of the table
silently leaves behind (a screen, a message, a plan keeps the old name and works
until the day it doesn't), so the package's code is scanned for such copies.
Tests are not scanned: they are clients and spell PV names on purpose, as
``caget`` would.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptychoflow import pvnames
from ptychoflow.pvnames import CONTROL, DETECTOR, EDGE, PVSpec, attr_name

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("ptychoflow", "ioc", "remote", "edge", "benchmarks")
TABLE_MODULE = "ptychoflow/pvnames.py"
# Folders still being converted to the table's attributes by their own change; this
# tuple only shrinks, and is empty once every folder names its PVs through the table.
NOT_YET: tuple[str, ...] = ()

SUFFIXES = sorted((s.suffix for t in (CONTROL, EDGE, DETECTOR) for s in t), key=len, reverse=True)
# A suffix as a whole PV-name token: ':' followed by a name character is part of a name
# (``Edge:Stitched`` is not found inside ``Edge:Stitched:Reset``), a prefix before it is
# allowed (``PTYCHO:Edge:Phase``, ``%sEdge:Phase``), and a ':' ending a phrase is punctuation.
PV_TOKEN = re.compile(r"(?:(?<!\w)|(?<=%s))(" + "|".join(map(re.escape, SUFFIXES))
                      + r")(?!\w|:\w)")


def _docstrings(tree: ast.AST) -> set[int]:
    """Ids of the string constants that are statements of their own: docstrings and prose."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def spelled_pv_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, PV suffix) of every string literal in ``path`` that names a PV of the table.

    The constant parts of f-strings are string constants too, so ``f"{p}Workflow:Start"``
    is found.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in prose):
            for match in PV_TOKEN.finditer(node.value):
                yield node.lineno, match.group(1)


def scanned_files() -> Iterator[Path]:
    """The Python files of the package's code, less the table and the folders not yet done."""
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != TABLE_MODULE and not rel.startswith(NOT_YET):
                yield path


def spelled_everywhere() -> list[str]:
    """``file:line: suffix`` for every PV name spelled outside the table."""
    return [f"{path.relative_to(ROOT)}:{line}: {suffix}"
            for path in scanned_files() for line, suffix in sorted(spelled_pv_names(path))]


def test_no_code_spells_a_pv_name_outside_the_table():
    found = spelled_everywhere()
    assert found == [], (
        "PV names spelled as strings; name them through ptychoflow.pvnames "
        "(e.g. CONTROL.scan_path.suffix or CONTROL.scan_path.name(prefix)):\n"
        + "\n".join(found))


@pytest.mark.parametrize("text", [
    'x = "Workflow:Start"', 'x = f"{p}Workflow:Start"', 'x = "PTYCHO:Edge:Phase"',
    'x = f"put a model path to Edge:Model:Load"', 'x = "$(P)cam1:Acquire"',
    'x = "Scan:Path: /x is outside the data root"', 'log.info("serving %sPva1:Image", p)',
])
def test_the_scan_finds_a_pv_name_in_code(tmp_path: Path, text: str):
    (tmp_path / "m.py").write_text(text + "\n")
    assert len(list(spelled_pv_names(tmp_path / "m.py"))) == 1


@pytest.mark.parametrize("text", [
    '"""Start with Workflow:Start."""',  # a docstring: prose may name a PV
    'x = 1  # Workflow:Start',  # a comment
    'x = "Workflow:"',  # a group, not a PV
    'x = "Workflow:State"',  # not a suffix of the table
    'x = "Edge:Stitched:Resets"',
])
def test_the_scan_leaves_prose_and_other_names_alone(tmp_path: Path, text: str):
    (tmp_path / "m.py").write_text(text + "\n")
    assert list(spelled_pv_names(tmp_path / "m.py")) == []


def test_the_scan_tells_edge_stitched_from_edge_stitched_reset(tmp_path: Path):
    (tmp_path / "m.py").write_text('x = "Edge:Stitched:Reset"\ny = "Edge:Stitched"\n')
    assert list(spelled_pv_names(tmp_path / "m.py")) == [
        (1, "Edge:Stitched:Reset"), (2, "Edge:Stitched")]


@pytest.mark.parametrize(("table", "strip"), [(CONTROL, ""), (EDGE, "Edge:"), (DETECTOR, "")],
                         ids=["CONTROL", "EDGE", "DETECTOR"])
def test_each_pv_is_the_attribute_its_suffix_names(table: tuple[PVSpec, ...], strip: str):
    fields = type(table)._fields
    assert fields == tuple(attr_name(s.suffix, strip) for s in table)


@pytest.mark.parametrize(("suffix", "strip", "name"), [
    ("Workflow:Start", "", "workflow_start"),
    ("Workflow:State_RBV", "", "workflow_state"),
    ("Train:ValFraction", "", "train_val_fraction"),
    ("Workflow:RunId_RBV", "", "workflow_run_id"),
    ("Edge:Stitched:Reset", "Edge:", "stitched_reset"),
    ("Edge:Model:Version_RBV", "Edge:", "model_version"),
    ("cam1:AcquireRate", "", "cam1_acquire_rate"),
    ("HDF1:FullFileName_RBV", "", "hdf1_full_file_name"),
])
def test_the_attribute_rule(suffix: str, strip: str, name: str):
    assert attr_name(suffix, strip) == name


def test_the_tables_are_still_tuples_of_pvspec():
    for table in (CONTROL, EDGE, DETECTOR):
        assert isinstance(table, tuple)
        assert all(isinstance(s, PVSpec) for s in table)
    assert CONTROL[0] is CONTROL.workflow_start
    assert pvnames.by_suffix(EDGE)["Edge:Stitched:Reset"] is EDGE.stitched_reset
    assert DETECTOR.image(1) == DETECTOR.pva1_image
    assert DETECTOR.image(3).suffix == "Pva3:Image"
    assert len({s.suffix for t in (CONTROL, EDGE, DETECTOR) for s in t}) == (
        len(CONTROL) + len(EDGE) + len(DETECTOR))  # no suffix twice


if __name__ == "__main__":  # the list the test prints, for converting a folder
    print("\n".join(spelled_everywhere()))
