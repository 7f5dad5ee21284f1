"""A Bluesky plan records the edge's map of one simulated scan, under a real RunEngine.

The simulator and the edge run as ``ptychoflow sim`` and ``ptychoflow edge`` on their own
loopback ports; the edge follows the simulator's image PV. The ophyd-async devices in this
process reach both through ``EPICS_PVA_NAME_SERVERS``, set in ``os.environ`` while the test
runs, as a beamline's EPICS variables would be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.edge.bench.models import affine_model
from ptychoflow.epicsenv import isolated_env
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, edge_args

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

FRAMES = 80
PIXEL = 1e-8
RATE = 400.0  # Hz; the simulator starts at its default, 100


@pytest.fixture
def envs() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(simulator's, edge's) environments; the edge's, which finds both, is this process's.

    ophyd-async makes its one pvAccess client from os.environ at first use and keeps it
    for the process, so the test gives it one made now and puts the old one back after.
    """
    from ophyd_async.epics.core import _p4p
    from p4p.client.asyncio import Context

    sim_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{sim_env['EPICS_PVA_SERVER_PORT']}"
    epics = {k: v for k, v in edge_env.items() if k.startswith("EPICS_")}
    saved_env, saved_client = {k: os.environ.get(k) for k in epics}, _p4p._context
    os.environ.update(epics)
    _p4p._context = Context("pva", nt=False)
    yield sim_env, edge_env
    _p4p._context.close()
    _p4p._context = saved_client
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def RE() -> Iterator[Any]:
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()
    engine.loop.call_soon_threadsafe(engine.loop.stop)


def test_record_edge_map_records_the_map_of_one_scan_in_one_event(
        start_server, envs, RE, prefix: str, tmp_path: Path) -> None:
    from ophyd_async.core import init_devices

    from ptychoflow.ioc.devices_edge import EdgeDetector, SimDetector
    from ptychoflow.ioc.plans import record_edge_map

    sim_env, edge_env = envs
    sim_server = start_server(["sim", "--prefix", prefix, "--frames", str(FRAMES), "--size", "64",
                               "--out", "", "--wait", "--delay", "0"], sim_env, name="sim")
    model = affine_model(tmp_path / "models" / "net.onnx", 64)
    edge_server = start_server(edge_args(prefix, prefix + "Pva1:Image", model, "--pixel-size-m",
                                         str(PIXEL)), edge_env, name="edge")
    wait_for_pva(sim_env, prefix + "cam1:Acquire", server=sim_server)
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge_server, timeout=60)
    watcher = Collector(edge_env)
    try:  # frames sent before the edge follows the detector would never reach it
        watcher.wait_value(prefix + "Edge:Message_RBV", lambda m: m.startswith("connected to"))
    finally:
        watcher.close()

    with init_devices():
        edge = EdgeDetector(prefix)
        sim = SimDetector(prefix)
    docs: list[tuple[str, dict[str, Any]]] = []
    result = RE(record_edge_map(edge, sim, rate=RATE, settle_s=20),
                lambda name, doc: docs.append((name, doc))).plan_result
    why = edge_server.log()[-3000:]

    assert result == {"frames": FRAMES, "caught_up": True}, why
    assert [name for name, _ in docs] == ["start", "descriptor", "event", "stop"]
    start, descriptor, event, stop = (doc for _, doc in docs)
    assert start["plan_name"] == "record_edge_map"
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 1}
    data, keys = event["data"], descriptor["data_keys"]

    phase_map = data["edge-stitched"]
    assert isinstance(phase_map, np.ndarray) and phase_map.ndim == 2
    assert phase_map.dtype == np.float32 and np.isfinite(phase_map).all()
    assert keys["edge-stitched"]["dtype"] == "array"
    assert keys["edge-stitched"]["shape"] == list(phase_map.shape)
    assert keys["edge-stitched"]["source"] == f"pva://{prefix}Edge:Stitched"
    assert min(phase_map.shape) > 64  # the scan covers more than one frame
    assert phase_map.std() > 0
    assert data["edge-stitched_pixel_size"] == pytest.approx(PIXEL)
    assert data["edge-stitched_frames"] == FRAMES  # every frame on the map
    assert data["sim-cam1_array_counter"] == FRAMES  # sent
    assert data["edge-processed"] == FRAMES, why  # and every one of them processed
    assert data["edge-missed"] == data["edge-dropped"] == data["edge-bad_frames"] == 0
    assert data["edge-unplaced"] == 0
    assert data["edge-model_version"] == 0  # a card-less model file
    config = descriptor["configuration"]
    assert config["edge"]["data"]["edge-input"] == prefix + "Pva1:Image"
    assert config["sim"]["data"]["sim-cam1_acquire_rate"] == RATE
