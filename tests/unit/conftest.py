"""Fixtures of the unit tests that need one small real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import responses


@pytest.fixture
def edge(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The edge's Edge:Model:Load on isolated ports; this process's clients find it."""
    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    from ptychoflow.epicsenv import isolated_env, pva_conf

    env = isolated_env()
    for k, v in env.items():
        if k.startswith("EPICS_PVA"):
            monkeypatch.setenv(k, v)
    loads: list[str] = []
    pv = SharedPV(nt=NTScalar("s"), initial="")

    @pv.put
    def _load(pv: Any, op: Any) -> None:
        loads.append(op.value().raw.value)
        pv.post(op.value())
        op.done()

    with Server(providers=[{"EDGE1:Edge:Model:Load": pv}], conf=pva_conf(env), useenv=False):
        yield loads


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """Globus's services answered by ``responses`` (what a test registers), and none of this
    machine's Globus credentials in the environment."""
    from ptychoflow.ioc.globus_auth import (
        CLIENT_ID_ENV,
        CLIENT_SECRET_ENV,
        NATIVE_CLIENT_ID_ENV,
        TOKEN_DIR_ENV,
    )

    for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV, NATIVE_CLIENT_ID_ENV, TOKEN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    responses.start()
    yield responses.mock
    responses.stop()
    responses.reset()
