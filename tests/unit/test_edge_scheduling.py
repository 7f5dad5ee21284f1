"""The edge's scheduling policy: applied to the thread that asks and inherited by new ones."""

from __future__ import annotations

import os
import threading

import pytest

from ptychoflow.edge.scheduling import current_policy, set_policy
from ptychoflow.edge.settings import EdgeSettings


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
