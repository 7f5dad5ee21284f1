"""The peer pass of ``bench edge``: pvapy-hpc-consumer runs the model on every frame."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ptychoflow.edge.bench.models import affine_model, write_card
from ptychoflow.edge.bench.peer import peer_pass
from ptychoflow.preprocess import Preprocess
from tests.system.edge.edge_helpers import PIXEL

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(150)]

N = 203  # 25 batches of 8 and a tail of 3, which only the processor's flush sends


def test_pvapy_consumer_returns_every_frame_of_both_passes(tmp_path: Path):
    model = affine_model(tmp_path / "models" / "model-v1.onnx", 32)
    write_card(model, 1, Preprocess(input_size=32, intensity="linear"), PIXEL)
    # the simulator's smallest frame is 64x64; the card bins it to the model's 32x32
    args = argparse.Namespace(frames=N, size=64, source_tick_ms=5.0, threads=1,
                              scheduling="batch")
    r = peer_pass(model, args, tmp_path, rate=400.0)
    assert r["peer_complete"]  # uniqueIds 1..N, none lost, none twice, in both passes
    assert r["peer_missing"] == 0 and r["peer_frames"] == N
    assert r["peer_processed"] == N  # the processor's own count of the kept pass
    assert r["peer_flushes"] >= 1  # the tail went out without waiting for a full batch
    assert r["peer_fps"] > 0 and len(r["peer_fps_runs"]) == 2
    assert r["peer_fps"] == max(r["peer_fps_runs"])
    assert set(r["peer_cpu_ms_per_frame"]) == {"source", "consumer", "client"}
