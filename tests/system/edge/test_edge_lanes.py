"""Lanes: frames split over several PVs (areaDetector's NDPluginScatter), one lane process each.

Every frame is published once, whichever lane it came through; the map holds
them all; a hot swap reaches every lane without losing a frame; a lane's bad
frames are counted by the edge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.edge.bench.models import affine_model
from ptychoflow.epicsenv import pva_conf
from ptychoflow.ntnda import make_frame, placeholder
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, edge_args

pytestmark = pytest.mark.system


class TwoPVSource:
    """Two NTNDArray PVs on one server, as NDPluginScatter feeding two NDPluginPva."""

    def __init__(self, env: dict[str, str], prefix: str) -> None:
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        self.pvs = [prefix + "Pva1:Image", prefix + "Pva2:Image"]
        self.shared = [SharedPV(initial=placeholder()) for _ in self.pvs]
        self.server = Server(providers=[dict(zip(self.pvs, self.shared, strict=True))],
                             conf=pva_conf(env), useenv=False)

    def publish(self, array: np.ndarray, uid: int, attrs: dict[str, Any]) -> None:
        """Frame ``uid`` goes to PV ``(uid - 1) mod 2``, as the scatter hands them round."""
        self.shared[(uid - 1) % 2].post(make_frame(array, uid, None, attrs))

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def two(source_env: dict[str, str], prefix: str) -> Iterator[TwoPVSource]:
    src = TwoPVSource(source_env, prefix)
    yield src
    src.stop()


def test_lanes_follow_a_scattered_simulator(start_server, source_env, edge_env, prefix,
                                            collector: Collector, tmp_path: Path) -> None:
    n = 80
    sim = start_server(["sim", "--prefix", prefix, "--frames", str(n), "--size", "64",
                        "--rate", "200", "--out", "", "--wait", "--delay", "0",
                        "--scatter", "2"], source_env, name="sim")
    model = affine_model(tmp_path / "models" / "net.onnx", 64)
    inputs = f"{prefix}Pva1:Image {prefix}Pva2:Image"
    edge = start_server(edge_args(prefix, inputs, model, "--pixel-size-m", "1e-8"), edge_env,
                        name="edge")
    wait_for_pva(source_env, prefix + "cam1:Acquire", server=sim)
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", timeout=60, server=edge)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: m == "connected to all 2 inputs")
    collector.put(prefix + "cam1:Acquire", 1)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n, timeout=60)
    assert sorted(f.unique_id for f in got) == list(range(1, n + 1))  # once each
    assert got[0].array.shape == (64, 64)
    st = collector.wait_for(prefix + "Edge:Stitched",
                            lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == n)
    assert st[-1].array.shape[0] > 64
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == n)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    assert collector.get(prefix + "Edge:BadFrames_RBV") == 0
    assert edge.stop() == 0


def _settled(edge: Any) -> int:
    """How often the edge's ledger has settled so far (it says so in its log)."""
    return edge.log().count("ledger settled")


def _wait_settled(edge: Any, before: int, timeout: float = 30.0) -> None:
    """Until the ledger settles again: every frame accounted for, nothing in flight."""
    deadline = time.monotonic() + timeout
    while _settled(edge) <= before:
        assert time.monotonic() < deadline, edge.log()[-3000:]
        time.sleep(0.1)
    time.sleep(0.2)  # the status post that carries the settled count follows the log line


def _stream(src: TwoPVSource, first: int, last: int, rate: float) -> threading.Thread:
    def run() -> None:
        t0 = time.monotonic()
        for uid in range(first, last + 1):
            src.publish(np.full((32, 32), 1.0, np.float32), uid,
                        {"PositionX": 0.0, "PositionY": 0.0})
            delay = t0 + (uid - first + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_lanes_swap_models_without_loss_and_count_bad_frames(
        start_server, edge_env, prefix, two: TwoPVSource, collector: Collector,
        model_dir: Path) -> None:
    n = 300
    edge = start_server(edge_args(prefix, " ".join(two.pvs), model_dir / "model-v1.onnx"),
                        edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", timeout=60, server=edge)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: m == "connected to all 2 inputs")
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 1
    streamer = _stream(two, 1, n, rate=100.0)
    collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 60)
    collector.put(prefix + "Edge:Model:Load", "model-v2.onnx")
    with pytest.raises(Exception, match="already being loaded"):
        collector.put(prefix + "Edge:Model:Load", "model-v2.onnx")
    streamer.join(30)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n)
    assert sorted(f.unique_id for f in got) == list(range(1, n + 1))  # none lost, none twice
    for lane in (1, 0):  # each lane switches once, between two of its frames
        values = [float(f.array.mean()) for f in got if f.unique_id % 2 == lane]
        assert set(values) == {1.0, 2.0}
        switch = values.index(2.0)
        assert all(v == 2.0 for v in values[switch:])
    collector.wait_value(prefix + "Edge:Model:Version_RBV", lambda v: v == 2)
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == n)
    collector.wait_for(prefix + "Edge:Stitched",
                       lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == n)

    # a bad frame in each lane: counted and skipped, the lanes go on
    two.publish(np.full((32, 32), np.nan, np.float32), n + 1, {"PositionX": 0.0,
                                                              "PositionY": 0.0})
    two.publish(np.zeros((5, 7), np.float32), n + 2, {"PositionX": 0.0, "PositionY": 0.0})
    two.publish(np.full((32, 32), 1.0, np.float32), n + 3, {"PositionX": 0.0,
                                                            "PositionY": 0.0})
    collector.wait_value(prefix + "Edge:BadFrames_RBV", lambda v: v == 2)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n + 1)
    assert got[-1].unique_id == n + 3 and float(got[-1].array.mean()) == 2.0
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    # two frames lost before the edge (never sent): no lane can tell, the edge process can
    for uid in (n + 6, n + 7):
        two.publish(np.full((32, 32), 1.0, np.float32), uid, {"PositionX": 0.0,
                                                              "PositionY": 0.0})
    collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n + 3)
    collector.wait_value(prefix + "Edge:Missed_RBV", lambda v: v == 2)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0  # the network's loss, not the edge's
    # frames discarded while disabled were seen: not counted as lost
    collector.put(prefix + "Edge:Enable", 0)
    settled = _settled(edge)
    for uid in (n + 8, n + 9, n + 10):
        two.publish(np.full((32, 32), 1.0, np.float32), uid, {"PositionX": 0.0,
                                                              "PositionY": 0.0})
    _wait_settled(edge, settled)  # every frame discarded, and accounted for
    collector.put(prefix + "Edge:Enable", 1)
    settled = _settled(edge)
    for uid in (n + 11, n + 12):
        two.publish(np.full((32, 32), 1.0, np.float32), uid, {"PositionX": 0.0,
                                                              "PositionY": 0.0})
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n + 5)
    assert [f.unique_id for f in got[n + 3:]] in ([n + 11, n + 12], [n + 12, n + 11])
    _wait_settled(edge, settled)  # the ledger settles once nothing is in flight
    assert collector.get(prefix + "Edge:Missed_RBV") == 2
    # another number of inputs than lanes is refused at the put
    with pytest.raises(Exception, match="runs 2 lanes"):
        collector.put(prefix + "Edge:Input", two.pvs[0])
    assert edge.alive()
    assert edge.stop() == 0


def test_a_lane_that_dies_is_restarted_and_its_losses_counted(
        start_server, edge_env, prefix, two: TwoPVSource, collector: Collector,
        model_dir: Path) -> None:
    import os
    import signal

    from ptychoflow.edge.bench.pipeline import children

    edge = start_server(edge_args(prefix, " ".join(two.pvs), model_dir / "model-v1.onnx"),
                        edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", timeout=60, server=edge)
    collector.watch(prefix + "Edge:Phase")
    said: list[str] = []  # every Message_RBV update: they follow each other quickly
    sub = collector.ctx.monitor(prefix + "Edge:Message_RBV",
                                lambda v: said.append(str(v["value"])),
                                request="record[queueSize=100]")
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: m == "connected to all 2 inputs")
    _stream(two, 1, 40, rate=200.0).join(30)
    collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 40)
    lane1 = [pid for pid, name in children(edge.proc.pid).items() if name == "edge-lane1"]
    assert len(lane1) == 1
    os.kill(lane1[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    # gone, restarted, and connected again (the edge says so once every lane is)
    while not any("restarted" in m for m in said) or said[-1] != "connected to all 2 inputs":
        assert time.monotonic() < deadline, said
        time.sleep(0.1)
    assert any("has gone" in m for m in said)
    _stream(two, 41, 80, rate=200.0).join(30)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 80)
    # the restarted lane did not publish again the frame its source re-sent on connecting
    assert sorted(f.unique_id for f in got) == list(range(1, 81))
    again = [pid for pid, name in children(edge.proc.pid).items() if name == "edge-lane1"]
    assert len(again) == 1 and again != lane1
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    # dead again within 10 s of its restart: restarted after a wait, not in a tight loop
    said.clear()
    os.kill(again[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not any("died again" in m for m in said):
        assert time.monotonic() < deadline, said
        time.sleep(0.1)
    assert "restarting it in 10 s" in [m for m in said if "died again" in m][0], said
    # meanwhile lane 1's frames (even ids) reach no one; its source keeps the last, 100,
    # and sends it to the restarted lane on connecting
    _stream(two, 81, 100, rate=200.0).join(30)
    deadline = time.monotonic() + 60
    while not any("restarted" in m for m in said) or said[-1] != "connected to all 2 inputs":
        assert time.monotonic() < deadline, said
        time.sleep(0.1)
    settled = _settled(edge)
    _stream(two, 101, 120, rate=200.0).join(30)
    lost = set(range(82, 100, 2))
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 120 - len(lost))
    _wait_settled(edge, settled)  # idle: the ledger settles its tail, and counts no more
    assert sorted(f.unique_id for f in collector.frames(prefix + "Edge:Phase")) == sorted(
        set(range(1, 121)) - lost)
    assert collector.get(prefix + "Edge:Missed_RBV") == len(lost)  # sent to a dead lane
    sub.close()
    assert edge.stop() == 0
