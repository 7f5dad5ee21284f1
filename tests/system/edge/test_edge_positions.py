"""Frames without position attributes are placed by motor readbacks or a position stream.

The frames carry no ``PositionX``/``PositionY``; the positions come on channels of
their own, served from the test: two motor readbacks (NTScalar over pvAccess, or
Channel Access from a caproto server) or one NTTable stream (rows with times or
uniqueIds). Each position is stamped within +-1 ms of its frame's time and sent
50 ms after the frame. The stitched map must be the object the frames were cut
from, exactly as with attributes; two frames that have no position near their
time are published all the same, counted in Edge:Unplaced_RBV and left off the map.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.epicsenv import isolated_env, pva_conf
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import PIXEL, Collector, FrameSource, edge_args

pytestmark = pytest.mark.system

UNPLACED = (8, 20)  # frames with no position sent anywhere near their time
N = 25 + len(UNPLACED)
DELAY_S = 0.05  # positions leave 50 ms after their frame
# the collector's wait for late positions: generous on a loaded CI box (each frame is
# covered as soon as its positions or the next frame's arrive; the bound is unit-tested)
WAIT = ("--position-wait-ms", "1000")

Post = Callable[[int, float, float, float], None]  # (uid, frame time, x, y)


@pytest.fixture
def positions_env() -> dict[str, str]:
    return isolated_env()


@pytest.fixture
def edge_env(edge_env: dict[str, str], positions_env: dict[str, str]) -> dict[str, str]:
    """The edge also finds the position PVs' server."""
    env = dict(edge_env)
    env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{positions_env['EPICS_PVA_SERVER_PORT']}"
    return env


class PvaPositions:
    """Position PVs served from the test: p4p SharedPVs on a server of their own."""

    def __init__(self, env: dict[str, str], pvs: dict[str, Any]) -> None:
        from p4p.server import Server

        self.pvs = pvs
        self.server = Server(providers=[pvs], conf=pva_conf(env), useenv=False)

    def close(self) -> None:
        for pv in self.pvs.values():
            pv.close()
        self.server.stop()


@pytest.fixture
def served() -> Iterator[list[PvaPositions]]:
    held: list[PvaPositions] = []
    yield held
    for p in held:
        p.close()


def _run_scan(start_server: Any, edge_env: dict[str, str], prefix: str,
              source: FrameSource | ScatterSource,
              collector: Collector, model: Path, post: Post, flush: Callable[[], None],
              *position_args: str) -> None:
    """A 5x5 scan of a known object plus two frames with no position, through the edge."""
    rng = np.random.default_rng(7)
    obj = rng.uniform(-1.0, 1.0, (96, 96)).astype(np.float32)
    edge = start_server(edge_args(prefix, source.pv, model, *position_args, *WAIT),
                        edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    grid = iter([(iy, ix) for iy in range(5) for ix in range(5)])
    for uid in range(1, N + 1):
        ts = time.time()  # frames 50+ ms apart: a position is within 5 ms of one frame only
        if uid in UNPLACED:  # garbage that must never reach the map
            source.publish(np.full((32, 32), 50.0, np.float32), uid, ts=ts)
            time.sleep(DELAY_S)
            continue
        iy, ix = next(grid)
        r, c = 16 * iy, 16 * ix
        source.publish(obj[r:r + 32, c:c + 32], uid, ts=ts)  # no position attributes
        time.sleep(DELAY_S)
        cy, cx = r + 15.5 - 47.5, c + 15.5 - 47.5
        post(uid, ts, cx * PIXEL, cy * PIXEL)
    flush()
    phases = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= N)
    # every frame published once, the unplaced ones too (lanes publish in their own order)
    assert sorted(f.unique_id for f in phases) == list(range(1, N + 1))
    collector.wait_value(prefix + "Edge:Unplaced_RBV", lambda v: v == len(UNPLACED))
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == N)
    time.sleep(0.3)  # one more map update at most 10/s: none may bring a wrong patch
    st = collector.frames(prefix + "Edge:Stitched")[-1]
    assert st.attributes["Frames"] == 25  # only the placed frames
    ox, oy = st.attributes["OriginX"], st.attributes["OriginY"]
    r0, c0 = round(-47.5 - oy / PIXEL), round(-47.5 - ox / PIXEL)
    assert abs((-47.5 - oy / PIXEL) - r0) < 1e-6 and abs((-47.5 - ox / PIXEL) - c0) < 1e-6
    np.testing.assert_allclose(st.array[r0:r0 + 96, c0:c0 + 96], obj, atol=1e-5)
    outside = st.array.copy()
    outside[r0:r0 + 96, c0:c0 + 96] = 0.0
    assert not outside.any()  # nothing placed anywhere else (0: no patch there)
    assert collector.get(prefix + "Edge:BadFrames_RBV") == 0
    assert edge.alive()


def _jitter(rng: np.random.Generator) -> float:
    return float(rng.uniform(-1e-3, 1e-3))


def test_motor_readbacks_over_pva_place_frames_like_attributes(
        start_server, edge_env, positions_env, prefix, source: FrameSource,
        collector: Collector, model_dir: Path, served: list[PvaPositions]) -> None:
    from p4p.nt import NTScalar
    from p4p.server.thread import SharedPV

    x = SharedPV(nt=NTScalar("d"), initial=0.0)
    y = SharedPV(nt=NTScalar("d"), initial=0.0)
    served.append(PvaPositions(positions_env, {prefix + "m1.RBV": x, prefix + "m2.RBV": y}))
    rng = np.random.default_rng(3)

    def post(uid: int, ts: float, px: float, py: float) -> None:
        x.post(px, timestamp=ts + _jitter(rng))
        y.post(py, timestamp=ts + _jitter(rng))

    _run_scan(start_server, edge_env, prefix, source, collector, model_dir / "model-v1.onnx",
              post, lambda: None,
              "--position-x-pv", prefix + "m1.RBV", "--position-y-pv", prefix + "m2.RBV")


@pytest.mark.parametrize("key", ["timestamp", "uniqueId"])
def test_a_position_stream_places_frames_by_time_or_unique_id(
        start_server, edge_env, positions_env, prefix, source: FrameSource,
        collector: Collector, model_dir: Path, served: list[PvaPositions], key: str) -> None:
    from p4p.nt import NTTable
    from p4p.server.thread import SharedPV

    cols = [("x", "d"), ("y", "d"), ("timestamp", "d") if key == "timestamp" else ("uniqueId", "i")]
    table = SharedPV(nt=NTTable(cols), initial=[])
    served.append(PvaPositions(positions_env, {prefix + "PandA:Positions": table}))
    rng = np.random.default_rng(5)
    rows: list[dict[str, float]] = []

    def flush() -> None:
        if rows:
            table.post(list(rows))
            rows.clear()

    def post(uid: int, ts: float, px: float, py: float) -> None:
        rows.append({"x": px, "y": py,
                     key: ts + _jitter(rng) if key == "timestamp" else uid})
        if len(rows) == 2:  # several positions in one update, as a capture block sends them
            flush()

    _run_scan(start_server, edge_env, prefix, source, collector, model_dir / "model-v1.onnx",
              post, flush, "--position-stream-pv", prefix + "PandA:Positions")


class CaMotors:
    """Two motor readbacks over Channel Access: a caproto server on a thread of the test."""

    def __init__(self, prefix: str) -> None:
        from caproto.asyncio.server import Context
        from caproto.server import PVGroup, pvproperty

        class Motors(PVGroup):
            x = pvproperty(value=0.0, name="m1:RBV")
            y = pvproperty(value=0.0, name="m2:RBV")

        self.group = Motors(prefix=prefix)
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        started = threading.Event()

        async def serve() -> None:
            self._task = asyncio.current_task()
            ctx = Context(self.group.pvdb, ["127.0.0.1"])  # in the loop it runs in
            started.set()
            await ctx.run(log_pv_names=False)

        def run() -> None:
            try:
                self.loop.run_until_complete(serve())
            except asyncio.CancelledError:
                pass

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    def post(self, axis: str, value: float, ts: float) -> None:
        prop = getattr(self.group, axis)
        asyncio.run_coroutine_threadsafe(prop.write(value, timestamp=ts), self.loop).result(5)

    def close(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(10)


def test_motor_readbacks_over_channel_access(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the CA server answers on the port the edge's CA client searches, on loopback only
    for k in ("EPICS_CA_SERVER_PORT", "EPICS_CA_REPEATER_PORT", "EPICS_CAS_INTF_ADDR_LIST"):
        monkeypatch.setenv(k, edge_env[k])
    beacons = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the server's beacons
    beacons.bind(("127.0.0.1", 0))
    monkeypatch.setenv("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
    monkeypatch.setenv("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
    monkeypatch.setenv("EPICS_CAS_BEACON_PORT", str(beacons.getsockname()[1]))
    motors = CaMotors(prefix)
    rng = np.random.default_rng(11)

    def post(uid: int, ts: float, px: float, py: float) -> None:
        motors.post("x", px, ts + _jitter(rng))
        motors.post("y", py, ts + _jitter(rng))

    try:
        _run_scan(start_server, edge_env, prefix, source, collector,
                  model_dir / "model-v1.onnx", post, lambda: None,
                  "--position-x-pv", f"ca://{prefix}m1:RBV",
                  "--position-y-pv", f"ca://{prefix}m2:RBV")
    finally:
        motors.close()
        beacons.close()


class ScatterSource:
    """Frames handed round two NTNDArray PVs (NDPluginScatter): the edge runs a lane for each."""

    def __init__(self, prefix: str) -> None:
        from p4p.server.thread import SharedPV

        from ptychoflow.ntnda import placeholder

        names = [prefix + "Pva1:Image", prefix + "Pva2:Image"]
        self.pv = " ".join(names)
        self.pvs = dict(zip(names, [SharedPV(initial=placeholder()) for _ in names],
                            strict=True))
        self.shared = list(self.pvs.values())

    def publish(self, array: np.ndarray, uid: int, attrs: dict[str, Any] | None = None,
                ts: float | None = None) -> None:
        from ptychoflow.ntnda import make_frame

        self.shared[(uid - 1) % 2].post(make_frame(array, uid, ts, attrs))


def test_each_lane_subscribes_to_the_motor_readbacks_itself(
        start_server, edge_env, positions_env, prefix, collector: Collector,
        model_dir: Path, served: list[PvaPositions]) -> None:
    from p4p.nt import NTScalar
    from p4p.server.thread import SharedPV

    x = SharedPV(nt=NTScalar("d"), initial=0.0)
    y = SharedPV(nt=NTScalar("d"), initial=0.0)
    scatter = ScatterSource(prefix)
    served.append(PvaPositions(positions_env, {prefix + "m1.RBV": x, prefix + "m2.RBV": y,
                                               **scatter.pvs}))
    rng = np.random.default_rng(13)

    def post(uid: int, ts: float, px: float, py: float) -> None:
        x.post(px, timestamp=ts + _jitter(rng))
        y.post(py, timestamp=ts + _jitter(rng))

    _run_scan(start_server, edge_env, prefix, scatter, collector,
              model_dir / "model-v1.onnx", post, lambda: None,
              "--position-x-pv", prefix + "m1.RBV", "--position-y-pv", prefix + "m2.RBV")
