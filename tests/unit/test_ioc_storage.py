"""Registry, autosave and the auto-mode watcher keep their promises across restarts."""

from __future__ import annotations

import json
import sqlite3
import time

from ptychoflow.ioc.autosave import Autosave
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.watcher import ScanWatcher


def test_registry_records_runs_models_and_recovers_interrupted_runs(tmp_path):
    db = tmp_path / "registry.sqlite"
    reg = Registry(db)
    a = reg.new_run("/d/a.h5", {"recon_epochs": 5})
    reg.set_state(a, "Transferring", "go")
    reg.set_state(a, "Reconstructing")
    reg.set_results(a, {"reconstruction": "/w/r.npy"})
    b = reg.new_run("/d/b.h5", {})
    reg.set_state(b, "Transferring")
    reg.set_state(b, "Failed", "boom")
    reg.add_model(1, "/m/model-v1.onnx", "ab" * 32, {"loss": 0.1}, {"run_id": a}, a)
    # no close(): as after kill -9 the next process opens the same file
    again = Registry(db)
    assert again.recover() == [a]
    run = again.run(a)
    assert run["state"] == "Failed" and "interrupted" in run["message"]
    assert "Reconstructing" in run["message"]
    assert [e["state"] for e in run["events"]] == ["Idle", "Transferring", "Reconstructing",
                                                   "Failed"]
    assert run["params"] == {"recon_epochs": 5}
    assert run["results"] == {"reconstruction": "/w/r.npy"}
    assert again.run(b)["message"] == "boom"  # a finished run is left alone
    assert again.recover() == []
    assert again.latest_version() == 1
    assert again.model(1)["provenance"] == {"run_id": a}
    assert again.model(2) is None
    assert [r["id"] for r in again.runs()] == [a, b]
    assert again.last_run()["id"] == b
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reg.close()
    again.close()


def test_autosave_round_trip_and_refuses_stale_values(tmp_path):
    path = tmp_path / "autosave.json"
    a = Autosave(path)
    assert a.restore() == {}
    a.save("Recon:Epochs", 77)
    a.save("Workflow:Auto", 1)
    assert not path.with_name(path.name + ".part").exists()
    assert Autosave(path).restore() == {"Recon:Epochs": 77, "Workflow:Auto": 1}
    path.write_text(json.dumps({"Recon:Epochs": 0, "Train:Epochs": 9, "Scan:Path": "/x"}))
    assert Autosave(path).restore() == {"Train:Epochs": 9}  # out of range / not autosaved
    path.write_text("{torn")
    assert Autosave(path).restore() == {}


def test_watcher_reports_new_complete_files_once_in_order(tmp_path):
    w = ScanWatcher(tmp_path)
    (tmp_path / "old.h5").write_bytes(b"x")
    w.snapshot()
    assert w.poll() == []
    (tmp_path / "b.h5.part").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    first = tmp_path / "sub" / "first.h5"
    first.write_bytes(b"x")
    time.sleep(0.01)
    second = tmp_path / "a.h5"
    second.write_bytes(b"x")
    assert w.poll() == [first, second]
    assert w.poll() == []
    (tmp_path / "b.h5.part").rename(tmp_path / "b.h5")
    assert w.poll() == [tmp_path / "b.h5"]
    second.unlink()
    assert [w.next(), w.next(), w.next()] == [first, tmp_path / "b.h5", None]
