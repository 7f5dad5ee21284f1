"""The README a user reads: its PV tables are the PV interface, and it stays short."""

from __future__ import annotations

from pathlib import Path

from ptychoflow.pvnames import CONTROL, DETECTOR, EDGE, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def _pv_tables(text: str) -> list[str]:
    """Every table of the README that starts with the PV tables' header row, as text."""
    header = markdown_table(()).splitlines()[0]
    tables: list[list[str]] = []
    rows: list[str] | None = None
    for line in text.splitlines():
        if line == header:
            rows = [line]
            tables.append(rows)
        elif rows is not None and line.startswith("|"):
            rows.append(line)
        else:
            rows = None
    return ["\n".join(t) for t in tables]


def test_the_readme_pv_tables_are_the_generated_tables_exactly():
    assert _pv_tables(README.read_text()) == [
        markdown_table(table) for table in (CONTROL, EDGE, DETECTOR)], (
        "a README PV table drifted from ptychoflow/pvnames.py; paste "
        "ptychoflow.pvnames.markdown_table(CONTROL), (EDGE) and (DETECTOR) in their place")


def test_the_readme_stays_under_300_lines_and_its_doc_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    for part in text.split("](docs/")[1:]:
        target = part.split(")")[0].split("#")[0]
        assert (README.parent / "docs" / target).is_file(), target
