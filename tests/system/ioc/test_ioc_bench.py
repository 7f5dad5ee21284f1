"""``ptychoflow bench ioc`` runs end to end (tiny sizes; figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def test_bench_ioc_prints_latency_figures():
    out = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "bench", "ioc", "--json", "--ca-clients", "2",
         "--pva-clients", "3", "--puts", "4"],
        capture_output=True, text=True, timeout=150, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["clients"] == 5 and result["puts"] == 4
    for key in ("latency_p50_ms", "latency_p99_ms", "ca_p50_ms", "pva_p99_ms",
                "ioc_post_p50_ms"):
        assert 0 < result[key] < 10_000, key
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]


def test_bench_remote_prints_its_figures_as_the_last_line():
    out = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "--log-level", "WARNING", "bench", "remote",
         "--json", "--recons", "2", "--frames", "16", "--latency-samples", "3",
         "--skip", "overlap"], capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["submit_latency_ms"]) == {"Local", "Parsl"}
    assert result["parsl_recons"] == 2 and result["parsl_t1_s"] > 0 and result["parsl_t2_s"] > 0
    assert result["parsl_efficiency"] == pytest.approx(
        result["parsl_t1_s"] / (2 * result["parsl_t2_s"]), rel=0.05)
