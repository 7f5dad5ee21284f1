"""Fuzz every writable PV over CA and PVA; the IOC must refuse junk, stay up and stay valid."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ioc_helpers import make_scan

from ptychoflow.ioc.validate import check_scan_path, check_value
from ptychoflow.pvnames import CONTROL

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

WRITABLE = [s for s in CONTROL if s.access == "W"]
PUTS_PER_PROTOCOL = 200 * len(WRITABLE)  # ~200 puts per PV per protocol, ~400 in all

values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, 2, 3, 4, 15, 16, -1, 1000, 1001, 10000, 10001, 2**31, -(2**31)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.01, 0.5, 0.0099999, 0.5000001, float("nan"), -0.0]),
    st.text(max_size=60),
    st.text(min_size=1000, max_size=1100),
    st.sampled_from(["rPIE", "DM", "Globus", "On", "Start", "Abort", "bogus", "", "../x"]),
    st.booleans(),
    st.lists(st.integers(-300, 300), max_size=4),
    st.binary(max_size=40),
)


def _value(pva: Any, name: str) -> Any:
    val = pva.get(name, timeout=5).raw.value
    return val if isinstance(val, str | int | float) else val.index


def assert_healthy(ioc: Any, pva: Any) -> None:
    assert ioc.proc.poll() is None, ioc.log()
    for spec in WRITABLE:
        v = _value(pva, ioc.pv(spec.suffix))
        if spec.record in ("longout", "ao"):
            assert math.isfinite(v)
        problem = check_value(spec, v)
        if spec.suffix == "Scan:Path" and problem is None:
            problem = check_scan_path(v, ioc.data)
        assert problem is None, (spec.suffix, v, problem)


@pytest.fixture(scope="module")
def fuzz_ioc(shared_ioc):
    good = make_scan(shared_ioc.data / "good.h5")
    return shared_ioc, str(good)


@pytest.fixture(scope="module")
def pva_module(epics_env):
    from p4p.client.thread import Context

    from ptychoflow.epicsenv import pva_conf

    ctx = Context("pva", conf=pva_conf(epics_env), useenv=False)
    yield ctx
    ctx.close()


def _strategy(good: str) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.tuples(st.sampled_from(WRITABLE), st.one_of(values, st.just(good)))


def test_fuzz_over_pva(fuzz_ioc, pva_module):
    ioc, good = fuzz_ioc
    counts = {"accepted": 0, "refused": 0}

    @settings(max_examples=PUTS_PER_PROTOCOL, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_strategy(good))
    def fuzz(case: tuple[Any, Any]) -> None:
        spec, value = case
        try:
            pva_module.put(ioc.pv(spec.suffix), value, timeout=5)
            counts["accepted"] += 1
        except Exception:  # refusals (RemoteError) and client-side conversion errors
            counts["refused"] += 1
        v = _value(pva_module, ioc.pv(spec.suffix))
        assert check_value(spec, v) is None or spec.suffix == "Scan:Path", (spec.suffix, v)

    fuzz()
    assert_healthy(ioc, pva_module)
    assert min(counts.values()) > 50, counts


def test_fuzz_over_ca(fuzz_ioc, pva_module):
    from caproto.threading.client import Context

    ioc, good = fuzz_ioc
    counts = {"accepted": 0, "refused": 0}
    ctx = Context()
    pvs = dict(zip([s.suffix for s in WRITABLE],
                   ctx.get_pvs(*[ioc.pv(s.suffix) for s in WRITABLE], timeout=5), strict=True))
    for pv in pvs.values():
        pv.wait_for_connection(timeout=10)

    @settings(max_examples=PUTS_PER_PROTOCOL, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_strategy(good))
    def fuzz(case: tuple[Any, Any]) -> None:
        spec, value = case
        if isinstance(value, str):
            value = value.encode("utf-8", "replace") if spec.record == "lso" else [value]
        try:
            resp = pvs[spec.suffix].write(value, wait=True, timeout=5)
            counts["accepted" if resp.status.success else "refused"] += 1
        except Exception:  # client-side conversion errors
            counts["refused"] += 1
        v = _value(pva_module, ioc.pv(spec.suffix))
        assert check_value(spec, v) is None or spec.suffix == "Scan:Path", (spec.suffix, v)

    try:
        fuzz()
    finally:
        ctx.disconnect()
    assert_healthy(ioc, pva_module)
    assert min(counts.values()) > 50, counts
    pva_module.put(ioc.pv("Workflow:Abort"), 1)  # whatever the fuzz started, stop it
