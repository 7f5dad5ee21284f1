"""The edge and simulator devices hold one typed field per PV of their table, and the edge
device behaves as a live detector: staging starts a new map, a reading is the map with its
own pixel size and origin plus the counters of this scan. No servers: mock signals, and a
fake pvAccess client serving the map's NTNDArray.
"""

from __future__ import annotations

import typing
from typing import Any

import numpy as np
import pytest
from ophyd_async.core import SignalR, SignalRW, get_mock_put, set_mock_value
from ophyd_async.epics.core import PvSuffix

from ptychoflow.ioc.devices_edge import EdgeDetector, SimDetector
from ptychoflow.ntnda import make_frame
from ptychoflow.pvnames import DETECTOR, EDGE, PVSpec, attr_name

TYPES = {"NTNDArray": np.ndarray, "NTScalar:i": int, "NTScalar:l": int, "NTScalar:d": float,
         "NTScalar:s": str}
TABLES = [(EdgeDetector, EDGE, "Edge:"), (SimDetector, DETECTOR, "")]


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: hint for name, hint in hints.items()
            if typing.get_origin(hint) is typing.Annotated}


@pytest.mark.parametrize(("cls", "table", "strip"), TABLES, ids=["edge", "sim"])
def test_each_device_has_one_typed_field_per_pv_of_its_table(cls: type, table: Any,
                                                             strip: str) -> None:
    fields = _fields(cls)
    assert list(fields) == [attr_name(s.suffix, strip) for s in table] == list(table._fields)
    for spec in table:
        signal, address, *_format = typing.get_args(fields[attr_name(spec.suffix, strip)])
        assert address == PvSuffix(spec.suffix)
        assert typing.get_origin(signal) is (SignalRW if spec.access == "W" else SignalR)
        assert typing.get_args(signal) == (TYPES[spec.record],), spec.suffix


@pytest.mark.parametrize(("cls", "table", "strip"), TABLES, ids=["edge", "sim"])
def test_the_signals_address_the_table_pvs_over_pva(cls: type, table: Any, strip: str) -> None:
    device = cls("T1:", name="d")
    for spec in table:
        sig = getattr(device, attr_name(spec.suffix, strip))
        assert type(sig) is (SignalRW if spec.access == "W" else SignalR)
        assert sig.source == "pva://" + spec.name("T1:")


class FakeEdge:
    """The edge's image PVs as a p4p asyncio Context (nt=False) would give them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.gets: list[str] = []

    def post(self, spec: PVSpec, array: np.ndarray, uid: int, **attrs: Any) -> None:
        self.values[spec.name("T1:")] = make_frame(array, uid, 1000.0 + uid, attrs)

    async def get(self, name: str, request: str | None = None) -> Any:
        self.gets.append(name)
        return self.values[name]


@pytest.fixture
async def edge() -> tuple[EdgeDetector, FakeEdge]:
    fake = FakeEdge()
    fake.post(EDGE.stitched, np.zeros((1, 1), np.float32), 0, PixelSize=1e-8, OriginX=0.0,
              OriginY=0.0, Frames=0)
    fake.post(EDGE.phase, np.zeros((1, 1), np.float32), 0)
    device = EdgeDetector("T1:", name="edge", context=fake)
    await device.connect(mock=True)
    return device, fake


def _set_counters(device: EdgeDetector, processed: int, missed: int = 0, dropped: int = 0,
                  bad: int = 0, unplaced: int = 0) -> None:
    for sig, v in zip((device.processed, device.missed, device.dropped, device.bad_frames,
                       device.unplaced), (processed, missed, dropped, bad, unplaced),
                      strict=True):
        set_mock_value(sig, v)


async def test_staging_starts_a_new_map_and_counts_this_scan_only(edge) -> None:
    device, fake = edge
    _set_counters(device, processed=500, dropped=7)  # an earlier scan's
    await device.stage()
    get_mock_put(device.stitched_reset).assert_called_once_with(1)
    _set_counters(device, processed=560, missed=2, dropped=7, unplaced=1)
    assert await device.counts() == {"edge-processed": 60, "edge-missed": 2,
                                     "edge-dropped": 0, "edge-bad_frames": 0,
                                     "edge-unplaced": 1}
    await device.unstage()
    assert (await device.counts())["edge-processed"] == 560  # not staged: totals


async def test_a_reading_is_the_map_with_its_own_attributes_and_the_scan_counters(edge) -> None:
    device, fake = edge
    set_mock_value(device.model_version, 3)
    await device.stage()
    _set_counters(device, processed=40, unplaced=2)
    phase_map = np.arange(12, dtype=np.float32).reshape(3, 4)
    fake.post(EDGE.stitched, phase_map, 40, PixelSize=1e-8, OriginX=-2e-7, OriginY=3e-7,
              Frames=38)
    await device.trigger()  # completes at once: the edge runs on its own
    reading = await device.read()
    np.testing.assert_array_equal(reading["edge-stitched"]["value"], phase_map)
    assert reading["edge-stitched"]["timestamp"] == 1040.0  # the last frame's time
    assert {k: reading[f"edge-stitched_{k}"]["value"] for k in
            ("pixel_size", "origin_x", "origin_y", "frames")} == {
        "pixel_size": 1e-8, "origin_x": -2e-7, "origin_y": 3e-7, "frames": 38}
    assert reading["edge-processed"]["value"] == 40
    assert reading["edge-unplaced"]["value"] == 2
    assert reading["edge-model_version"]["value"] == 3
    keys = await device.describe()
    assert set(keys) == set(reading)
    assert keys["edge-stitched"]["dtype"] == "array"
    assert keys["edge-stitched"]["shape"] == [3, 4]  # the map the event holds
    assert keys["edge-stitched"]["source"] == "mock+pva://T1:Edge:Stitched"  # mock: mock+
    assert keys["edge-stitched_pixel_size"]["units"] == "m"
    assert keys["edge-processed"]["dtype"] == "integer"
    assert "edge-input" in await device.describe_configuration()


async def test_caught_up_when_every_frame_is_dealt_with_and_the_map_shows_the_last(edge):
    device, fake = edge
    await device.stage()
    _set_counters(device, processed=9, dropped=1)  # all 10 dealt with...
    fake.post(EDGE.phase, np.zeros((2, 2), np.float32), 10)
    fake.post(EDGE.stitched, np.zeros((2, 2), np.float32), 9)  # ...but the map is behind
    assert await device.wait_caught_up(10, timeout=0.2, poll_s=0.05) is False
    fake.post(EDGE.stitched, np.zeros((2, 2), np.float32), 10)
    assert await device.wait_caught_up(10, timeout=1.0, poll_s=0.05) is True
    assert await device.wait_caught_up(11, timeout=0.1, poll_s=0.05) is False


async def test_unstaging_the_simulator_stops_its_acquisition() -> None:
    sim = SimDetector("T1:", name="sim")
    await sim.connect(mock=True)
    await sim.stage()
    await sim.unstage()
    get_mock_put(sim.cam1_acquire).assert_called_once_with(0)
    assert set(await sim.describe()) == {"sim-cam1_array_counter", "sim-cam1_array_rate",
                                         "sim-hdf1_full_file_name"}
