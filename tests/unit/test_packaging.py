"""The distribution maps ioc/, edge/ and remote/ onto ptychoflow.* in a real (non-editable) build,
and the edge runs where there is no torch and no pty-chi (a Jetson)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_the_three_places_under_ptychoflow(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ptychoflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("ptychoflow", "ptychoflow/sim", "ptychoflow/ioc", "ptychoflow/edge",
                "ptychoflow/remote"):
        assert f"{pkg}/__init__.py" in names, pkg
    assert not any(n.startswith(("ioc/", "edge/", "remote/", "tests/")) for n in names)
    assert "ptychoflow/edge/cli.py" in names and "ptychoflow/ioc/cli.py" in names


BLOCK = """
import importlib.abc, sys, pkgutil
BLOCKED = ('torch', 'ptychi', 'torchvision', 'onnx', 'softioc', 'parsl')
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED or name.startswith('ptychoflow.remote'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)
sys.meta_path.insert(0, Block())
import ptychoflow.edge
for m in pkgutil.walk_packages(ptychoflow.edge.__path__, 'ptychoflow.edge.'):
    __import__(m.name)
from ptychoflow.cli import main
for argv in (['edge', '--help'], ['bench', 'edge', '--help']):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
print('edge imports without torch')
"""


def test_edge_needs_no_torch_ptychi_or_onnx() -> None:
    """Every edge module, its wings and its benchmark included, and ``ptychoflow edge``, load
    with torch, pty-chi, onnx, the IOC's libraries and ``ptychoflow.remote`` all missing."""
    r = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "edge imports without torch" in r.stdout
