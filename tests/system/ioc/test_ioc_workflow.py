"""The workflow through its PVs: a full run, refusals while busy, abort, failure, auto mode."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ioc_helpers import make_scan, wait_for

from ptychoflow.pvnames import STATES

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


class StateLog:
    """Every Workflow:State_RBV update a PVA monitor sees, in order."""

    def __init__(self, ctx: Any, pv: str) -> None:
        self.states: list[str] = []
        self._lock = threading.Lock()
        self.sub = ctx.monitor(pv, self._cb)

    def _cb(self, v: Any) -> None:
        if isinstance(v, Exception):
            return
        with self._lock:
            self.states.append(STATES[int(v.raw.value.index)])

    def close(self) -> None:
        self.sub.close()


def run_id(pva: Any, ioc: Any) -> int:
    return int(pva.get(ioc.pv("Workflow:RunId_RBV")))


def put_start(pva: Any, ioc: Any) -> int:
    """Start a run; returns the id it will get."""
    before = run_id(pva, ioc)
    pva.put(ioc.pv("Workflow:Start"), 1)
    return before + 1


def state(pva: Any, ioc: Any) -> str:
    return STATES[int(pva.get(ioc.pv("Workflow:State_RBV")).raw.value.index)]


def message(pva: Any, ioc: Any) -> str:
    return str(pva.get(ioc.pv("Workflow:Message_RBV")).raw.value)


def wait_final(pva: Any, ioc: Any, timeout: float = 60, run: int = 0) -> str:
    """Wait until run ``run`` (or the current one) has ended; returns the final state."""
    wait_for(lambda: run_id(pva, ioc) >= run
             and int(pva.get(ioc.pv("Workflow:Busy_RBV")).raw.value.index) == 0
             and state(pva, ioc) in ("Done", "Failed", "Aborted"), timeout, "run end", ioc)
    return state(pva, ioc)


def test_full_run_goes_through_every_state_and_registers_the_model(iocs, pva):
    ioc = iocs.start(int8_models=True)  # the stages are told to make an int8 copy too
    scan = make_scan(ioc.data / "scan-001.h5")
    pva.put(ioc.pv("Recon:Epochs"), 5)
    pva.put(ioc.pv("Train:Epochs"), 4)
    log = StateLog(pva, ioc.pv("Workflow:State_RBV"))
    starts: list[int] = []
    start_sub = pva.monitor(ioc.pv("Workflow:Start"),
                            lambda v: starts.append(int(v.raw.value.index)))
    pva.put(ioc.pv("Scan:Path"), str(scan))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, run=n) == "Done", message(pva, ioc) + ioc.log()
    time.sleep(0.3)
    log.close()
    start_sub.close()
    assert starts == [0, 1, 0]  # monitors see Start rise with the run and drop after it
    assert log.states == ["Idle", "Transferring", "Reconstructing", "Training", "Deploying",
                          "Done"]
    g = lambda s: pva.get(ioc.pv(s))  # noqa: E731
    assert g("Recon:Epoch_RBV") == 5 and g("Train:Epoch_RBV") == 4
    assert g("Recon:Error_RBV") == pytest.approx(0.2)
    assert g("Train:BestValLoss_RBV") == pytest.approx(1.5 / 4)
    assert g("Transfer:Rate_RBV") > 0
    assert g("Workflow:Progress_RBV") == 100
    assert g("Model:Version_RBV") == 1
    assert g("Model:Quality_RBV") == pytest.approx(0.875)
    run_id = int(g("Workflow:RunId_RBV"))
    assert run_id == 1
    assert int(g("Workflow:Start").raw.value.index) == 0  # Start drops back when the run ends

    db = sqlite3.connect(ioc.work / "registry.sqlite")
    scan_db, params, results = db.execute(
        "SELECT scan, params, results FROM runs WHERE id=?", (run_id,)).fetchone()
    assert scan_db == str(scan)
    assert '"recon_epochs": 5' in params and '"algorithm": "rPIE"' in params
    assert '"int8": true' in params
    assert "reconstruction" in results and "checkpoint" in results
    events = [r[0] for r in db.execute("SELECT state FROM events WHERE run_id=? ORDER BY rowid",
                                       (run_id,))]
    assert events == ["Idle", "Transferring", "Reconstructing", "Training", "Deploying", "Done"]
    version, path, sha = db.execute("SELECT version, path, sha256 FROM models").fetchone()
    assert version == 1 and Path(path).is_file() and len(sha) == 64
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert ioc.stop() == 0


def test_start_while_busy_and_abort(iocs, pva):
    from p4p.client.thread import RemoteError

    ioc = iocs.start(stages={"train": "ioc_test_stages:train_slow"})
    scan = make_scan(ioc.data / "scan.h5")
    pva.put(ioc.pv("Scan:Path"), str(scan))
    put_start(pva, ioc)
    wait_for(lambda: state(pva, ioc) == "Training", 30, "Training", ioc)
    with pytest.raises(RemoteError):
        put_start(pva, ioc)
    assert "is active" in message(pva, ioc)
    t0 = time.monotonic()
    pva.put(ioc.pv("Workflow:Abort"), 1)
    assert wait_final(pva, ioc, 20) == "Aborted"
    assert time.monotonic() - t0 < 5
    run_dir = ioc.work / "runs" / "run-00001"
    assert not (run_dir / "train").exists()  # the aborted stage's partial output is gone
    assert (run_dir / "reconstruct" / "recon.npy").is_file()  # finished stages stay
    assert int(pva.get(ioc.pv("Workflow:Abort")).raw.value.index) == 0
    # a new run can start after the abort
    put_start(pva, ioc)
    wait_for(lambda: state(pva, ioc) == "Training", 30, "Training again", ioc)
    pva.put(ioc.pv("Workflow:Abort"), 1)
    assert wait_final(pva, ioc, 20) == "Aborted"


def test_abort_terminates_a_stage_that_ignores_cancel(iocs, pva):
    ioc = iocs.start(stages={"train": "ioc_test_stages:train_stubborn"}, abort_grace_s=1.0)
    scan = make_scan(ioc.data / "scan.h5")
    pva.put(ioc.pv("Scan:Path"), str(scan))
    put_start(pva, ioc)
    wait_for(lambda: "stubborn start" in message(pva, ioc), 30, "stubborn stage", ioc)
    t0 = time.monotonic()
    pva.put(ioc.pv("Workflow:Abort"), 1)
    assert wait_final(pva, ioc, 20) == "Aborted"
    assert time.monotonic() - t0 < 8
    assert not (ioc.work / "runs" / "run-00001" / "train").exists()
    assert "terminated stage worker" in ioc.log()
    # the pool recovers: the next run gets a fresh worker and reaches the same stage
    put_start(pva, ioc)
    wait_for(lambda: state(pva, ioc) == "Training", 30, "Training on a new worker", ioc)


@pytest.mark.parametrize(("settings", "stages", "expect"), [
    ({}, {"reconstruct": "ioc_test_stages:reconstruct_failing"},
     "Failed in Reconstructing: ValueError: synthetic solver divergence"),
    ({}, {"train": "no_such_module_xyz:train"}, "cannot load stage 'no_such_module_xyz:train'"),
    ({"Compute:Backend": 1}, {}, "Parsl is not configured"),
    ({"Compute:Backend": 2}, {}, "[compute.globus_compute]"),
    ({"Transfer:Backend": 1}, {}, "Globus is not configured"),
], ids=["stage-raises", "stage-missing", "parsl", "globus-compute", "globus-transfer"])
def test_failures_end_in_failed_with_the_cause(iocs, pva, settings, stages, expect):
    ioc = iocs.start(stages=stages)
    scan = make_scan(ioc.data / "scan.h5")
    for suffix, v in settings.items():
        pva.put(ioc.pv(suffix), v)
    pva.put(ioc.pv("Scan:Path"), str(scan))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, run=n) == "Failed"
    assert expect in message(pva, ioc)
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    st, msg = db.execute("SELECT state, message FROM runs").fetchone()
    db.close()
    assert st == "Failed" and expect in msg


def test_auto_mode_processes_new_complete_scans_in_order(iocs, pva):
    ioc = iocs.start()
    make_scan(ioc.data / "old.h5")  # present before Auto: not processed
    pva.put(ioc.pv("Recon:Epochs"), 3)
    pva.put(ioc.pv("Train:Epochs"), 3)
    pva.put(ioc.pv("Workflow:Auto"), 1)
    time.sleep(0.5)
    (ioc.data / "writing.h5.part").write_bytes(b"not complete")
    outside = make_scan(ioc.data.parent / "outside.h5")
    (ioc.data / "escape.h5").symlink_to(outside)  # complete, but not under the data root
    names = []
    for i in range(3):
        p = make_scan(ioc.data / "sub" / f"auto-{i}.h5", seed=i)
        names.append(str(p))
        time.sleep(0.05)
    db_path = ioc.work / "registry.sqlite"

    def done() -> list[tuple[str, str]] | None:
        db = sqlite3.connect(db_path)
        rows = db.execute("SELECT scan, state FROM runs ORDER BY id").fetchall()
        db.close()
        return rows if len(rows) == 3 and all(s == "Done" for _, s in rows) else None

    rows = wait_for(done, 90, "three auto runs", ioc)
    assert [r[0] for r in rows] == names
    assert "skipped escape.h5" in ioc.log()
    pva.put(ioc.pv("Workflow:Auto"), 0)


def test_sigterm_during_a_run_aborts_it_records_it_and_exits_0(iocs, pva):
    import signal

    ioc = iocs.start(stages={"train": "ioc_test_stages:train_slow"})
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
    put_start(pva, ioc)
    wait_for(lambda: state(pva, ioc) == "Training", 30, "Training", ioc)
    assert ioc.stop(sig=signal.SIGTERM) == 0, ioc.log()
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    st, msg = db.execute("SELECT state, message FROM runs").fetchone()
    db.close()
    assert st == "Aborted" and "Training" in msg
    assert not (ioc.work / "runs" / "run-00001" / "train").exists()
