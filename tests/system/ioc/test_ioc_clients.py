"""ophyd (CA), ophyd-async (PVA) and the Bluesky plan against a real IOC under a real RunEngine."""

from __future__ import annotations

import pytest
from ioc_helpers import make_scan

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()
    engine.loop.call_soon_threadsafe(engine.loop.stop)


def test_ophyd_device_and_plan_over_ca(iocs, RE):
    from ptychoflow.ioc.devices import workflow_device
    from ptychoflow.ioc.plans import WorkflowError, process_scan

    ioc = iocs.start(stages={"train": "ioc_test_stages:train_slow"})
    wf = workflow_device(ioc.prefix, name="wf")
    wf.wait_for_connection(timeout=10)
    assert wf.workflow_state.get(as_string=True) == "Idle"
    assert wf.train_epochs.get() == 50
    assert wf.recon_epochs.describe()["wf_recon_epochs"]["upper_ctrl_limit"] == 10000
    cfg = wf.read_configuration()
    assert cfg["wf_train_val_fraction"]["value"] == pytest.approx(0.1)
    scan = make_scan(ioc.data / "ca.h5")
    # a refused setting raises with the IOC's reason (over CA the IOC keeps the old value)
    with pytest.raises(WorkflowError, match="outside the data root"):
        RE(process_scan(wf, "/etc/hostname"))
    # a run aborted from another client (pyepics) makes the plan raise with the IOC's reason
    import threading

    import epics

    def abort_when_training():
        import time

        for _ in range(400):
            if epics.caget(ioc.pv("Workflow:State_RBV"), as_string=True) == "Training":
                epics.caput(ioc.pv("Workflow:Abort"), 1)
                return
            time.sleep(0.05)

    t = threading.Thread(target=abort_when_training)
    t.start()
    with pytest.raises(WorkflowError, match="ended Aborted: Aborted: run 1"):
        RE(process_scan(wf, scan, recon_epochs=3, recon_algorithm="ePIE", timeout=60))
    t.join()
    assert wf.recon_algorithm.get(as_string=True) == "ePIE"
    assert wf.recon_epochs.get() == 3


def test_plan_runs_to_done_with_both_devices(iocs, RE):
    from ophyd_async.core import init_devices

    from ptychoflow.ioc.devices import workflow_device
    from ptychoflow.ioc.devices_async import WorkflowAsync
    from ptychoflow.ioc.plans import WorkflowError, process_scan

    ioc = iocs.start()
    scan = make_scan(ioc.data / "both.h5")
    wf = workflow_device(ioc.prefix, name="wf")
    wf.wait_for_connection(timeout=10)
    result = RE(process_scan(wf, scan, recon_epochs=2, train_epochs=2, timeout=60)).plan_result
    assert result["state"] == "Done" and result["run_id"] == 1
    assert wf.model_version.get() == 1

    with init_devices():
        wfa = WorkflowAsync(ioc.prefix)
    reading = RE(_read_plan(wfa)).plan_result
    assert reading == {"state": "Done", "epochs": 2}
    result = RE(process_scan(wfa, scan, train_epochs=3, compute_backend="Local",
                             timeout=60)).plan_result
    assert result["run_id"] == 2
    assert RE(_rd(wfa.model_version)).plan_result == 2
    assert RE(_rd(wfa.train_epoch)).plan_result == 3
    # over PVA a refused value is a put error, raised with the IOC's message
    with pytest.raises(WorkflowError, match="out of range"):
        RE(process_scan(wfa, scan, train_epochs=5000))
    # a run that fails raises with the cause
    with pytest.raises(WorkflowError, match="Parsl is not configured"):
        RE(process_scan(wfa, scan, compute_backend="Parsl", timeout=60))


def _rd(sig):
    import bluesky.plan_stubs as bps

    value = yield from bps.rd(sig)
    return value


def _read_plan(wfa):
    import bluesky.plan_stubs as bps

    state = yield from bps.rd(wfa.workflow_state)
    epochs = yield from bps.rd(wfa.recon_epochs)
    return {"state": state.value, "epochs": epochs}
