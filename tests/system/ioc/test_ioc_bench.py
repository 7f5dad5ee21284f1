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
