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


class EdgeLoadPV:
    """The edge's ``Edge:Model:Load`` on its own isolated ports: records every load put.

    A real p4p server, like the edge's; the IOC under test finds it through a name
    server entry (``names``), as it would find an edge on another host.
    """

    def __init__(self, epics_env: dict[str, str], tag: str) -> None:
        import threading

        from p4p.nt import NTScalar
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        from ptychoflow.epicsenv import isolated_env, pva_conf
        from ptychoflow.pvnames import EDGE, by_suffix

        self.loads: list[str] = []
        self.got = threading.Event()
        self.prefix = "EDGE" + tag + ":"
        pv = SharedPV(nt=NTScalar("s"), initial="")

        @pv.put
        def _load(pv: Any, op: Any) -> None:
            self.loads.append(op.value().raw.value)
            pv.post(op.value())
            op.done()
            self.got.set()

        env = isolated_env()
        name = by_suffix(EDGE)["Edge:Model:Load"].name(self.prefix)
        self.server = Server(providers=[{name: pv}], conf=pva_conf(env), useenv=False)
        self.names = (epics_env["EPICS_PVA_NAME_SERVERS"]
                      + f" 127.0.0.1:{env['EPICS_PVA_SERVER_PORT']}")

    def close(self) -> None:
        self.server.stop()


def settled_without_partial_files(folder: Path, ioc: Any, timeout: float = 30.0) -> None:
    """Wait until no ``*.part`` is left under ``folder``: each ended run's report is written
    off the IOC's loop (a hidden .part, then renamed), so a run's end does not wait for it."""
    wait_for(lambda: not list(folder.rglob("*.part")), timeout, f"no partial file in {folder}",
             ioc)
