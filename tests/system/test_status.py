"""``ptychoflow status`` against a real control IOC and a real edge, run as a script runs it.

The IOC and the edge each serve on their own isolated loopback ports, under the one
prefix of a beamline (so the edge prefix defaults to the IOC's); the status client finds
both through ``EPICS_PVA_NAME_SERVERS`` listing both, and runs without a terminal.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.pvnames import CONTROL, EDGE, by_suffix
from tests.conftest import ServerProcess, wait_for_pva

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

C, E = by_suffix(CONTROL), by_suffix(EDGE)
PVA_PORT = "EPICS_PVA_SERVER_PORT"


class Site:
    """One IOC (for the module) and the environments of the edge and of the status client."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = random_prefix("PFS")
        self.ioc_env, self.edge_env, self.client_env = (isolated_env() for _ in range(3))
        self.client_env["EPICS_PVA_NAME_SERVERS"] = " ".join(
            f"127.0.0.1:{env[PVA_PORT]}" for env in (self.ioc_env, self.edge_env))
        data = root / "data"
        data.mkdir()
        self.ioc = ServerProcess(
            [sys.executable, "-m", "ptychoflow.cli", "ioc", "--prefix", self.prefix,
             "--data-root", str(data), "--work-root", str(root / "work")],
            self.ioc_env, root / "ioc.log")
        wait_for_pva(self.ioc_env, C["Workflow:State_RBV"].name(self.prefix), timeout=60,
                     server=self.ioc)

    def put(self, suffix: str, value: object) -> None:
        from p4p.client.thread import Context

        with Context("pva", conf=pva_conf(self.ioc_env), useenv=False) as ctx:
            ctx.put(C[suffix].name(self.prefix), value)

    def start_edge(self, name: str) -> ServerProcess:
        models = self.root / "models"
        models.mkdir(exist_ok=True)
        edge = ServerProcess(
            [sys.executable, "-m", "ptychoflow.cli", "edge", "--prefix", self.prefix,
             "--model-dir", str(models), "--threads", "1"], self.edge_env,
            self.root / f"{name}.log")
        wait_for_pva(self.edge_env, E["Edge:FrameRate_RBV"].name(self.prefix), timeout=60,
                     server=edge)
        return edge

    def status_once(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ptychoflow.cli", "status", "--once", "--prefix",
             self.prefix], env=self.client_env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("status"))
    yield s
    assert s.ioc.stop() == 0, s.ioc.log()


@pytest.fixture
def edge(site: Site, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    e = site.start_edge(request.node.name[:40])
    yield e
    e.stop()


def part(out: str, title: str) -> str:
    """The lines of one panel and below it, from its title on."""
    return out[out.index(title):]


def line(out: str, label: str) -> str:
    return next(x for x in out.splitlines() if label in x)


def test_once_shows_the_workflow_a_setting_just_put_and_the_edge(site: Site,
                                                                 edge: ServerProcess) -> None:
    site.put("Recon:Epochs", 123)
    r = site.status_once()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "disconnected" not in out, out
    assert re.search(r"State\s+Idle\b", out), out
    assert re.search(r"Recon epochs\s+123\b", line(out, "Recon epochs")), out
    assert re.search(r"Algorithm\s+rPIE\b", out) and re.search(r"Auto\s+Off\b", out), out
    edge_part = part(out, f"Edge  {site.prefix}")
    assert re.search(r"Frame rate\s+0\.000 Hz", edge_part), out  # no input: no frames
    assert re.search(r"Processed\s+0\b", edge_part), out
    assert re.search(r"Model version\s+none\b", edge_part), out
    assert max(len(x) for x in out.splitlines()) <= 100  # a fixed width without a terminal


def test_with_the_edge_stopped_the_edge_part_says_disconnected_and_the_ioc_part_shows(
        site: Site, edge: ServerProcess) -> None:
    site.put("Recon:Epochs", 321)
    assert edge.stop() == 0, edge.log()
    r = site.status_once()
    assert r.returncode == 0, r.stderr  # the IOC answered
    out = r.stdout
    ioc_part, edge_part = out[:out.index(f"Edge  {site.prefix}")], part(out, "Edge  ")
    assert "disconnected" not in ioc_part, out
    assert re.search(r"State\s+Idle\b", ioc_part) and "321" in line(ioc_part, "Recon epochs")
    words = re.sub(r"[\s│]+", " ", edge_part)  # the panel's text, unwrapped
    assert f"disconnected: {E['Edge:FrameRate_RBV'].name(site.prefix)} does not answer" in words
    assert "Hz" not in edge_part, out
    assert "Connection refused" not in r.stderr  # the view says it, once, in its place


def test_without_a_terminal_it_prints_a_frame_per_change_and_ctrl_c_exits_0(
        site: Site, tmp_path: Path) -> None:
    log = tmp_path / "status.out"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptychoflow.cli", "status", "--prefix", site.prefix],
            env=site.client_env, stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while "State" not in log.read_text() or "Idle" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            site.put("Train:Epochs", 77)
            while not re.search(r"Train epochs\s+77\b", log.read_text()):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_in_a_terminal_it_redraws_in_place_and_ctrl_c_exits_0(site: Site) -> None:
    import os
    import pty
    import select

    env = site.client_env | {"COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: ptychoflow status on the pty, as over ssh -t
        os.execve(sys.executable, [sys.executable, "-m", "ptychoflow.cli", "status",
                                   "--prefix", site.prefix], env)
    seen = b""
    exit_code: int | None = None

    def read(until: float) -> None:
        nonlocal seen
        while time.monotonic() < until and select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the pty
                return

    try:
        deadline = time.monotonic() + 30
        while seen.count(b"Idle") < 2 and time.monotonic() < deadline:  # two frames at least
            read(deadline)
        assert seen.count(b"Idle") >= 2, seen.decode(errors="replace")
        assert b"\x1b[1A" in seen  # cursor up: the next frame is drawn over the last
        os.kill(pid, signal.SIGINT)
        until = time.monotonic() + 10
        while exit_code is None and time.monotonic() < until:
            read(time.monotonic() + 0.2)
            done, status = os.waitpid(pid, os.WNOHANG)
            exit_code = os.waitstatus_to_exitcode(status) if done else None
        assert exit_code == 0, seen.decode(errors="replace")
    finally:
        if exit_code is None:  # still ours: not reaped yet
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
