"""The workflow on Parsl, overlapping runs in Auto mode, the deployment rule, the quality gate.

Real servers and a real Parsl HighThroughputExecutor (local provider): what a
cluster would run, on this host.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from ioc_helpers import EdgeLoadPV, make_scan, settled_without_partial_files, wait_for
from test_ioc_workflow import message, put_start, wait_final

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

PARSL = {"compute.parsl": {"provider": "local", "workers": 2}}


@pytest.fixture
def edge(epics_env: dict[str, str], tmp_path: Path) -> Any:
    e = EdgeLoadPV(epics_env, tmp_path.name[-6:].replace("_", ""))
    yield e
    e.close()


def runs(ioc: Any) -> list[tuple[int, str, str, str]]:
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    rows = db.execute("SELECT id, scan, state, message FROM runs ORDER BY id").fetchall()
    db.close()
    return rows


def events(ioc: Any, run_id: int) -> dict[str, float]:
    """When run ``run_id`` entered each state."""
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    rows = db.execute("SELECT state, time FROM events WHERE run_id=?", (run_id,)).fetchall()
    db.close()
    return dict(rows)


def test_a_run_on_parsl_reports_progress_and_deploys_the_model(iocs, pva, edge):
    ioc = iocs.start(tables=PARSL, edge_prefix=edge.prefix,
                     extra_env={"EPICS_PVA_NAME_SERVERS": edge.names, "IOC_TEST_EPOCH_S": "0.4"})
    pva.put(ioc.pv("Compute:Backend"), 1)
    pva.put(ioc.pv("Recon:Epochs"), 8)
    pva.put(ioc.pv("Train:Epochs"), 2)
    epochs: list[int] = []
    sub = pva.monitor(ioc.pv("Recon:Epoch_RBV"), lambda v: epochs.append(int(v)))
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, 120, run=n) == "Done", message(pva, ioc) + ioc.log()
    sub.close()
    # the stage ran on a Parsl worker; its epochs reached the PV while it ran
    assert len(set(epochs) - {0}) >= 4 and max(epochs) == 8
    assert edge.got.wait(10) and edge.loads == [str(ioc.work / "models" / "model-v1.onnx")]
    assert pva.get(ioc.pv("Model:Deployed_RBV")) == 1
    assert "deployed (no model deployed yet)" in message(pva, ioc)
    assert (ioc.work / "parsl").is_dir()  # Parsl's own run folder, under the work root


def test_abort_on_parsl_leaves_nothing_half_written_and_the_next_run_works(iocs, pva):
    ioc = iocs.start(tables=PARSL, abort_grace_s=1.0, extra_env={"IOC_TEST_EPOCH_S": "0.3"})
    pva.put(ioc.pv("Compute:Backend"), 1)
    pva.put(ioc.pv("Recon:Epochs"), 400)
    pva.put(ioc.pv("Train:Epochs"), 2)
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
    put_start(pva, ioc)
    wait_for(lambda: pva.get(ioc.pv("Recon:Epoch_RBV")) >= 2, 90, "epochs on Parsl", ioc)
    t0 = time.monotonic()
    pva.put(ioc.pv("Workflow:Abort"), 1)
    assert wait_final(pva, ioc, 30) == "Aborted"
    assert time.monotonic() - t0 < 10
    run_dir = ioc.work / "runs" / "run-00001"
    assert not (run_dir / "reconstruct").exists()
    assert (run_dir / "transfer" / "scan.h5").is_file()  # the finished transfer stays
    settled_without_partial_files(run_dir, ioc)
    pva.put(ioc.pv("Recon:Epochs"), 2)
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, 60, run=n) == "Done", message(pva, ioc)


def test_auto_overlaps_back_to_back_scans_and_keeps_a_worse_model_off_the_edge(iocs, pva,
                                                                                 edge):
    ioc = iocs.start(edge_prefix=edge.prefix, max_concurrent_stages=2,
                     extra_env={"EPICS_PVA_NAME_SERVERS": edge.names, "IOC_TEST_EPOCH_S": "0.2"})
    pva.put(ioc.pv("Recon:Epochs"), 6)
    pva.put(ioc.pv("Train:Epochs"), 6)
    pva.put(ioc.pv("Workflow:Auto"), 1)
    time.sleep(0.5)
    names = ["a-scan.h5", "b-worse.h5", "c-scan.h5"]
    for i, name in enumerate(names):
        make_scan(ioc.data / name, seed=i)
        time.sleep(0.05)
    wait_for(lambda: pva.get(ioc.pv("Workflow:ActiveRuns_RBV")) == 2, 30, "two runs at once",
             ioc)
    rows = wait_for(lambda: (r := runs(ioc)) and len(r) == 3
                    and all(s in ("Done", "Failed") for _, _, s, _ in r) and r, 120,
                    "three runs", ioc)
    assert [Path(scan).name for _, scan, _, _ in rows] == names  # every scan, in order
    assert [s for _, _, s, _ in rows] == ["Done"] * 3, rows
    first, second = events(ioc, 1), events(ioc, 2)
    # run 2 was transferred and reconstructed while run 1 trained ...
    assert second["Reconstructing"] < first["Deploying"]
    # ... and trained only after run 1 had exported its model: one lineage, in order
    assert second["Training"] >= first["Done"] - 0.5
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    models = db.execute("SELECT version, run_id FROM models ORDER BY version").fetchall()
    deployed = [v for (v,) in db.execute("SELECT version FROM deployments ORDER BY rowid")]
    db.close()
    assert models == [(1, 1), (2, 2), (3, 3)]
    assert deployed == [1, 3]  # v2 (worse quality) registered, not deployed
    assert "registered, not deployed: quality 0.500 is worse than deployed v1's 0.875" in rows[1][3]
    assert [Path(p).name for p in edge.loads] == ["model-v1.onnx", "model-v3.onnx"]
    assert pva.get(ioc.pv("Model:Deployed_RBV")) == 3
    assert pva.get(ioc.pv("Workflow:ActiveRuns_RBV")) == 0
    pva.put(ioc.pv("Workflow:Auto"), 0)


def test_quality_gate_stops_auto_and_auto_put_again_resumes(iocs, pva):
    ioc = iocs.start(quality_runs=2, max_concurrent_stages=1)
    pva.put(ioc.pv("Recon:Epochs"), 2)
    pva.put(ioc.pv("Train:Epochs"), 2)
    pva.put(ioc.pv("Model:QualityTarget"), 0.8)  # the test stages' models reach 0.875
    pva.put(ioc.pv("Workflow:Auto"), 1)
    time.sleep(0.5)
    for i in range(2):
        make_scan(ioc.data / f"s{i}.h5", seed=i)
        time.sleep(0.05)
    wait_for(lambda: pva.get(ioc.pv("Model:TargetMet_RBV")).raw.value.index == 1, 60,
             "quality gate", ioc)
    assert "stops sending scans to remote compute" in message(pva, ioc)
    make_scan(ioc.data / "s2.h5", seed=2)
    wait_for(lambda: pva.get(ioc.pv("Workflow:QueuedScans_RBV")) == 1, 10, "queued", ioc)
    time.sleep(1.0)
    assert len(runs(ioc)) == 2  # the third scan waits: the cluster is released
    pva.put(ioc.pv("Workflow:Auto"), 1)  # put again: resume
    wait_for(lambda: len(r := runs(ioc)) == 3 and r[2][2] == "Done", 60, "third run", ioc)
    assert pva.get(ioc.pv("Model:TargetMet_RBV")).raw.value.index == 0
    assert pva.get(ioc.pv("Workflow:QueuedScans_RBV")) == 0
    pva.put(ioc.pv("Workflow:Auto"), 0)


@pytest.mark.parametrize("tables", [{}, PARSL], ids=["local", "parsl"])
def test_a_dead_worker_is_retried_once_where_safe_else_the_run_fails_naming_it(iocs, pva,
                                                                              tables):
    ioc = iocs.start(tables=tables, stages={"reconstruct": "ioc_test_stages:reconstruct_dies_once",
                                            "train": "ioc_test_stages:train_dies"})
    backend = "Parsl" if tables else "Local"
    pva.put(ioc.pv("Compute:Backend"), 1 if tables else 0)
    pva.put(ioc.pv("Recon:Epochs"), 2)
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, 120, run=n) == "Failed"
    msg = message(pva, ioc)
    assert msg.startswith(f"Failed in Training: the worker running train on {backend} died")
    assert "not retried: this stage changes the training lineage" in msg
    assert f"the worker running reconstruct on {backend} died" in ioc.log()
    assert "retrying once" in ioc.log()
    assert (ioc.work / "runs" / "run-00001" / "reconstruct" / "recon.npy").is_file()
    assert not (ioc.work / "runs" / "run-00001" / "train").exists()


def test_training_checkpointed_before_the_walltime_is_resubmitted_and_resumes(iocs, pva):
    ioc = iocs.start(stages={"train": "ioc_test_stages:train_walltime"})
    pva.put(ioc.pv("Recon:Epochs"), 2)
    pva.put(ioc.pv("Train:Epochs"), 2)
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, 60, run=n) == "Done", message(pva, ioc)
    assert ("train checkpointed at epoch 1 before its allocation ended; resubmitted to Local "
            "to resume") in ioc.log()
    assert pva.get(ioc.pv("Model:Version_RBV")) == 1


def test_abort_stops_every_overlapping_run_and_leaves_no_partial_stage(iocs, pva):
    ioc = iocs.start(stages={"train": "ioc_test_stages:train_slow"}, max_concurrent_stages=2)
    pva.put(ioc.pv("Recon:Epochs"), 2)
    pva.put(ioc.pv("Workflow:Auto"), 1)
    time.sleep(0.5)
    for i in range(3):
        make_scan(ioc.data / f"s{i}.h5", seed=i)
        time.sleep(0.05)
    # run 1 trains, run 2 has reconstructed and waits its turn to train, scan 3 is queued
    wait_for(lambda: "waits for run 1 to finish training" in ioc.log(), 60, "overlap", ioc)
    wait_for(lambda: pva.get(ioc.pv("Workflow:ActiveRuns_RBV")) == 2
             and pva.get(ioc.pv("Workflow:QueuedScans_RBV")) == 1, 10, "2 active, 1 queued", ioc)
    pva.put(ioc.pv("Workflow:Auto"), 0)  # stop feeding new runs, then abort the active ones
    pva.put(ioc.pv("Workflow:Abort"), 1)
    rows = wait_for(lambda: (r := runs(ioc)) and all(s in ("Aborted", "Done", "Failed")
                                                     for _, _, s, _ in r) and r, 30, "aborted",
                    ioc)
    assert [s for _, _, s, _ in rows] == ["Aborted", "Aborted"]
    assert not (ioc.work / "runs" / "run-00001" / "train").exists()
    assert (ioc.work / "runs" / "run-00002" / "reconstruct" / "recon.npy").is_file()
    settled_without_partial_files(ioc.work, ioc)
    assert pva.get(ioc.pv("Workflow:ActiveRuns_RBV")) == 0
