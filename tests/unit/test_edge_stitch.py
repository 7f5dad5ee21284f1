"""The stitcher places each prediction at its scan position and averages overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from ptychoflow.stitch import Stitcher, StitchError

PIX = 10e-9


def _place_all(st: Stitcher, obj: np.ndarray, size: int, starts: list[tuple[float, float]],
               centre: float, sample: callable = None) -> None:  # type: ignore[valid-type]
    for r, c in starts:
        patch = sample(r, c) if sample else obj[int(r):int(r) + size, int(c):int(c) + size]
        y = (r + (size - 1) / 2 - centre) * PIX
        x = (c + (size - 1) / 2 - centre) * PIX
        st.add(patch, x, y)


def _map_of_object(st: Stitcher, n: int, centre: float) -> np.ndarray:
    y0, x0 = st.origin_m
    r0 = (-centre) - y0 / PIX
    c0 = (-centre) - x0 / PIX
    assert abs(r0 - round(r0)) < 1e-6 and abs(c0 - round(c0)) < 1e-6
    r0, c0 = int(round(r0)), int(round(c0))
    return st.image()[r0:r0 + n, c0:c0 + n]


def test_whole_pixel_scan_reproduces_the_object_exactly() -> None:
    obj = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    st = Stitcher(PIX)
    starts = [(r, c) for r in range(0, 33, 8) for c in range(0, 33, 8)]
    _place_all(st, obj, 32, starts, centre=31.5)
    np.testing.assert_allclose(_map_of_object(st, 64, 31.5), obj, atol=1e-6)
    assert st.count == len(starts)


def test_sub_pixel_positions_are_honoured() -> None:
    # a linear phase ramp is reproduced exactly by bilinear placement at any offset
    def ramp(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (0.03 * r - 0.02 * c + 0.5).astype(np.float32)

    rr, cc = np.mgrid[0:16, 0:16].astype(np.float64)
    st = Stitcher(PIX)
    rng = np.random.default_rng(1)
    starts = [(0.0, 0.0)] + [(float(a), float(b)) for a, b in rng.uniform(0, 24, (40, 2))]
    _place_all(st, np.zeros(1), 16, starts, centre=19.5,
               sample=lambda r, c: ramp(rr + r, cc + c))
    img = st.image()
    cov = st.covered()
    # compare interior pixels (fully weighted) with the ramp at their object coordinates
    y0, x0 = st.origin_m
    R, C = np.nonzero(cov)
    obj_r = R + y0 / PIX + 19.5
    obj_c = C + x0 / PIX + 19.5
    inside = (obj_r >= 1) & (obj_r <= 38) & (obj_c >= 1) & (obj_c <= 38)
    np.testing.assert_allclose(img[R[inside], C[inside]], ramp(obj_r[inside], obj_c[inside]),
                               atol=1e-4)
    assert inside.sum() > 500


def test_off_grid_patch_is_the_bilinear_resample_of_any_image() -> None:
    # any patch, not only a ramp: each map pixel is the bilinear mix of the four patch
    # pixels around it, and a non-square patch keeps its rows apart
    rng = np.random.default_rng(2)
    grid = rng.normal(size=(9, 12)).astype(np.float32)
    patch = rng.normal(size=(9, 12)).astype(np.float32)
    st = Stitcher(PIX)
    st.add(grid, 0.0, 0.0)  # on the grid: fixes the map's pixel grid
    fr, fc = 0.25, 0.625
    st.add(patch, fc * PIX, fr * PIX)  # shifted down by fr and right by fc of a pixel
    want = ((1 - fc) * ((1 - fr) * patch[1:, 1:] + fr * patch[:-1, 1:])
            + fc * ((1 - fr) * patch[1:, :-1] + fr * patch[:-1, :-1]))
    y0, x0 = st.origin_m
    r0 = int(round(-(9 - 1) / 2 - y0 / PIX)) + 1  # the map row of the grid patch's row 1
    c0 = int(round(-(12 - 1) / 2 - x0 / PIX)) + 1
    got = st.image()[r0:r0 + 8, c0:c0 + 11]
    np.testing.assert_allclose(got, (grid[1:, 1:] + want) / 2, atol=1e-5)


def test_overlaps_are_averaged_and_reset_starts_over() -> None:
    st = Stitcher(PIX)
    st.add(np.full((4, 4), 1.0, np.float32), 0.0, 0.0)
    st.add(np.full((4, 4), 3.0, np.float32), 0.0, 0.0)
    assert float(st.image().max()) == pytest.approx(2.0)
    st.reset()
    assert st.count == 0 and st.image().size == 0


def test_map_size_is_bounded() -> None:
    st = Stitcher(PIX, max_size=100)
    st.add(np.zeros((32, 32), np.float32), 0.0, 0.0)
    with pytest.raises(StitchError, match="stitch_max_size"):
        st.add(np.zeros((32, 32), np.float32), 500 * PIX, 0.0)
    with pytest.raises(StitchError, match="not finite"):
        st.add(np.zeros((32, 32), np.float32), float("nan"), 0.0)
    assert max(st.image().shape) <= 100


def test_pixel_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pixel-size"):
        Stitcher(0.0)


def test_one_input_a_new_scan_starts_a_new_map() -> None:
    from ptychoflow.stitch import ScanFollower

    sf = ScanFollower()
    assert sf.place(0, 1, "a") == (True, True)  # the first scan's map
    assert sf.place(0, 2, "a") == (False, True)
    assert sf.place(0, 3, "b") == (True, True)  # scan id changed
    assert sf.place(0, 1, "b") == (True, True)  # ids went back
    assert sf.place(0, 2, None) == (True, True)  # the attribute went away


def test_lanes_old_scan_frames_stay_off_the_new_map() -> None:
    from ptychoflow.stitch import ScanFollower

    sf = ScanFollower()
    assert sf.place(0, 1, "a") == (True, True)
    assert sf.place(1, 2, "a") == (False, True)  # interleaved ids are not a new scan
    assert sf.place(0, 3, "a") == (False, True)
    assert sf.place(0, 1, "b") == (True, True)  # lane 0 reaches scan b first
    assert sf.place(1, 4, "a") == (False, False)  # lane 1 still in scan a: off the map
    assert sf.place(1, 2, "b") == (False, True)  # lane 1 joins scan b: no second reset
    assert sf.place(0, 3, "b") == (False, True)
    assert sf.place(1, 4, "b") == (False, True)


def test_lanes_without_scan_ids_follow_the_ids() -> None:
    from ptychoflow.stitch import ScanFollower

    sf = ScanFollower()
    for uid in range(1, 9):  # the map is new already: nothing to start
        assert sf.place(uid % 2, uid, None) == (False, True)
    assert sf.place(1, 1, None) == (True, True)  # lane 1 restarts first
    assert sf.place(0, 10, None) == (False, False)
    assert sf.place(0, 2, None) == (False, True)
