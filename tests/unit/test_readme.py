"""The README a user reads: its PV tables are the PV interface, and it stays short."""

from __future__ import annotations

from pathlib import Path

from ptychoflow.pvnames import CONTROL, DETECTOR, EDGE, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_pv_tables_are_generated_from_the_pv_table():
    text = README.read_text()
    for table in (CONTROL, EDGE, DETECTOR):
        assert markdown_table(table) in text, (
            "a README PV table drifted from ptychoflow/pvnames.py; paste "
            "ptychoflow.pvnames.markdown_table(...) output")


def test_the_readme_stays_under_300_lines_and_its_doc_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    for part in text.split("](docs/")[1:]:
        target = part.split(")")[0].split("#")[0]
        assert (README.parent / "docs" / target).is_file(), target
