"""Frame positions: attributes first, then position channels (motors, a stream) or a file."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from ptychoflow.edge.input.channels import ca_sample, pva_sample, table_rows
from ptychoflow.edge.input.matching import AxisHistory, LivePositions
from ptychoflow.edge.input.positions import PositionSource, load_positions
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.ntnda import Frame


def _frame(uid: int, **attrs: object) -> Frame:
    return Frame(np.zeros((2, 2)), uid, 0.0, dict(attrs))


def test_attributes_win_and_missing_ones_are_explained() -> None:
    src = PositionSource("")
    assert src.position(_frame(3, PositionX=1e-7, PositionY=-2e-7)) == (1e-7, -2e-7)
    assert "no PositionX/PositionY" in str(src.position(_frame(3)))
    assert "not finite" in str(src.position(_frame(3, PositionX=np.nan, PositionY=0.0)))


@pytest.mark.parametrize("kind", ["csv", "txt", "npy", "h5"])
def test_positions_file_rows_follow_unique_id(tmp_path: Path, kind: str) -> None:
    xy = np.array([[1e-7, 2e-7], [3e-7, 4e-7], [5e-7, 6e-7]])
    path = tmp_path / f"pos.{kind}"
    if kind == "csv":
        np.savetxt(path, xy, delimiter=",")
    elif kind == "txt":
        np.savetxt(path, xy)
    elif kind == "npy":
        np.save(path, xy)
    else:
        with h5py.File(path, "w") as fh:
            fh["/entry/instrument/positions/x"] = xy[:, 0]
            fh["/entry/instrument/positions/y"] = xy[:, 1]
    src = PositionSource(str(path))
    assert src.position(_frame(2)) == pytest.approx((3e-7, 4e-7))
    assert "beyond" in str(src.position(_frame(4)))


def test_bad_positions_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        load_positions(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="does not exist"):
        load_positions(tmp_path / "nope.npy")


# ---- positions from channels: the matcher ------------------------------------------------

T0 = 1.7e9  # POSIX seconds, as Frame.timestamp and pvAccess time stamps are
MS = 1e-3


def _at(uid: int, t: float) -> Frame:
    return Frame(np.zeros((2, 2)), uid, t, {})


def _motors(tolerance_ms: float = 5.0, history: int = 1000) -> LivePositions:
    return LivePositions(tolerance_ms * MS, history, interpolate=True)


def _feed(live: LivePositions, t: float, x: float, y: float, dt_y: float = 0.0) -> None:
    live.add(0, t, x)
    live.add(1, t + dt_y, y)


def test_motor_samples_with_jitter_place_each_frame_at_its_own_scan_point() -> None:
    live = _motors()
    rng = np.random.default_rng(0)
    for i in range(20):  # one readback per frame, 1 s apart, stamped within +-1 ms of it
        _feed(live, T0 + i + rng.uniform(-MS, MS), i * 1e-7, -i * 1e-7,
              dt_y=rng.uniform(-MS, MS) * 0.5)
    for i in range(20):
        assert live.position(_at(i + 1, T0 + i)) == pytest.approx((i * 1e-7, -i * 1e-7))


def test_motors_are_interpolated_between_samples_around_the_frame_time() -> None:
    live = _motors()
    _feed(live, T0, 0.0, 10.0)
    _feed(live, T0 + 4 * MS, 4e-6, 14.0)  # moving at 1e-6 m/ms
    # POSIX seconds as float64 resolve 0.24 us today: 1e-4 of a 4 ms step
    assert live.position(_at(1, T0 + 1 * MS)) == pytest.approx((1e-6, 11.0), rel=1e-3)
    assert live.position(_at(2, T0 + 3 * MS)) == pytest.approx((3e-6, 13.0), rel=1e-3)


def test_a_stream_takes_the_nearest_row_never_a_blend_of_two_triggers() -> None:
    live = LivePositions(5 * MS, 1000, interpolate=False)
    live.add_rows([0.0, 1.0], [0.0, 2.0], times=[T0, T0 + 4 * MS])
    assert live.position(_at(1, T0 + 1 * MS)) == (0.0, 0.0)
    assert live.position(_at(2, T0 + 3 * MS)) == (1.0, 2.0)


def test_positions_beyond_the_tolerance_leave_the_frame_unplaced_never_extrapolated() -> None:
    live = _motors(tolerance_ms=5.0)
    _feed(live, T0, 1.0, 1.0)
    _feed(live, T0 + 1.0, 2.0, 2.0)
    assert live.position(_at(1, T0 + 4.9 * MS)) == (1.0, 1.0)  # within: the sample before
    gap = live.position(_at(2, T0 + 0.5))
    assert isinstance(gap, str) and "within 5 ms" in gap and "500.0 ms before" in gap
    after_last = live.position(_at(3, T0 + 1.0 + 6 * MS))
    assert isinstance(after_last, str) and "6.0 ms before" in after_last
    before_first = live.position(_at(4, T0 - 6 * MS))
    assert isinstance(before_first, str) and "6.0 ms after" in before_first
    live.add(0, T0 + 2.0, 3.0)  # x alone: y has nothing near, so no position at all
    assert isinstance(live.position(_at(5, T0 + 2.0)), str)
    assert "no dataTimeStamp" in str(live.position(_at(6, 0.0)))  # a source that sets none


def test_frames_match_stream_rows_by_unique_id_exactly() -> None:
    live = LivePositions(5 * MS, 1000, interpolate=False)
    live.add_rows([0.1, 0.2, 0.3], [1.1, 1.2, 1.3], ids=[1, 2, 3],
                  times=None)
    # the frames' times do not matter, however far from anything
    assert live.position(_at(2, 0.0)) == (0.2, 1.2)
    assert live.position(_at(3, T0 + 1e6)) == (0.3, 1.3)
    assert "no row" in str(live.position(_at(5, T0)))


@pytest.mark.parametrize("stream_first", [True, False], ids=["stream-first", "frames-first"])
def test_a_new_scan_never_takes_the_previous_scans_rows(stream_first: bool) -> None:
    live = LivePositions(5 * MS, 1000, interpolate=False)
    live.add_rows([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], ids=[1, 2, 3])
    assert live.position(_at(3, T0)) == (3.0, 3.0)
    if stream_first:  # scan 2's rows come before its frames
        live.add_rows([10.0, 20.0], [10.0, 20.0], ids=[1, 2])
        assert live.position(_at(1, T0)) == (10.0, 10.0)
    else:  # scan 2's first frame comes first: it waits for scan 2's rows, not scan 1's
        assert live.wait([_at(1, T0)], time.monotonic() + 0.05) is False
        assert "not started this scan" in str(live.position(_at(1, T0)))
        live.add_rows([10.0, 20.0], [10.0, 20.0], ids=[1, 2])
    assert live.position(_at(2, T0)) == (20.0, 20.0)


def test_the_last_frames_of_a_scan_keep_their_rows_when_the_stream_restarts_first() -> None:
    live = LivePositions(5 * MS, 1000, interpolate=False)
    live.add_rows([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], ids=[1, 2, 3])
    assert live.position(_at(1, T0)) == (1.0, 1.0)
    live.add_rows([10.0], [10.0], ids=[1])  # scan 2 started in the stream
    assert live.position(_at(3, T0)) == (3.0, 3.0)  # scan 1's frame 3, still queued
    assert live.position(_at(1, T0)) == (10.0, 10.0)  # then scan 2's first


def test_positions_that_come_after_their_frames_within_the_wait_place_them() -> None:
    live = _motors()
    frames = [_at(i, T0 + i * 10 * MS) for i in range(1, 5)]

    def late() -> None:  # the readbacks arrive 50 ms after the frames
        time.sleep(0.05)
        for f in frames:
            _feed(live, f.timestamp + 0.5 * MS, f.unique_id * 1.0, f.unique_id * 2.0)

    th = threading.Thread(target=late)
    th.start()
    assert live.wait(frames, time.monotonic() + 5.0) is True  # returned once covered
    th.join()
    assert [live.position(f) for f in frames] == [(i * 1.0, i * 2.0) for i in range(1, 5)]


def test_the_wait_is_bounded_and_skipped_for_frames_that_waited_already() -> None:
    live = _motors()
    _feed(live, T0, 1.0, 1.0)
    frame = _at(1, T0 + 1.0)  # nothing ever comes for it
    start = time.monotonic()
    assert live.wait([frame], start + 0.1) is False
    assert 0.1 <= time.monotonic() - start < 1.0
    start = time.monotonic()
    assert live.wait([frame], start - 1.0) is False  # a backlog: its wait has passed
    assert time.monotonic() - start < 0.05
    assert isinstance(live.position(frame), str)


def test_position_history_is_bounded_per_axis() -> None:
    live = _motors(history=100)
    for i in range(1000):
        _feed(live, T0 + i * MS, float(i), float(i))
    assert all(len(axis) == 100 for axis in live.axes)
    assert live.position(_at(1, T0 + 999 * MS)) == (999.0, 999.0)
    old = live.position(_at(2, T0 + 10 * MS))  # older than the history kept
    assert isinstance(old, str) and "older than the history" in old
    ids = LivePositions(5 * MS, 100, interpolate=False)
    ids.add_rows(list(range(1000)), list(range(1000)), ids=list(range(1, 1001)))
    assert len(ids.ids.rows) == 100


def test_a_clock_set_back_starts_the_history_afresh() -> None:
    h = AxisHistory(10)
    h.add(T0, 1.0)
    h.add(T0 + 1, 2.0)
    h.add(T0 + 1, 3.0)  # the same time again: the newer value
    assert len(h) == 2 and h.at(T0 + 1, 0.0, True) == 3.0
    h.add(T0 - 100, 4.0)
    assert len(h) == 1 and h.at(T0 - 100, 0.0, True) == 4.0


# ---- positions from channels: decoding what the channels carry -----------------------------


def test_readback_samples_carry_their_time_and_refuse_invalid_or_untimed_values() -> None:
    from p4p.nt import NTScalar

    v = NTScalar("d").wrap(1.5e-6, timestamp=T0 + 0.25)
    assert pva_sample(v) == pytest.approx((T0 + 0.25, 1.5e-6))
    v["alarm.severity"] = 3
    assert "INVALID" in str(pva_sample(v))
    untimed = NTScalar("d").wrap(1.0)
    untimed["timeStamp.secondsPastEpoch"] = 0
    untimed["timeStamp.nanoseconds"] = 0
    assert "no time stamp" in str(pva_sample(untimed))
    meta = SimpleNamespace(severity=0, timestamp=T0 + 0.5, secondsSinceEpoch=1)
    assert ca_sample(SimpleNamespace(metadata=meta, data=[2.0])) == (T0 + 0.5, 2.0)
    meta.severity = 3
    assert "INVALID" in str(ca_sample(SimpleNamespace(metadata=meta, data=[2.0])))


@pytest.mark.parametrize("names", [("x", "y"), ("PositionX", "PositionY")])
def test_a_stream_table_gives_rows_by_timestamp_or_unique_id(names: tuple[str, str]) -> None:
    from p4p.nt import NTTable

    cx, cy = names
    timed = NTTable([(cx, "d"), (cy, "d"), ("timestamp", "d")]).wrap(
        [{cx: 1.0, cy: 2.0, "timestamp": T0}, {cx: 3.0, cy: 4.0, "timestamp": T0 + 1}])
    rows = table_rows(timed)
    assert not isinstance(rows, str) and rows.ids is None and rows.times is not None
    assert rows.xs.tolist() == [1.0, 3.0] and rows.ys.tolist() == [2.0, 4.0]
    assert rows.times.tolist() == [T0, T0 + 1]
    by_id = NTTable([(cx, "d"), (cy, "d"), ("uniqueId", "i")]).wrap(
        [{cx: 1.0, cy: 2.0, "uniqueId": 7}])
    rows = table_rows(by_id)
    assert not isinstance(rows, str) and rows.ids is not None and rows.ids.tolist() == [7]


def test_stream_columns_are_configurable_and_a_one_row_structure_takes_its_update_time() -> None:
    from p4p import Type, Value

    tp = Type([("u", "d"), ("v", "d"),
               ("timeStamp", ("S", "time_t", [("secondsPastEpoch", "l"), ("nanoseconds", "i")]))])
    one = Value(tp, {"u": 5.0, "v": 6.0,
                     "timeStamp": {"secondsPastEpoch": int(T0), "nanoseconds": 500_000_000}})
    rows = table_rows(one, "u", "v")
    assert not isinstance(rows, str) and rows.times is not None
    assert rows.times.tolist() == [T0 + 0.5] and rows.xs.tolist() == [5.0]
    assert "--position-x-column" in str(table_rows(one))  # no x/y columns by default names
    untimed = Value(Type([("x", "ad"), ("y", "ad")]), {"x": [1.0, 2.0], "y": [3.0, 4.0]})
    assert "no timestamp" in str(table_rows(untimed))


# ---- positions from channels: settings and the source ------------------------------------


@pytest.mark.parametrize(("kw", "match"), [
    ({"position_x_pv": "M:x"}, "both"),
    ({"position_x_pv": "M:x", "position_y_pv": "M:y", "positions": "p.npy"}, "alternatives"),
    ({"position_stream_pv": "S:pos", "position_x_pv": "M:x", "position_y_pv": "M:y"},
     "alternatives"),
    ({"position_stream_pv": "ca://S:pos"}, "only pvAccess"),
    ({"position_x_pv": "xyz://M:x", "position_y_pv": "M:y"}, "ca://NAME"),
    ({"position_tolerance_ms": -1.0}, "tolerance"),
    ({"position_hold_ms": -1.0}, "hold"),
    ({"position_history": 1}, "history"),
])
def test_position_settings_that_cannot_work_are_refused(kw: dict[str, object], match: str
                                                        ) -> None:
    with pytest.raises(ValueError, match=match):
        EdgeSettings(**kw)  # type: ignore[arg-type]


def test_frame_attributes_win_over_channels_and_need_no_wait() -> None:
    live = _motors()
    src = PositionSource(live=live, wait_s=10.0)
    framed = _frame(1, PositionX=1e-7, PositionY=2e-7)
    start = time.monotonic()
    src.settle([framed], start)  # nothing to wait for: the frame carries its position
    assert time.monotonic() - start < 1.0
    assert src.position(framed) == (1e-7, 2e-7)
    live.add(0, T0, 5.0)
    live.add(1, T0, 6.0)
    assert src.position(_at(2, T0)) == (5.0, 6.0)
    why = src.position(_at(3, T0 + 1.0))
    assert isinstance(why, str) and why.startswith("frame 3 ")


def test_a_hold_lets_a_motor_at_rest_place_frames_and_is_off_by_default() -> None:
    strict, held = _motors(), LivePositions(5 * MS, 1000, interpolate=True, hold_s=2.0)
    for live in (strict, held):  # y steps once and rests; x flies, posting all the time
        live.add(1, T0, 1e-6)
        for i in range(300):
            live.add(0, T0 + i * 5 * MS, i * 1e-8)
    frame = _at(1, T0 + 1.0)  # y's last post is 1 s old
    assert "within 5 ms" in str(strict.position(frame))
    assert held.position(frame) == pytest.approx((200 * 1e-8, 1e-6))
    assert "within 5 ms" in str(held.position(_at(2, T0 + 2.5)))  # older than the hold
