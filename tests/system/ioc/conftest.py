"""Fixtures for the control IOC's system tests.

All IOC tests share one isolated loopback environment for the session (set in
``os.environ`` too), because pyepics and ophyd read the EPICS variables once
per process when libca starts; every IOC still gets its own random prefix and
fresh data/work folders, and only one IOC of this package runs at a time.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ioc_helpers import toml_value

from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix

HERE = Path(__file__).resolve().parent
TEST_STAGES = {name: f"ioc_test_stages:{name}"
               for name in ("reconstruct", "train", "export")}


_SESSION: dict[str, Any] = {}


def _session_env() -> dict[str, str]:
    """One isolated environment for all IOC test modules of this session.

    pyepics (and so ophyd) reads the EPICS variables once, when libca starts, so
    every module must see the same ports; they are chosen once and libca is
    (re)started with them the first time.
    """
    if "env" not in _SESSION:
        env = isolated_env()
        # Hold the (unused) CA repeater port: libca in the IOC keeps sending repeater
        # registrations there, and a client's ephemeral UDP socket that happened to get the
        # same port number would read them as garbage (seen with caproto's sync client).
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", int(env["EPICS_CA_REPEATER_PORT"])))
        _SESSION.update(env=env, holder=holder, libca_ready=False)
    return dict(_SESSION["env"])


@pytest.fixture(scope="module")
def epics_env() -> Iterator[dict[str, str]]:
    """The session's isolated environment, also in ``os.environ`` while a module runs."""
    env = _session_env()
    saved = {k: os.environ.get(k) for k in env if k.startswith("EPICS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("EPICS_")})
    if not _SESSION["libca_ready"]:
        try:
            # ophyd's libca (epicscorelibs) must be chosen before epics.ca is first imported
            importlib.import_module("epicscorelibs.path.pyepics")
            import epics.ca

            if epics.ca.libca is not None:  # started earlier with other settings
                epics.ca.finalize_libca()
                epics.ca.initialize_libca()
        except ImportError:
            pass
        _SESSION["libca_ready"] = True
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v






@dataclass
class Ioc:
    prefix: str
    env: dict[str, str]
    data: Path
    work: Path
    config: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def pv(self, suffix: str) -> str:
        return self.prefix + suffix

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"IOC did not stop on SIGINT:\n{self.log()}") from None
        return int(self.proc.returncode)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class IocFactory:
    """Starts IOCs (each stopped at teardown) on the session's isolated ports."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env = env
        self.root = root
        self.started: list[Ioc] = []

    def start(self, *, prefix: str | None = None, data: Path | None = None,
              work: Path | None = None, stages: dict[str, str] | None = None,
              extra_env: dict[str, str] | None = None, wait: bool = True,
              tables: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Ioc:
        n = len(self.started)
        prefix = prefix or random_prefix()
        data = data or self.root / "data"
        work = work or self.root / "work"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / f"ioc-{n}.toml"
        table = {"data_root": str(data), "work_root": str(work), "poll_s": 0.2,
                 "abort_grace_s": 2.0, **settings}
        lines = ["[ioc]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines += ["", "[ioc.stages]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in {**TEST_STAGES, **(stages or {})}.items()]
        for section, table in (tables or {}).items():  # e.g. "compute.parsl": {...}
            lines += ["", f"[{section}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
        config.write_text("\n".join(lines) + "\n")
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
        env.update(extra_env or {})
        log_path = self.root / f"ioc-{n}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ptychoflow.cli", "ioc", "--config", str(config),
                 "--prefix", prefix], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=str(self.root))
        ioc = Ioc(prefix, env, data, work, config, proc, log_path)
        self.started.append(ioc)
        if wait:
            wait_ready(ioc)
        return ioc

    def stop_all(self) -> None:
        for ioc in self.started:
            if ioc.proc.poll() is None:
                ioc.stop()


def wait_ready(ioc: Ioc, timeout: float = 60.0) -> None:
    from p4p.client.thread import Context, TimeoutError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ioc.proc.poll() is not None:
            pytest.fail(f"IOC exited early:\n{ioc.log()}")
        # a fresh client per try: a refused name-server connection makes an old one back off
        with Context("pva", conf=pva_conf(ioc.env), useenv=False) as ctx:
            try:
                ctx.get(ioc.pv("Workflow:State_RBV"), timeout=0.5)
                return
            except TimeoutError:
                time.sleep(0.2)
    pytest.fail(f"IOC did not answer within {timeout} s:\n{ioc.log()}")


@pytest.fixture
def iocs(epics_env: dict[str, str], tmp_path: Path) -> Iterator[IocFactory]:
    f = IocFactory(epics_env, tmp_path)
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def shared_ioc(epics_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ioc]:
    """One IOC for a whole module of tests that do not need a fresh one."""
    f = IocFactory(epics_env, tmp_path_factory.mktemp("ioc"))
    ioc = f.start()
    yield ioc
    assert ioc.stop() == 0, ioc.log()


@pytest.fixture
def pva(epics_env: dict[str, str]) -> Iterator[Any]:
    from p4p.client.thread import Context

    ctx = Context("pva", conf=pva_conf(epics_env), useenv=False)
    yield ctx
    ctx.close()

