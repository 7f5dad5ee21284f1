"""The simulator's pacing: the average rate is kept; ``tick`` sends what falls due in bursts."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from ptychoflow.sim.physics import simulate_scan
from ptychoflow.sim.server import DetectorSimulator

N, RATE = 40, 400.0


class _Recorder:
    """Stands in for the image PV: the time of every post and the frame's uniqueId."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, int]] = []

    def post(self, value: Any) -> None:
        self.posts.append((time.perf_counter(), int(value["uniqueId"])))


def _stream(tick_s: float) -> list[tuple[float, int]]:
    sim = DetectorSimulator("PACE:", simulate_scan(n_frames=N, size=64, seed=1), rate=RATE,
                            tick_s=tick_s)
    rec = _Recorder()
    sim.images = [rec]  # type: ignore[list-item]
    sim._acquire()
    return rec.posts


def _bursts(posts: list[tuple[float, int]], gap_s: float = 1e-3) -> int:
    t = np.array([p[0] for p in posts])
    return 1 + int((np.diff(t) > gap_s).sum())


@pytest.mark.parametrize("tick_s", [0.0, 0.02])
def test_every_frame_goes_out_in_order_at_the_set_rate(tick_s: float) -> None:
    posts = _stream(tick_s)
    assert [uid for _, uid in posts] == list(range(1, N + 1))
    span = posts[-1][0] - posts[0][0]
    assert span >= (N - 1) / RATE - 0.005  # never ahead of the clock
    assert span <= (N - 1) / RATE + tick_s + 0.5  # and not far behind it


def test_a_tick_sends_the_frames_due_together() -> None:
    # one wake-up per frame without a tick (2.5 ms apart); a 20 ms tick holds ~8 frames
    assert _bursts(_stream(0.0)) >= 0.75 * N
    assert _bursts(_stream(0.02)) <= N / 3


def test_scatter_hands_frames_round_the_pvs_in_turn() -> None:
    sim = DetectorSimulator("PACE:", simulate_scan(n_frames=9, size=64, seed=1), rate=0.0,
                            scatter=3)
    assert {"Pva1:Image", "Pva2:Image", "Pva3:Image"} <= set(sim.pvs)
    recs = [_Recorder() for _ in range(3)]
    sim.images = recs  # type: ignore[assignment]
    sim._acquire()
    assert [[uid for _, uid in r.posts] for r in recs] == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]


def test_a_negative_tick_is_refused() -> None:
    with pytest.raises(ValueError, match="tick"):
        DetectorSimulator("PACE:", simulate_scan(n_frames=4, size=64), rate=RATE, tick_s=-1.0)
