"""Hot model swap under a steady stream, refused models, and N inference workers."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args

pytestmark = pytest.mark.system

N = 300


def _stream(source: FrameSource, n: int, rate: float) -> threading.Thread:
    def run() -> None:
        t0 = time.monotonic()
        for uid in range(1, n + 1):
            source.publish(np.full((32, 32), 1.0, np.float32), uid,
                           {"PositionX": 0.0, "PositionY": 0.0})
            delay = t0 + uid / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_hot_swap_under_stream_drops_no_frame(start_server, edge_env, prefix,
                                              source: FrameSource, collector: Collector,
                                              model_dir: Path) -> None:
    # a model whose file no longer matches its card, and one outside the model folder
    shutil.copy(model_dir / "model-v1.onnx", model_dir / "model-v3.onnx")
    shutil.copy(model_dir / "model-v2.json", model_dir / "model-v3.json")
    outside = model_dir.parent / "elsewhere" / "model-v9.onnx"
    outside.parent.mkdir()
    shutil.copy(model_dir / "model-v2.onnx", outside)

    edge = start_server(edge_args(prefix, source.pv, model_dir / "model-v1.onnx"), edge_env,
                        name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    collector.watch(prefix + "Edge:Phase")
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 1
    streamer = _stream(source, N, rate=100.0)
    collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 60)
    collector.put(prefix + "Edge:Model:Load", "model-v2.onnx")
    streamer.join(30)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= N)
    assert [f.unique_id for f in got] == list(range(1, N + 1))  # none lost, none twice
    values = [float(f.array.mean()) for f in got]
    assert set(values) == {1.0, 2.0}
    switch = values.index(2.0)
    assert 60 <= switch < N and all(v == 2.0 for v in values[switch:])
    collector.wait_value(prefix + "Edge:Model:Version_RBV", lambda v: v == 2)
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == N)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0

    # refused: checksum mismatch (the old model keeps serving), and a path outside the folder
    collector.put(prefix + "Edge:Model:Load", "3")
    msg = collector.wait_value(prefix + "Edge:Message_RBV", lambda m: "refused" in m)
    assert "sha256" in msg
    with pytest.raises(Exception, match="outside the model folder"):
        collector.put(prefix + "Edge:Model:Load", str(outside))
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 2
    source.publish(np.full((32, 32), 1.0, np.float32), N + 1, {"PositionX": 0.0,
                                                                "PositionY": 0.0})
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= N + 1)
    assert float(got[-1].array.mean()) == 2.0
    assert edge.alive()
    assert edge.stop() == 0  # SIGINT: clean exit


def test_two_workers_share_frames_without_loss_or_duplication(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    edge = start_server(edge_args(prefix, source.pv, model_dir / "model-v1.onnx", "--workers",
                                  "2", "--batch-size", "4"), edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", timeout=60, server=edge)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    _stream(source, 120, rate=200.0).join(30)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 120)
    assert [f.unique_id for f in got] == list(range(1, 121))
    collector.wait_for(prefix + "Edge:Stitched",
                       lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == 120)
    assert edge.alive()


def test_starts_without_a_model_and_serves_the_first_one_loaded(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    args = edge_args(prefix, source.pv, model_dir / "model-v1.onnx")
    i = args.index("--model")
    args = args[:i] + args[i + 2:] + ["--model-dir", str(model_dir)]
    edge = start_server(args, edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    collector.watch(prefix + "Edge:Phase")
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 0
    for uid in range(1, 11):  # frames before any model: counted, not lost silently
        source.publish(np.full((32, 32), 1.0, np.float32), uid,
                       {"PositionX": 0.0, "PositionY": 0.0})
        time.sleep(0.01)
    deadline = time.monotonic() + 20
    while collector.get(prefix + "Edge:Dropped_RBV") != 10:
        assert time.monotonic() < deadline, collector.get(prefix + "Edge:Message_RBV")
        time.sleep(0.2)
    assert "no model loaded" in collector.get(prefix + "Edge:Message_RBV")
    collector.put(prefix + "Edge:Model:Load", "model-v2.onnx")
    while collector.get(prefix + "Edge:Model:Version_RBV") != 2:
        assert time.monotonic() < deadline, collector.get(prefix + "Edge:Message_RBV")
        time.sleep(0.2)
    for uid in range(11, 31):
        source.publish(np.full((32, 32), 1.0, np.float32), uid,
                       {"PositionX": 0.0, "PositionY": 0.0})
        time.sleep(0.01)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 20)
    assert [f.unique_id for f in got] == list(range(11, 31))
    assert {float(f.array.mean()) for f in got} == {2.0}
