"""Edge settings refuse what cannot work, and the input request carries the queue asked for."""

from __future__ import annotations

import pytest

from ptychoflow.edge.input.monitor import monitor_request
from ptychoflow.edge.settings import EdgeSettings


def test_input_queue_reaches_the_pv_request() -> None:
    assert monitor_request() == "record[queueSize=64]field()"
    assert monitor_request(EdgeSettings(input_queue=512).input_queue) == \
        "record[queueSize=512]field()"


@pytest.mark.parametrize("field", ["input_queue", "queue_size", "batch_size", "workers"])
def test_sizes_below_one_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EdgeSettings(**{field: 0})
