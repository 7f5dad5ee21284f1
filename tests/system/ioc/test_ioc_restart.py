"""A restart loses nothing: settings (autosave), runs and models (registry), even after kill -9."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from ioc_helpers import make_scan, wait_for
from test_ioc_workflow import message, put_start, state, wait_final

from ptychoflow.epicsenv import isolated_env, pva_conf
from ptychoflow.pvnames import ALGORITHMS

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def test_kill9_then_restart_keeps_settings_registry_and_marks_the_run_interrupted(iocs, pva):
    ioc = iocs.start(stages={"train": "ioc_test_stages:train_slow"})
    scan = make_scan(ioc.data / "scan.h5")
    settings = {"Recon:Algorithm": 3, "Recon:Epochs": 7, "Train:Epochs": 9,
                "Train:ValFraction": 0.25, "Workflow:Auto": 0, "Transfer:Backend": 0,
                "Compute:Backend": 0}
    for suffix, v in settings.items():
        pva.put(ioc.pv(suffix), v)
    pva.put(ioc.pv("Scan:Path"), str(scan))
    put_start(pva, ioc)
    wait_for(lambda: state(pva, ioc) == "Training", 30, "Training", ioc)
    ioc.kill9()

    again = iocs.start(prefix=ioc.prefix, stages={"train": "ioc_test_stages:train_slow"})
    pva = fresh_context(again)  # the old client's channels point at the killed IOC
    g = lambda s: pva.get(again.pv(s))  # noqa: E731
    assert g("Recon:Algorithm").raw.value.index == 3
    assert ALGORITHMS[3] == "DM"
    assert g("Recon:Epochs") == 7 and g("Train:Epochs") == 9
    assert g("Train:ValFraction") == pytest.approx(0.25)
    assert g("Workflow:RunId_RBV") == 1
    assert state(pva, again) == "Failed"
    assert "interrupted" in message(pva, again)
    db = sqlite3.connect(again.work / "registry.sqlite")
    st, msg = db.execute("SELECT state, message FROM runs WHERE id=1").fetchone()
    events = [r[0] for r in db.execute("SELECT state FROM events WHERE run_id=1 ORDER BY rowid")]
    db.close()
    assert st == "Failed" and "interrupted" in msg and "Training" in msg
    assert events == ["Idle", "Transferring", "Reconstructing", "Training", "Failed"]
    pva.close()
    assert again.stop() == 0


def fresh_context(ioc):
    from p4p.client.thread import Context

    return Context("pva", conf=pva_conf(ioc.env), useenv=False)


def test_models_survive_a_restart_and_deploy_to_the_edge(iocs, pva, epics_env):
    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    loads: list[str] = []
    got = threading.Event()
    edge = "EDGE" + iocs.root.name[-6:].replace("_", "") + ":"
    load_pv = SharedPV(nt=NTScalar("s"), initial="")

    @load_pv.put
    def _load(pv, op):  # the edge side: record what the IOC asked to load
        loads.append(op.value().raw.value)
        pv.post(op.value())
        op.done()
        got.set()

    edge_env = isolated_env()  # the edge on its own ports, like another host
    with Server(providers=[{edge + "Edge:Model:Load": load_pv}], conf=pva_conf(edge_env),
                useenv=False):
        # the IOC finds the edge through a name server entry for the edge's port
        names = (epics_env["EPICS_PVA_NAME_SERVERS"] +
                 f" 127.0.0.1:{edge_env['EPICS_PVA_SERVER_PORT']}")
        ioc = iocs.start(edge_prefix=edge, extra_env={"EPICS_PVA_NAME_SERVERS": names})
        pva.put(ioc.pv("Recon:Epochs"), 2)
        pva.put(ioc.pv("Train:Epochs"), 2)
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "a.h5")))
        n = put_start(pva, ioc)
        assert wait_final(pva, ioc, run=n) == "Done", message(pva, ioc)
        assert got.wait(10)
        assert loads[-1].endswith("model-v1.onnx")
        n = put_start(pva, ioc)
        assert wait_final(pva, ioc, run=n) == "Done", message(pva, ioc)
        assert pva.get(ioc.pv("Model:Version_RBV")) == 2
        assert loads[-1].endswith("model-v2.onnx")
        assert ioc.stop() == 0

        again = iocs.start(prefix=ioc.prefix, edge_prefix=edge,
                           extra_env={"EPICS_PVA_NAME_SERVERS": names})
        pva = fresh_context(again)
        assert pva.get(again.pv("Model:Version_RBV")) == 2
        assert pva.get(again.pv("Workflow:RunId_RBV")) == 2
        assert state(pva, again) == "Idle"
        # roll back to v1 through Model:Deploy
        got.clear()
        pva.put(again.pv("Model:Deploy"), 1)
        assert got.wait(10)
        assert loads[-1].endswith("model-v1.onnx")
        wait_for(lambda: "Model v1 deployed" in message(pva, again), 10, "deploy message", again)
        from p4p.client.thread import RemoteError

        with pytest.raises(RemoteError):
            pva.put(again.pv("Model:Deploy"), 7)
        assert "version 7 is not registered" in message(pva, again)
        pva.close()
