"""What a compute site runs: Python, ptychoflow, the science packages, the devices it sees.

:func:`site_report` has the stage contract of :mod:`ptychoflow.stages`, so any
compute back end runs it unchanged, the same way it runs reconstructions; the
IOC compares the answer with its own host before the first run on a back end.
"""

from __future__ import annotations

import importlib
import os
import platform
import socket
import sys
from typing import Any

from ptychoflow.stages import Reporter

PACKAGES = ("ptychoflow", "numpy", "h5py", "torch", "ptychi", "onnx", "onnxruntime")


def _version(name: str) -> str | None:
    try:
        mod = importlib.import_module(name)
    except Exception:  # not installed, or broken: either way not usable
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _devices() -> list[str]:
    try:
        import torch
    except Exception:
        return ["cpu"]
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} {torch.cuda.get_device_name(i)}"
                  for i in range(torch.cuda.device_count())]
    return found


def site_report(scan_path: str = "", workdir: str = "", params: dict[str, Any] | None = None,
                progress: Reporter | None = None) -> dict[str, Any]:
    """The Python, package versions, CPUs and devices of the host it runs on."""
    return {"host": socket.gethostname(), "python": platform.python_version(),
            "platform": f"{sys.platform}-{platform.machine()}", "cpus": os.cpu_count(),
            "packages": {name: _version(name) for name in PACKAGES}, "devices": _devices()}
