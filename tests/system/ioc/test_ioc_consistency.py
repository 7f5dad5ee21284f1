"""The physics check end to end: a model trained on simulated test-pattern scans, served by
a real edge, keeps Edge:Consistency_RBV near its card's value on a scan like its training
scans; a scan of another kind of sample raises it past the factor, and the IOC in Auto mode
starts a retraining run on the current scan, saying why in Workflow:Message_RBV.

Training is tiny (64x64 frames, 100 positions, a few epochs: under a minute on two
cores); the IOC's retraining run uses the test stages.
"""

from __future__ import annotations

import math
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ioc_workflow import run_id

from ptychoflow.epicsenv import isolated_env
from tests.conftest import ServerProcess, wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args

pytest.importorskip("torch")
pytest.importorskip("ptychi")
pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

SIM = {"size": 64, "step_m": 4e-7, "photons": 1e6, "probe_diameter_px": 36}


def _texture(path: Path, seed: int) -> Path:
    """Another kind of sample: a random binary texture of 2-3 pixel grains (no star, no
    rings), made here; it scatters far more strongly than the test pattern."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((160, 160)), 1.5) > 0
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ptychoflow.remote import stages
    from ptychoflow.scanfile import write_scan
    from ptychoflow.sim.physics import simulate_scan

    d = tmp_path_factory.mktemp("consistency")
    train = write_scan(d / "train.h5", simulate_scan(n_frames=100, seed=1, **SIM))
    params: dict[str, Any] = {"recon_epochs": 10, "train_epochs": 5, "train_batch_size": 8,
                              "device": "cpu", "seed": 0, "tensorrt": False,
                              "path": str(train), "train_dir": str(d / "ts"),
                              "model_dir": str(d / "models")}
    params.update(stages.reconstruct(str(train), str(d), params))
    params.update(stages.train(str(train), str(d), params))
    result = stages.export(str(train), str(d), params)
    like = simulate_scan(n_frames=100, seed=2, **SIM)  # the same kind of sample, new blobs
    other = simulate_scan(n_frames=100, seed=3, obj=_texture(d / "texture.png", 5), **SIM)
    return {"result": result, "like": like, "other": other}


def _text(v: Any) -> str:
    raw = v.raw.value
    return raw if isinstance(raw, str) else bytes(np.asarray(raw, np.uint8)).rstrip(
        b"\0").decode()


def test_a_model_card_records_the_check_and_its_probe(trained: dict[str, Any]) -> None:
    from ptychoflow.modelcard import ModelCard

    r = trained["result"]
    card = ModelCard.load(r["card"])
    assert card.probe["file"] == "model-v1-probe.npy" and Path(r["probe"]).is_file()
    assert 0 < card.metrics["consistency"] < 1
    assert r["metrics"]["consistency"] == card.metrics["consistency"]


def test_drift_on_another_sample_starts_a_retraining_run(
        trained: dict[str, Any], iocs: Any, pva: Any, epics_env: dict[str, str],
        tmp_path: Path) -> None:
    from ptychoflow.ioc.registry import Registry
    from ptychoflow.modelcard import sha256_file
    from ptychoflow.scanfile import write_scan

    r = trained["result"]
    card_value = float(r["metrics"]["consistency"])
    source_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{source_env['EPICS_PVA_SERVER_PORT']}"
    prefix = "PHYS" + tmp_path.name[-6:].replace("_", "") + ":"
    source = FrameSource(source_env, prefix + "Src:Image")
    edge = ServerProcess([sys.executable, "-m", "ptychoflow.cli",
                          *edge_args(prefix, source.pv, Path(r["model"]), "--check-every", "1",
                                     "--no-resume")], edge_env, tmp_path / "edge.log")
    collector = Collector(edge_env)
    stop = threading.Event()
    scan = {"now": trained["like"]}

    def stream() -> None:  # the detector streams whichever scan the test says, in a loop
        uid = 0
        while not stop.is_set():
            s = scan["now"]
            i = uid % s.n_frames
            uid += 1
            source.publish(s.data[i], uid, {"PositionX": float(s.positions[i, 1]),
                                            "PositionY": float(s.positions[i, 0])})
            time.sleep(0.01)

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
        collector.watch(prefix + "Edge:Phase")
        streamer.start()
        value = prefix + "Edge:Consistency_RBV"
        # a scan like the training scans: the running value stays near the card's
        collector.wait_value(value, lambda v: math.isfinite(v), 60)
        seen = []
        for _ in range(8):
            seen.append(float(collector.get(value)))
            time.sleep(0.25)
        assert all(0.7 * card_value < v < 1.25 * card_value for v in seen), (card_value, seen)
        phases = collector.wait_for(prefix + "Edge:Phase",
                                    lambda f: any("Consistency" in x.attributes for x in f))
        assert any(0 < x.attributes.get("Consistency", -1) < 1 for x in phases)

        # the IOC knows the served model (registered as a run's export would) and watches
        work = tmp_path / "work"
        work.mkdir()
        registry = Registry(work / "registry.sqlite")
        registry.add_model(1, r["model"], sha256_file(r["model"]),
                           {"consistency": card_value}, {}, None)
        registry.close()
        names = (f"{epics_env['EPICS_PVA_NAME_SERVERS']} "
                 f"127.0.0.1:{edge_env['EPICS_PVA_SERVER_PORT']}")
        ioc = iocs.start(work=work, edge_prefix=prefix,
                         extra_env={"EPICS_PVA_NAME_SERVERS": names})
        current = write_scan(ioc.data / "texture-scan.h5", trained["other"])
        messages: list[str] = []
        sub = pva.monitor(ioc.pv("Workflow:Message_RBV"), lambda v: messages.append(_text(v)))
        pva.put(ioc.pv("Model:ConsistencyFactor"), 1.4)
        pva.put(ioc.pv("Model:ConsistencyHold"), 2.0)
        pva.put(ioc.pv("Workflow:Auto"), 1)  # the scan file is there already: not queued
        time.sleep(4.0)  # more than the hold, on the scan like the training scans
        assert run_id(pva, ioc) == 0, messages

        scan["now"] = trained["other"]  # another kind of sample
        collector.wait_value(value, lambda v: v > 1.4 * card_value, 60)
        deadline = time.monotonic() + 30
        while run_id(pva, ioc) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        sub.close()
        assert run_id(pva, ioc) == 1, "\n".join(messages) + ioc.log()
        why = [m for m in messages if "retraining on texture-scan.h5" in m]
        assert why and "physics misfit" in why[0] and "Model:ConsistencyFactor 1.4" in why[0], \
            messages
        db = sqlite3.connect(ioc.work / "registry.sqlite")
        scan_db, params = db.execute("SELECT scan, params FROM runs WHERE id=1").fetchone()
        db.close()
        assert scan_db == str(current) and "retrain_reason" in params
    finally:
        stop.set()
        collector.close()
        edge.stop()
        source.stop()
