"""``ptychoflow bench edge`` runs end to end (tiny sizes; figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def test_bench_edge_accounts_for_every_frame():
    out = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "bench", "edge", "--json", "--frames", "60",
         "--size", "64", "--seconds", "0.5", "--no-baseline"],
        capture_output=True, text=True, timeout=220, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["complete"] and r["dropped"] == 0 and r["bad_frames"] == 0
    assert r["pipeline_frames"] == 60 and r["latency_frames"] == 60
    assert len(r["pipeline_fps_runs"]) == 2 and r["pipeline_fps"] == max(r["pipeline_fps_runs"])
    assert r["engine_fps"] == max(r["engine_fps_runs"]) > 0
    assert r["pipeline_vs_engine"] == pytest.approx(r["pipeline_fps"] / r["engine_fps"],
                                                    abs=1e-3)
    # at these tiny sizes a pass may fit in one 10 ms clock tick: only the shape is checked
    assert set(r["cpu_ms_per_frame"]) == {"source", "edge", "client"}
    assert all(v >= 0 for v in r["cpu_ms_per_frame"].values())
    assert isinstance(r["edge_threads_us_per_frame"], dict)
    assert r["scheduling"] == "batch" and r["precision"] == "fp32"
    # the peer: the same model in pvapy-hpc-consumer, same source and frames, same run
    assert r["peer_complete"] and r["peer_frames"] == 60 and r["peer_fps"] > 0
    assert r["pipeline_vs_peer"] == pytest.approx(r["pipeline_fps"] / r["peer_fps"], rel=1e-2)
    # every codec's decode cost, measured as the edge decodes
    assert {"none", "lz4", "bslz4", "blosc"} <= set(r["codecs"]) and r["codec"] == "none"
    assert all(c["decode_us"] > 0 and c["ratio"] > 0 for c in r["codecs"].values())


def test_bench_edge_int8_on_openvino_reports_what_it_ran():
    pytest.importorskip("openvino")
    out = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "bench", "edge", "--json", "--frames", "60",
         "--size", "64", "--seconds", "0.5", "--no-baseline", "--no-peer", "--codec", "bslz4",
         "--engine", "openvino", "--precision", "int8", "--threads", "1"],
        capture_output=True, text=True, timeout=220, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["complete"] and r["dropped"] == 0 and r["bad_frames"] == 0
    assert r["precision"] == "int8" and r["engine"].startswith("openvino (CPU int8")
    assert r["codec"] == "bslz4"  # the source sent bitshuffle/LZ4 frames, every one decoded
    assert "streams" not in r["engine"]  # one thread: one engine, no side-by-side streams
    # the quantized copy, run by OpenVINO, against float32 ONNX Runtime
    assert 0 < r["int8_max_abs_error_rad"] < 10
