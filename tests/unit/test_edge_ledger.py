"""The ledger that counts frames lost upstream of the edge when they come over several lanes."""

from __future__ import annotations

import time

import pytest

from ptychoflow.edge.input.gaps import MAX_GAP, GapCounter
from ptychoflow.edge.lanes.ledger import FrameLedger
from ptychoflow.edge.service import split_inputs


def _f(*uids: int, key: object = 1) -> list[tuple[int, object]]:
    return [(u, key) for u in uids]


def test_every_frame_round_the_lanes_means_none_missed() -> None:
    led = FrameLedger(2)
    led.account(0, _f(*range(1, 101, 2)))  # one lane far ahead of the other
    assert led.missed == 0  # lane 1 has said nothing yet: nothing settles
    led.account(1, _f(*range(2, 101, 2)))
    led.settle_all()
    assert led.missed == 0


def test_ids_no_lane_reported_are_counted_once_every_lane_is_past_them() -> None:
    led = FrameLedger(2)
    led.account(0, _f(1, 3, 7, 9))  # 5 never came to lane 0
    led.account(1, _f(2, 4, 6))  # 8 not yet
    assert led.missed == 1  # 5: both lanes are past it; 8 may still come
    led.account(1, _f(10))  # 8 skipped too
    assert led.missed == 2
    led.settle_all()
    assert led.missed == 2


def test_frames_before_the_first_seen_are_not_counted() -> None:
    led = FrameLedger(2)
    led.account(0, _f(41, 43))
    led.account(1, _f(42, 44))
    led.settle_all()
    assert led.missed == 0


def test_a_new_scan_is_counted_apart_while_the_other_lane_finishes_the_old() -> None:
    led = FrameLedger(2)
    led.account(0, _f(1, 3, 5))
    led.account(1, _f(2, 4))
    led.account(0, _f(1, 3))  # lane 0 starts the next scan
    led.account(1, _f(6, 8))  # lane 1 still finishing the old one (7 lost upstream)
    led.account(1, _f(2, 4))  # and now joins the new one
    assert led.missed == 1  # the old scan is over: 7 missed, nothing of the new one
    led.account(0, _f(5))
    led.settle_all()
    assert led.missed == 1


def test_a_scan_id_change_starts_a_new_scan_even_if_ids_go_on() -> None:
    led = FrameLedger(1)
    led.account(0, _f(1, 2, 3, key="a"))
    led.account(0, _f(10, 11, key="b"))  # a new scan that starts at 10: 4-9 not missed
    led.settle_all()
    assert led.missed == 0


def test_settling_with_nothing_in_flight_counts_the_tail() -> None:
    led = FrameLedger(2)
    led.account(0, _f(1, 3, 5, 7))
    led.account(1, _f(2))  # lane 1 lost 4 and 6 upstream and then got nothing more
    assert led.missed == 0  # lane 1 might still be working
    led.settle_all()
    assert led.missed == 2
    led.account(1, _f(6))  # a straggler after settling: it was not lost after all
    assert led.missed == 1
    led.settle_all()
    led.account(1, _f(6))  # the same id again counts nothing
    assert led.missed == 1
    led.account(1, _f(8))  # lane 1 is past 4 now: it stays counted
    led.settle_all()
    assert led.missed == 1


def test_a_frame_whose_id_could_not_be_read_is_not_also_counted_missed() -> None:
    led = FrameLedger(2)
    led.account(0, [(1, 1), (0, 1), (5, 1), (7, 1)])  # 3 came to lane 0 but did not decode
    led.account(1, _f(2, 4, 6, 8))
    assert led.missed == 0  # lane 0's unread frame lay between 1 and 5: it was 3
    led.account(0, [(9, 1), (0, 1)])  # one more unread frame after 9, the last of lane 0
    led.account(1, _f(12))  # 10 and 11 were reported by no lane
    led.settle_all()
    assert led.missed == 1  # one of them was lane 0's unread frame


def test_an_unread_frame_takes_one_id_only() -> None:
    led = FrameLedger(1)
    led.account(0, [(1, 1), (0, 1), (6, 1)])  # 2-5 missing, one of them unread
    assert led.missed == 3


def test_one_input_counts_gaps_less_the_frames_whose_id_could_not_be_read() -> None:
    gaps = GapCounter()
    for uid in (1, 2, 0, 4, 8):  # 3 did not decode; 5-7 lost upstream
        gaps.frame(uid, float(uid))
    assert gaps.missed == 3
    gaps.frame(0)
    gaps.frame(9, 9.0)  # an unread frame with no gap after it fills nothing
    gaps.frame(11, 11.0)
    assert gaps.missed == 4
    assert not gaps.frame(11, 11.0) and gaps.frame(11, 12.0)  # the same frame again, not
    assert gaps.missed == 4
    gaps.reset()
    gaps.frame(1, 1.0)  # a new source starts afresh
    assert gaps.missed == 4
    lane = GapCounter(counting=False)  # a lane's ids skip the other lanes' frames
    lane.frame(1, 1.0)
    lane.frame(5, 5.0)
    assert lane.missed == 0


def test_a_jump_in_numbering_is_not_counted_as_missed_and_settles_at_once() -> None:
    gaps = GapCounter()
    for uid in (1, 2, 2_000_000_000, 2_000_000_002):  # a garbled id, then a new numbering
        gaps.frame(uid, float(uid))
    assert gaps.missed == 1 and gaps.jumps == [(2, 2_000_000_000)]
    gaps.frame(2 + MAX_GAP + 2, 1.0)  # back, then a gap of exactly MAX_GAP: lost frames
    gaps.frame(2 + 2 * MAX_GAP + 3, 2.0)
    assert gaps.missed == 1 + MAX_GAP
    led = FrameLedger(2)
    t0 = time.perf_counter()
    led.account(0, _f(1, 3, 2_000_000_000))  # one lane's garbled id: not billions of ids
    led.account(1, _f(2, 4, 2_000_000_001))  # walked, nor billions of them counted
    led.settle_all()
    assert time.perf_counter() - t0 < 1.0
    assert led.missed == 0


def test_input_names_too_long_or_with_control_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PV name"):
        split_inputs("x" * 100_000)
    with pytest.raises(ValueError, match="not a PV name"):
        split_inputs("P:Pva1:Image P:\x01Image")
    assert split_inputs("P:Pva1:Image\nP:Pva2:Image") == ["P:Pva1:Image", "P:Pva2:Image"]
