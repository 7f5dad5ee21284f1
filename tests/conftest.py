"""Shared fixtures: isolated EPICS environments and servers in subprocesses.

Every server under test runs in its own process (``iocInit`` and p4p servers
are once-per-process things), with a random prefix and loopback-only ports from
:func:`ptychoflow.epicsenv.isolated_env`; it is stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SIEMENS = SHARED_DATA / "siemens-star-small.npz.bz2"


@pytest.fixture
def epics_env() -> dict[str, str]:
    """Environment for one isolated server and its clients."""
    return isolated_env()


@pytest.fixture
def prefix() -> str:
    return random_prefix()


class ServerProcess:
    """A server subprocess with its log captured to a file, stopped by pid."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(log.parent))

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return int(self.proc.returncode)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def wait_for_pva(env: dict[str, str], pv: str, timeout: float = 30.0,
                 server: ServerProcess | None = None) -> None:
    """Block until ``pv`` answers a pvAccess get, or fail with the server's log."""
    from p4p.client.thread import Context, TimeoutError

    deadline = time.monotonic() + timeout
    with Context("pva", conf=pva_conf(env), useenv=False) as ctx:
        while time.monotonic() < deadline:
            if server is not None and not server.alive():
                pytest.fail(f"server exited early:\n{server.log()}")
            try:
                ctx.get(pv, timeout=1.0)
                return
            except TimeoutError:
                continue
    pytest.fail(f"{pv} did not answer within {timeout} s" +
                (f"\n{server.log()}" if server else ""))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``ptychoflow ARGS...`` in a subprocess; every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str], name: str = "server") -> ServerProcess:
        cmd = [sys.executable, "-m", "ptychoflow.cli", *args]
        sp = ServerProcess(cmd, env, tmp_path / f"{name}-{len(started)}.log")
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop()


@pytest.fixture
def pva_ctx(epics_env: dict[str, str]) -> Iterator[object]:
    """A p4p thread client that sees only this test's servers."""
    from p4p.client.thread import Context

    ctx = Context("pva", conf=pva_conf(epics_env), useenv=False)
    yield ctx
    ctx.close()
