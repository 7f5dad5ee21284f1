"""The edge runs with ptychoflow[edge] alone: no module of it imports torch at load time."""

from __future__ import annotations

import subprocess
import sys


def test_edge_modules_do_not_import_torch() -> None:
    code = ("import sys, ptychoflow.edge.cli, ptychoflow.edge.service, ptychoflow.edge.bench, "
            "ptychoflow.edge.engines, ptychoflow.edge.swap, ptychoflow.edge.workers;"
            "ptychoflow.edge.cli.register(__import__('argparse').ArgumentParser());"
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
