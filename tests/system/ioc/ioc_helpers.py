"""Helpers shared by the control IOC's system tests (scan files, waiting, TOML)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.scanfile import Scan, write_scan


def make_scan(path: Path, n: int = 6, size: int = 8, seed: int = 0) -> Path:
    """A small but valid scan file (written atomically through .h5.part)."""
    rng = np.random.default_rng(seed)
    scan = Scan(data=rng.integers(0, 100, (n, size, size)).astype(np.uint16),
                positions=rng.normal(0, 1e-7, (n, 2)), energy_ev=8800.0, distance_m=2.0,
                pixel_size_m=75e-6)
    return write_scan(path, scan)


def toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             ioc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{ioc.log()}" if ioc else ""))
