"""The edge follows a live stream: predictions, the stitched map, bad frames, restarts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import PIXEL, Collector, FrameSource, edge_args

pytestmark = pytest.mark.system


def _start_edge(start_server, edge_env, prefix, source, model, *extra):
    edge = start_server(edge_args(prefix, source.pv, model, *extra), edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    return edge


@pytest.mark.parametrize("stitching", [(), ("--stitch-process",)], ids=["in-edge", "process"])
def test_predictions_carry_ids_and_stitched_map_matches_object(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path, stitching: tuple[str, ...]) -> None:
    rng = np.random.default_rng(1)
    obj = rng.uniform(-1.0, 1.0, (96, 96)).astype(np.float32)
    edge = _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx",
                       *stitching)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    # 32x32 patches on a 5x5 grid with step 16 px, centred on the object centre
    uid, sent = 0, {}
    t0 = time.time() - 100.0
    for iy in range(5):
        for ix in range(5):
            r, c = 16 * iy, 16 * ix
            patch = obj[r:r + 32, c:c + 32]
            cy, cx = r + 15.5 - 47.5, c + 15.5 - 47.5  # patch centre rel. to object centre
            uid += 1
            sent[uid] = t0 + uid
            source.publish(patch, uid, {"PositionX": cx * PIXEL, "PositionY": cy * PIXEL},
                           ts=sent[uid])
            time.sleep(0.01)
    phases = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 25)
    assert [f.unique_id for f in phases] == list(range(1, 26))
    for f in phases:
        assert f.array.dtype == np.float32
        assert f.timestamp == pytest.approx(sent[f.unique_id], abs=1e-6)
    stitched = collector.wait_for(prefix + "Edge:Stitched",
                                  lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == 25)
    st = stitched[-1]
    assert st.unique_id == 25
    img = st.array
    ox, oy = st.attributes["OriginX"], st.attributes["OriginY"]
    # object pixel (0, 0) is at -47.5 px from the centre; find it on the map
    r0, c0 = round(-47.5 - oy / PIXEL), round(-47.5 - ox / PIXEL)
    assert abs((-47.5 - oy / PIXEL) - r0) < 1e-6 and abs((-47.5 - ox / PIXEL) - c0) < 1e-6
    np.testing.assert_allclose(img[r0:r0 + 96, c0:c0 + 96], obj, atol=1e-5)
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == 25)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    # Stitched:Reset starts a new, empty map
    collector.put(prefix + "Edge:Stitched:Reset", 1)
    collector.wait_for(prefix + "Edge:Stitched",
                       lambda fr: fr[-1].attributes.get("Frames") == 0)
    assert edge.alive()
    # every thread that handles frames says which it is (top -H, the benchmark's breakdown)
    names = set()
    for task in Path(f"/proc/{edge.proc.pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            continue
    assert {"edge-input", "edge-collect", "edge-publish"} <= names, names


def test_a_flipped_transposed_stream_in_microns_gives_the_plain_map(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    """A detector mounted transposed and upside down, a stage in um with x reversed: with the
    matching geometry the edge builds the same map as from frames in ptychoflow's axes."""
    rng = np.random.default_rng(1)
    obj = rng.uniform(-1.0, 1.0, (96, 96)).astype(np.float32)
    _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx",
                "--geometry", "transpose flip_rows x_sign=-1 position_unit=um")
    collector.watch(prefix + "Edge:Stitched")
    uid = 0
    for iy in range(5):
        for ix in range(5):
            r, c = 16 * iy, 16 * ix
            patch = obj[r:r + 32, c:c + 32]
            cy, cx = r + 15.5 - 47.5, c + 15.5 - 47.5
            uid += 1
            # what this beamline sends: geometry.frames(sent) is the plain patch
            sent = np.ascontiguousarray(patch[::-1].T)
            source.publish(sent, uid, {"PositionX": -cx * PIXEL / 1e-6,
                                       "PositionY": cy * PIXEL / 1e-6})
            time.sleep(0.01)
    st = collector.wait_for(prefix + "Edge:Stitched",
                            lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == 25)[-1]
    ox, oy = st.attributes["OriginX"], st.attributes["OriginY"]
    r0, c0 = round(-47.5 - oy / PIXEL), round(-47.5 - ox / PIXEL)
    np.testing.assert_allclose(st.array[r0:r0 + 96, c0:c0 + 96], obj, atol=1e-5)
    assert collector.get(prefix + "Edge:Unplaced_RBV") == 0


def _pos(i: int) -> dict[str, float]:
    return {"PositionX": (i % 8) * 4 * PIXEL, "PositionY": (i // 8) * 4 * PIXEL}


def test_bad_frames_are_counted_and_skipped(start_server, edge_env, prefix, source: FrameSource,
                                            collector: Collector, model_dir: Path) -> None:
    edge = _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx")
    collector.watch(prefix + "Edge:Phase")
    said: list[str] = []  # every Message_RBV update
    sub = collector.ctx.monitor(prefix + "Edge:Message_RBV",
                                lambda v: said.append(str(v["value"])),
                                request="record[queueSize=100]")
    good = np.ones((32, 32), np.float32)
    nan = good.copy()
    nan[3, 4] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    frames = [
        (good, _pos(1)),
        (nan, _pos(2)),                                   # NaN
        (np.ones((16, 16), np.float32), _pos(3)),         # smaller than the network input
        (good, {}),                                       # no position: published, unplaced
        (np.zeros((0, 0), np.float32), _pos(5)),          # empty
        (inf, _pos(6)),                                   # infinity
        (np.ones((32, 32), np.bool_), _pos(7)),           # not a number type
        (good.astype(np.uint8), _pos(8)),                 # fine: any integer type
        (np.ones((40, 40), np.int32), _pos(9)),           # fine: larger frames are binned
    ]
    for uid, (arr, attrs) in enumerate(frames, start=1):
        source.publish(arr, uid, attrs)
        time.sleep(0.02)
    source.publish_undecodable(10)  # does not decode: bad, and not also lost upstream
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 4)
    time.sleep(0.5)
    assert [f.unique_id for f in collector.frames(prefix + "Edge:Phase")] == [1, 4, 8, 9]
    collector.wait_value(prefix + "Edge:BadFrames_RBV", lambda v: v == 6)
    collector.wait_value(prefix + "Edge:Unplaced_RBV", lambda v: v == 1)  # not on the map
    assert any("bad frame" in m for m in said), said
    assert any("left off the map" in m and "frame 4" in m for m in said), said
    sub.close()
    # the service keeps running and processes the next good frame
    source.publish(good, 11, _pos(11))
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 5)
    assert got[-1].unique_id == 11
    # Edge:Enable 0 discards frames, 1 resumes
    collector.put(prefix + "Edge:Enable", 0)
    source.publish(good, 12, _pos(12))
    time.sleep(0.5)
    collector.put(prefix + "Edge:Enable", 1)
    source.publish(good, 13, _pos(13))
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 6)
    assert [f.unique_id for f in got][-2:] == [11, 13]
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0  # no frame lost: each was counted
    assert collector.get(prefix + "Edge:Missed_RBV") == 0
    assert edge.alive()


def test_loss_is_counted_per_hop(start_server, edge_env, prefix, source: FrameSource,
                                 collector: Collector, model_dir: Path) -> None:
    """Gaps in uniqueId are frames the edge never received: Missed_RBV, not Dropped_RBV."""
    edge = _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx")
    collector.watch(prefix + "Edge:Phase")
    good = np.ones((32, 32), np.float32)
    sent = [1, 2, 5, 6, 7, 12]  # 3, 4 and 8-11 lost on the way: six
    for uid in sent:
        source.publish(good, uid, _pos(uid))
        time.sleep(0.02)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= len(sent))
    assert [f.unique_id for f in got] == sent
    collector.wait_value(prefix + "Edge:Missed_RBV", lambda v: v == 6)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    assert collector.get(prefix + "Edge:BadFrames_RBV") == 0
    assert edge.alive()


def test_reconnects_after_source_restart(start_server, edge_env, prefix, source: FrameSource,
                                         collector: Collector, model_dir: Path) -> None:
    edge = _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx")
    collector.watch(prefix + "Edge:Phase")
    frame = np.ones((32, 32), np.uint16)
    for uid in range(1, 6):
        source.publish(frame, uid, _pos(uid))
        time.sleep(0.02)
    collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 5)
    source.stop()
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: "went away" in m)
    time.sleep(1.0)
    source.start()  # a new scan: ids start again at 1
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: m.startswith("connected to"))
    for uid in range(1, 6):
        source.publish(frame * 3, uid, _pos(uid))
        time.sleep(0.02)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 10)
    assert [f.unique_id for f in got] == [1, 2, 3, 4, 5] * 2
    assert got[-1].array.mean() == pytest.approx(3.0)
    assert edge.alive()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fixed_batch_model_without_card(start_server, edge_env, prefix, source: FrameSource,
                                        collector: Collector, tmp_path: Path,
                                        engine: str) -> None:
    from ptychoflow.edge.bench.models import affine_model

    if engine == "openvino":
        pytest.importorskip("openvino")
    model = affine_model(tmp_path / "m" / "net.onnx", 32, batch=4)  # no card: sqrt, no map
    # --no-fp16: OpenVINO in float32, so its outputs are exact like ONNX Runtime's
    edge = _start_edge(start_server, edge_env, prefix, source, model, "--no-stitch",
                       "--latency-budget-ms", "50", "--engine", engine, "--no-fp16")
    collector.watch(prefix + "Edge:Phase")
    for uid in range(1, 11):  # 10 frames: batches of 4, 4 and a padded 2
        source.publish(np.full((32, 32), uid * uid, np.uint16), uid)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 10)
    assert [f.unique_id for f in got] == list(range(1, 11))
    for f in got:  # default preprocessing of a card-less model: sqrt
        np.testing.assert_allclose(f.array, f.unique_id, rtol=1e-6)
    assert edge.alive()


def _stitch_child(parent: int, timeout: float = 20.0) -> int:
    """The pid of the edge's stitching process (its name is edge-stitch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and comm == "edge-stitch":
                return int(d.name)
        time.sleep(0.1)
    raise AssertionError("no edge-stitch child of the edge")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the child in /proc")
def test_a_dead_stitching_process_is_replaced_in_process(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    import os
    import signal

    edge = _start_edge(start_server, edge_env, prefix, source, model_dir / "model-v1.onnx",
                       "--stitch-process")
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    frame = np.ones((32, 32), np.float32)
    for uid in range(1, 6):
        source.publish(frame, uid, _pos(uid))
        time.sleep(0.02)
    collector.wait_for(prefix + "Edge:Stitched",
                       lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == 5)
    os.kill(_stitch_child(edge.proc.pid), signal.SIGKILL)
    for uid in range(6, 11):
        source.publish(frame, uid, _pos(uid))
        time.sleep(0.02)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 10)
    assert [f.unique_id for f in got] == list(range(1, 11))  # no frame lost to the crash
    collector.wait_value(prefix + "Edge:Message_RBV",
                         lambda m: "stitching in the edge process" in m)
    # the map goes on in the edge process: new frames are stitched again
    for uid in range(11, 14):
        source.publish(frame, uid, _pos(uid))
        time.sleep(0.02)
    collector.wait_for(prefix + "Edge:Stitched",
                       lambda fr: fr[-1].unique_id == 13 and fr[-1].attributes["Frames"] >= 3)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    assert edge.alive()
