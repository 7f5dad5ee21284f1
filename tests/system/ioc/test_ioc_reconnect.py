"""Clients outlive an IOC restart: ophyd, ophyd-async and a p4p monitor resume on their own.

A Bluesky session's devices and a display's monitors are made once and stay up while the
control IOC is restarted, cleanly or after a crash. On the same prefix (so the same ports)
each must find the new process by itself, read the settings autosave kept, and write to it,
with nothing recreated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ioc_helpers import wait_for

from ptychoflow.epicsenv import pva_conf

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

# Each old client must be back this long after the new IOC first answers. Channel Access
# re-searches a lost channel once every 10 s (libca's "disconnect governor") unless a CA
# repeater hands it the new IOC's beacons, and these tests hold the repeater port, so ophyd
# takes up to ~10 s after the disconnect; the pvAccess clients took 0-7 s here, once over
# 30 s in a full run (pvxs backs its searches off after refused connections). The rest is
# margin for a loaded machine.
RESUME_S = 60.0


@pytest.fixture
def RE() -> Iterator[Any]:
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()
    engine.loop.call_soon_threadsafe(engine.loop.stop)


class MonitorLog:
    """Every update of a p4p monitor, a disconnect as ``"Disconnected"``, in order.

    p4p reports a disconnect before the first connection too, so a log starts with one.
    """

    def __init__(self, ctx: Any, pv: str) -> None:
        self.updates: list[int | str] = []
        self._lock = threading.Lock()
        self.sub = ctx.monitor(pv, self._cb, notify_disconnect=True)

    def _cb(self, v: Any) -> None:
        with self._lock:
            self.updates.append(type(v).__name__ if isinstance(v, Exception) else int(v))

    def since(self, mark: int) -> list[int | str]:
        with self._lock:
            return self.updates[mark:]

    def close(self) -> None:
        self.sub.close()


def resumed(checks: dict[str, Callable[[], bool]], timeout: float) -> dict[str, float]:
    """Seconds until each check first holds, all polled together from now."""
    t0 = time.monotonic()
    pending, took = dict(checks), {}
    while pending and time.monotonic() - t0 < timeout:
        for name, check in list(pending.items()):
            if check():
                took[name] = round(time.monotonic() - t0, 2)
                del pending[name]
        time.sleep(0.02)
    assert not pending, f"{sorted(pending)} did not resume within {timeout} s; {took=}"
    return took


@pytest.fixture
def fresh_async_client() -> Iterator[None]:
    """ophyd-async's one pvAccess client for the process, made anew for this test: the one
    earlier tests used still holds channels to their stopped IOCs, and searching for those
    has kept it from resuming ours within a minute."""
    from ophyd_async.epics.core import _p4p
    from p4p.client.asyncio import Context

    saved, _p4p._context = _p4p._context, Context("pva", nt=False)
    yield
    _p4p._context.close()
    _p4p._context = saved


@pytest.mark.parametrize("how", ["stop", "kill9"])
@pytest.mark.usefixtures("fresh_async_client")
def test_old_clients_resume_against_the_restarted_ioc_without_being_recreated(iocs, RE, pva, how):
    import bluesky.plan_stubs as bps
    from ophyd_async.core import init_devices
    from p4p.client.thread import Context

    from ptychoflow.ioc.devices import workflow_device
    from ptychoflow.ioc.devices_async import WorkflowAsync

    ioc = iocs.start()
    wf = workflow_device(ioc.prefix, name="wf")  # ophyd, Channel Access
    wf.wait_for_connection(timeout=10)
    with init_devices():
        wfa = WorkflowAsync(ioc.prefix)  # ophyd-async, pvAccess
    log = MonitorLog(pva, ioc.pv("Recon:Epochs"))  # a display's monitor
    wait_for(lambda: log.updates == ["Disconnected", 100], 10, "the monitor's first value", ioc)
    RE(bps.mv(wf.recon_epochs, 7, wfa.train_epochs, 9))
    assert wf.recon_epochs.get(use_monitor=False) == 7
    assert RE(_rd(wfa.train_epochs)).plan_result == 9
    wait_for(lambda: log.updates[-1] == 7, 10, "the monitor to see the put", ioc)

    mark, went = len(log.updates), time.monotonic()
    if how == "stop":
        assert ioc.stop() == 0, ioc.log()
    else:
        ioc.kill9()
    wait_for(lambda: not wf.recon_epochs.connected and log.since(mark) == ["Disconnected"],
             10, "the old clients to see the IOC go")
    again = iocs.start(prefix=ioc.prefix)  # same prefix, data, work and ports
    assert again.proc.pid != ioc.proc.pid
    down = time.monotonic() - went

    # a read through the old ophyd-async device, issued now, completes once its channel is back
    pending = asyncio.run_coroutine_threadsafe(wfa.train_epochs.get_value(), RE.loop)
    took = resumed({
        "ophyd": lambda: bool(wf.connected),
        "ophyd-async": lambda: pending.done() and pending.exception() is None,
        "p4p monitor": lambda: len(log.since(mark)) > 1,
    }, RESUME_S)
    print(f"{how}: down {down:.1f} s; then seconds for each old client to resume: {took}")
    # the settings autosave kept, read through the old objects from the new process
    assert pending.result() == 9
    assert wf.recon_epochs.get(use_monitor=False) == 7
    assert log.since(mark) == ["Disconnected", 7]

    # a plan writes through both old devices, and the new process takes it
    RE(bps.mv(wf.recon_epochs, 13, wfa.train_epochs, 17))
    assert wf.recon_epochs.get(use_monitor=False) == 13
    assert RE(_rd(wfa.train_epochs)).plan_result == 17
    with Context("pva", conf=pva_conf(again.env), useenv=False) as fresh:
        assert fresh.get(again.pv("Recon:Epochs")) == 13
        assert fresh.get(again.pv("Train:Epochs")) == 17
    wait_for(lambda: log.updates[-1] == 13, 10, "the monitor to see it", again)
    assert log.updates == ["Disconnected", 100, 7, "Disconnected", 7, 13]  # none lost or twice
    log.close()
    assert again.stop() == 0, again.log()


def _rd(sig: Any) -> Any:
    import bluesky.plan_stubs as bps

    value = yield from bps.rd(sig)
    return value
