"""Lanes, the parts that need no server: GPUs per lane, refusals, slot sizes."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from ptychoflow.edge.lanes.child import slot_bytes
from ptychoflow.edge.lanes.handle import gpus_for_lanes
from ptychoflow.edge.lanes.parent import LaneSet
from ptychoflow.edge.service import split_inputs
from ptychoflow.edge.settings import EdgeSettings


def test_inputs_split_on_spaces_and_commas() -> None:
    assert split_inputs(" P:Pva1:Image,P:Pva2:Image  P:Pva3:Image ") == [
        "P:Pva1:Image", "P:Pva2:Image", "P:Pva3:Image"]
    assert split_inputs("") == []


def test_lanes_take_the_visible_gpus_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpus_for_lanes(3) == ["2", "3", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU: all lanes share it
    assert gpus_for_lanes(2) == ["", ""]


def test_workers_with_lanes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="each lane runs its own engine"):
        LaneSet(EdgeSettings(workers=2, model_dir=str(tmp_path)), tmp_path, ["A", "B"],
                queue.Queue(), print)


def test_a_slot_holds_a_full_batch_of_phase_and_amplitude() -> None:
    assert slot_bytes(EdgeSettings(batch_size=256)) >= 256 * 2 * 128 * 128 * 4
    assert slot_bytes(EdgeSettings(batch_size=1)) == 4 << 20


def test_a_lane_that_keeps_dying_waits_longer_each_time() -> None:
    from ptychoflow.edge.lanes.handle import RESTART_MAX_S, restart_delay

    assert [restart_delay(q) for q in range(5)] == [0.0, 10.0, 20.0, 40.0, 80.0]
    assert restart_delay(30) == RESTART_MAX_S
