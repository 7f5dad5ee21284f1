"""The edge's scheduling policy: applied to the thread that asks and inherited by new ones."""

from __future__ import annotations

import os
import threading

import pytest

from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.threads import (
    current_policy,
    level_realtime_threads,
    name_os_thread,
    set_policy,
)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies only")
def test_batch_policy_is_applied_and_inherited() -> None:
    seen: list[str] = []

    def body() -> None:
        assert set_policy("batch")
        child = threading.Thread(target=lambda: seen.append(current_policy()))
        child.start()
        child.join()
        seen.append(current_policy())
        assert set_policy("normal")
        seen.append(current_policy())

    t = threading.Thread(target=body)  # leaves the test runner's own thread alone
    t.start()
    t.join()
    assert seen == ["batch", "batch", "normal"]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        set_policy("realtime")
    with pytest.raises(ValueError, match="scheduling"):
        EdgeSettings(scheduling="fifo")


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="Linux scheduling policies only")
def test_realtime_threads_are_levelled_under_batch_only() -> None:
    """EPICS starts its threads SCHED_FIFO where it may; ``batch`` brings them back."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    ready.wait(10)
    try:
        try:
            os.sched_setscheduler(tid[0], os.SCHED_FIFO, os.sched_param(1))
        except PermissionError:
            pytest.skip("this account may not use real-time priorities (nor may EPICS)")
        assert level_realtime_threads("normal") == 0
        assert os.sched_getscheduler(tid[0]) == os.SCHED_FIFO
        assert level_realtime_threads("batch") >= 1
        assert os.sched_getscheduler(tid[0]) == os.SCHED_BATCH
        assert level_realtime_threads("batch", os.getpid()) == 0  # nothing left to level
    finally:
        done.set()
        t.join()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux thread names only")
def test_edge_threads_show_their_names_to_the_system() -> None:
    names: list[str] = []

    def body() -> None:
        name_os_thread()
        tid = threading.get_native_id()
        names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        name_os_thread("a-much-longer-name-than-fits")
        names.append(open(f"/proc/self/task/{tid}/comm").read().strip())

    t = threading.Thread(target=body, name="edge-publish")
    t.start()
    t.join()
    assert names == ["edge-publish", "a-much-longer-n"]
