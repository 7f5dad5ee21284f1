"""The tree keeps the shape DESIGN.md gives it: edge wings, small modules, one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ("ptychoflow", "ioc", "edge", "remote", "benchmarks")
MAX_LINES = 400

# the one import across edge/ and remote/: the benchmark times the network remote/ trains
BASELINE = "edge/bench/baseline.py"


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_edge_and_remote_do_not_import_each_other() -> None:
    crossings = []
    for side, other in (("edge", "ptychoflow.remote"), ("remote", "ptychoflow.edge")):
        for path in _modules(side):
            rel = path.relative_to(ROOT).as_posix()
            if rel == BASELINE:
                continue
            crossings += [f"{rel} imports {m}" for m in _imports(path)
                          if m == other or m.startswith(other + ".")]
    assert crossings == []


def test_the_baseline_is_the_only_crossing_and_it_does_cross() -> None:
    # guards the exception above from outliving its reason
    assert any(m.startswith("ptychoflow.remote") for m in _imports(ROOT / BASELINE))


def test_the_edge_has_at_most_a_dozen_entries_each_a_documented_wing() -> None:
    entries = sorted(p.name for p in (ROOT / "edge").iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries
    for wing in ("input", "infer", "output", "lanes", "bench"):
        init = ROOT / "edge" / wing / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"edge/{wing}/__init__.py says what lives where"


def test_no_module_is_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _modules(*CODE)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == []
