"""The whole loop through Parsl: one put of Workflow:Start takes a scan to a new model on a
live edge, which swaps it in while it keeps streaming."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ioc_helpers import make_scan
from test_ioc_workflow import StateLog, message, put_start, wait_final

from ptychoflow.epicsenv import isolated_env
from tests.conftest import ServerProcess, wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def test_one_start_on_parsl_takes_a_scan_to_a_new_model_on_the_streaming_edge(
        iocs, pva, epics_env, tmp_path: Path) -> None:
    import sys

    source_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{source_env['EPICS_PVA_SERVER_PORT']}"
    prefix = "LOOP" + tmp_path.name[-6:].replace("_", "") + ":"
    source = FrameSource(source_env, prefix + "Src:Image")
    models = tmp_path / "work" / "models"
    models.mkdir(parents=True)
    args = [a for a in edge_args(prefix, source.pv, models / "none.onnx")]
    i = args.index("--model")
    args = args[:i] + args[i + 2:] + ["--model-dir", str(models)]
    edge = ServerProcess([sys.executable, "-m", "ptychoflow.cli", *args], edge_env,
                         tmp_path / "edge.log")
    collector = Collector(edge_env)
    stop = threading.Event()
    try:
        wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
        collector.watch(prefix + "Edge:Phase")

        def stream() -> None:  # the detector keeps sending throughout the run
            uid = 0
            while not stop.is_set():
                uid += 1
                source.publish(np.full((32, 32), 1.0, np.float32), uid,
                               {"PositionX": 0.0, "PositionY": 0.0})
                time.sleep(0.01)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        names = (f"{epics_env['EPICS_PVA_NAME_SERVERS']} "
                 f"127.0.0.1:{edge_env['EPICS_PVA_SERVER_PORT']}")
        ioc = iocs.start(work=tmp_path / "work", edge_prefix=prefix,
                         tables={"compute.parsl": {"provider": "local", "workers": 1}},
                         stages={"export": "ioc_test_stages:export_affine"},
                         extra_env={"EPICS_PVA_NAME_SERVERS": names})
        pva.put(ioc.pv("Compute:Backend"), 1)
        pva.put(ioc.pv("Recon:Epochs"), 3)
        pva.put(ioc.pv("Train:Epochs"), 3)
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan.h5")))
        log = StateLog(pva, ioc.pv("Workflow:State_RBV"))
        n = put_start(pva, ioc)  # the one put
        assert wait_final(pva, ioc, 120, run=n) == "Done", message(pva, ioc) + ioc.log()
        log.close()
        assert log.states == ["Idle", "Transferring", "Reconstructing", "Training",
                              "Deploying", "Done"]
        collector.wait_value(prefix + "Edge:Model:Version_RBV", lambda v: v == 1)
        # the edge went on with the stream: from the swap on, model v1 turns frames into phases
        phases = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 10)
        stop.set()
        streamer.join(5)
        assert {float(f.array.mean()) for f in phases} == {1.0}
        assert edge.alive()
        db = sqlite3.connect(ioc.work / "registry.sqlite")
        row = db.execute("SELECT state, params FROM runs WHERE id=?", (n,)).fetchone()
        deployed = db.execute("SELECT version FROM deployments").fetchall()
        db.close()
        assert row[0] == "Done" and '"compute_backend": "Parsl"' in row[1]
        assert deployed == [(1,)]
    finally:
        stop.set()
        collector.close()
        edge.stop()
        source.stop()


def test_the_demo_loop_runs_through_parsl_from_the_simulator_to_the_edge(tmp_path: Path) -> None:
    """Simulator → scan file → Auto → transfer → rPIE (pty-chi) → training → ONNX → the edge,
    with every compute stage on a Parsl HighThroughputExecutor."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "demo", "--compute", "Parsl", "--out",
         str(tmp_path), "--scans", "1", "--frames", "120", "--recon-epochs", "8",
         "--train-epochs", "4", "--rate", "400", "--json"],
        capture_output=True, text=True, timeout=220, check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.splitlines()[-1])  # --json: one object, the last line
    assert summary["elapsed_s"] > 0 and summary["report"] == summary["runs"][-1]["report"]
    (run,) = summary["runs"]
    assert run["state"] == "Done" and run["model_version"] == 1
    assert "model v1 deployed" in run["message"]
    # the run's report (an edge figure is not required: the IOC may reach the edge's PVs only
    # after this first, short scan)
    report = Path(run["report"])
    assert report.name == "index.html"
    assert {"phase.png", "training.png", "rpie.png"} <= {p.name for p in report.parent.iterdir()}
    assert "edge now serves model v1" in out.stdout
    assert "scan 2: saved as scan_0002.h5; edge processed 120 frames with model v1, dropped 0, " \
           "bad 0" in out.stdout
    db = sqlite3.connect(Path(summary["folder"]) / "work" / "registry.sqlite")
    (params,) = db.execute("SELECT params FROM runs").fetchone()
    db.close()
    assert json.loads(params)["compute_backend"] == "Parsl"
