"""The benchmark's per-thread CPU figures: read from /proc, summed by thread name."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ptychoflow.edge.bench.pipeline import thread_cpu_s
from ptychoflow.edge.threads import name_os_thread

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                                reason="Linux per-thread CPU only")

TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def test_thread_cpu_is_counted_and_summed_under_the_threads_name() -> None:
    stop = threading.Event()
    own = [0.0, 0.0]  # each thread's CPU time as it sees it

    def burn(i: int) -> None:
        name_os_thread("pf-test-burn")
        while not stop.is_set():
            own[i] = time.thread_time()

    before = thread_cpu_s(os.getpid())
    workers = [threading.Thread(target=burn, args=(i,)) for i in range(2)]
    for t in workers:
        t.start()
    try:
        deadline = time.monotonic() + 30.0
        while min(own) < 0.15 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert min(own) >= 0.15, "the test threads got no CPU"
        seen = thread_cpu_s(os.getpid())["pf-test-burn"]
        mine = list(own)  # read just after: at least what /proc saw, less its ticks
    finally:
        stop.set()
        for t in workers:
            t.join()
    assert "pf-test-burn" not in before
    assert seen <= sum(mine) + 2 * TICK
    # both threads' time, not one's: the sum exceeds either by well over a tick
    assert seen >= max(mine) + 0.15 - 2 * TICK
