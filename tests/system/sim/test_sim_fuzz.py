"""Fuzz the detector simulator's writable PVs: junk is refused, nothing invalid takes effect.

The simulator stands in for the detector in every test and demo, and an operator's
screen can put anything to ``cam1:Acquire`` and ``cam1:AcquireRate``. After every
put it must still answer, a refused value must leave the read-back as it was, the
rate must stay a finite, non-negative number, and at the end an acquisition must
still send every frame of a scan.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p4p.client.thread import Context

from ptychoflow.epicsenv import pva_conf
from ptychoflow.pvnames import DETECTOR
from tests.conftest import wait_for_pva

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

WRITABLE = [s for s in DETECTOR if s.access == "W"]
PUTS = 60
FRAMES = 10

junk = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2, -1, 2**31, 2**63, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=40),
    st.sampled_from(["1", "0", "nan", "inf", "-1", "1e400", "x" * 100_000, "\x00", ""]),
    st.lists(st.integers(-5, 5), max_size=3), st.none())


def test_every_writable_pv_refuses_junk_and_the_simulator_keeps_acquiring(
        epics_env: dict[str, str], prefix: str, start_server: Any) -> None:
    server = start_server(["sim", "--prefix", prefix, "--frames", str(FRAMES), "--size", "64",
                           "--wait", "--out", "", "--delay", "0"], epics_env, "sim")
    wait_for_pva(epics_env, DETECTOR.cam1_acquire.name(prefix), server=server)
    counts = {s.suffix: {"accepted": 0, "refused": 0} for s in WRITABLE}
    with Context("pva", conf=pva_conf(epics_env), useenv=False) as ctx:
        get = lambda spec: ctx.get(spec.name(prefix), timeout=5.0)  # noqa: E731

        @settings(max_examples=PUTS, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(WRITABLE), junk)
        def fuzz(spec: Any, value: Any) -> None:
            before = get(spec)
            try:
                ctx.put(spec.name(prefix), value, timeout=5.0)
                counts[spec.suffix]["accepted"] += 1
            except Exception:  # noqa: BLE001 - refusals and client-side conversion errors
                counts[spec.suffix]["refused"] += 1
                assert get(spec) == before  # a refused put changes nothing
            assert server.alive()
            rate = float(get(DETECTOR.cam1_acquire_rate))
            assert math.isfinite(rate) and rate >= 0.0, rate
            assert int(get(DETECTOR.cam1_acquire)) in (0, 1)
            if int(get(DETECTOR.cam1_acquire)):  # an accepted start: let the scan finish
                ctx.put(DETECTOR.cam1_acquire.name(prefix), 0, timeout=5.0)

        fuzz()
        print(f"puts accepted / refused per PV: {counts}")
        assert all(c["refused"] > 0 for c in counts.values()), counts
        # it still acquires a whole scan at a sane rate
        ctx.put(DETECTOR.cam1_acquire_rate.name(prefix), 200.0, timeout=5.0)
        ctx.put(DETECTOR.cam1_acquire.name(prefix), 1, timeout=5.0)
        deadline = time.monotonic() + 30
        while int(get(DETECTOR.cam1_acquire)) == 1:
            assert time.monotonic() < deadline, "the scan did not end"
            time.sleep(0.1)
        assert int(get(DETECTOR.cam1_array_counter)) == FRAMES
    assert server.alive()
