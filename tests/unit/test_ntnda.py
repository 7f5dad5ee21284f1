"""NTNDArray helpers: frames keep their id, time stamp, attributes, shape and type."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from p4p.client.thread import Context
from p4p.server import Server
from p4p.server.thread import SharedPV

from ptychoflow.ntnda import ImageStream, is_placeholder, make_frame, placeholder, read_frame


def test_a_frame_round_trips() -> None:
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    f = read_frame(make_frame(a, 7, 1700000000.25, {"PositionX": 1e-7, "ScanId": 3}))
    assert f.unique_id == 7 and f.timestamp == 1700000000.25
    assert f.attributes["PositionX"] == 1e-7 and f.attributes["ScanId"] == 3
    np.testing.assert_array_equal(f.array, a)
    assert f.array.dtype == np.uint16


def test_a_servers_empty_placeholder_is_told_from_a_frame() -> None:
    # what areaDetector's NDPluginPva and pvapy serve before the first frame: no image to
    # decode, and not a bad frame either
    empty = placeholder()
    assert is_placeholder(empty)
    with pytest.raises(ValueError, match="no data"):
        read_frame(empty)
    # a real frame, even an empty one with an id (a bad frame), is not a placeholder
    assert not is_placeholder(make_frame(np.zeros((0, 0), np.float32), 5))
    assert not is_placeholder(make_frame(np.ones((2, 2), np.uint16), 1))


def test_image_stream_refills_one_value_and_rebuilds_on_a_new_shape() -> None:
    s = ImageStream()
    rng = np.random.default_rng(0)
    imgs = [rng.normal(size=(5, 6)).astype(np.float32) for _ in range(3)]
    v1 = s.value(imgs[0], 1, 10.5)
    v2 = s.value(imgs[1], 2, 11.5)
    assert v2 is v1  # refilled
    f = read_frame(v2)
    assert (f.unique_id, f.timestamp) == (2, 11.5)
    np.testing.assert_array_equal(f.array, imgs[1])
    v3 = s.value(imgs[2].T.copy(), 3, 12.5)  # a new shape: a new value
    assert v3 is not v1 and read_frame(v3).array.shape == (6, 5)
    with_attrs = s.value(imgs[0], 4, 13.5, {"Frames": 9})
    assert read_frame(with_attrs).attributes["Frames"] == 9
    assert s.value(imgs[0], 5, 14.5) is not with_attrs  # attributes never stick


def test_every_subscriber_gets_each_refilled_image_as_it_was_posted() -> None:
    pv = SharedPV(initial=make_frame(np.zeros((4, 4), np.float32), 0, 0.0))
    got: queue.Queue = queue.Queue()
    with Server(providers=[{"T:Image": pv}], isolate=True) as server:
        with Context("pva", conf=server.conf(), useenv=False, nt=False) as ctx:
            sub = ctx.monitor("T:Image", got.put, request="record[queueSize=100]")
            first = got.get(timeout=10)  # the current (initial) value
            assert int(first["uniqueId"]) == 0
            s = ImageStream()
            imgs = [np.full((4, 4), i, np.float32) for i in range(1, 21)]
            for i, img in enumerate(imgs, 1):
                pv.post(s.value(img, i, 100.0 + i))  # refilled before the client reads it
            for i in range(1, 21):
                f = read_frame(got.get(timeout=10))
                assert f.unique_id == i and f.timestamp == 100.0 + i
                np.testing.assert_array_equal(f.array, imgs[i - 1])
            sub.close()
