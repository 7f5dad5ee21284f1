"""The stitching process builds the same map as stitching in the edge process."""

from __future__ import annotations

import numpy as np
import pytest

from ptychoflow.edge.output import stitchproc
from ptychoflow.edge.output.stitchproc import StitchProcess
from ptychoflow.stitch import Stitcher, StitchError

PIX = 10e-9


def _scan(rng: np.random.Generator, n: int, size: int) -> list[tuple[np.ndarray, float, float]]:
    return [(rng.normal(size=(size, size)).astype(np.float32),
             float(rng.uniform(-2e-7, 2e-7)), float(rng.uniform(-2e-7, 2e-7)))
            for _ in range(n)]


def test_same_map_as_in_process_across_slots_resets_and_shapes(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    # three patches a slot, four slots: 40 patches go round the slots several times
    monkeypatch.setattr(stitchproc, "SLOT_BYTES", 4 * 16 * 16 * 3)
    rng = np.random.default_rng(0)
    first, second = _scan(rng, 40, 16), _scan(rng, 7, 12)  # the second: another shape
    ref, sp = Stitcher(PIX), StitchProcess(PIX)
    try:
        for patch, x, y in first:
            ref.add(patch, x, y)
            sp.add(patch, x, y)
        patch[:] = 0  # the caller may reuse its buffer once add() returns
        np.testing.assert_array_equal(sp.image(), ref.image())
        assert sp.origin_m == ref.origin_m and sp.count == ref.count == 40
        ref.reset()
        sp.reset()
        for patch, x, y in second:
            ref.add(patch, x, y)
            sp.add(patch, x, y)
        np.testing.assert_array_equal(sp.image(), ref.image())
        assert sp.count == 7
        sp.repixel(2 * PIX)  # a model with another pixel size: a new, empty map
        assert sp.image().size == 0
        assert sp.errors() == []
    finally:
        sp.close()


def test_refused_patches_come_back_as_errors() -> None:
    sp = StitchProcess(PIX, max_size=64)
    try:
        sp.add(np.zeros((32, 32), np.float32), 0.0, 0.0)
        sp.add(np.zeros((32, 32), np.float32), 500 * PIX, 0.0)  # off the allowed map
        sp.flush()
        sp.image()  # waits for the child, so its answer is in
        errors = sp.errors()
        assert len(errors) == 1 and "stitch_max_size" in errors[0]
        with pytest.raises(StitchError, match="not finite"):
            sp.add(np.zeros((32, 32), np.float32), float("nan"), 0.0)
    finally:
        sp.close()


def test_a_killed_stitching_process_is_reported() -> None:
    sp = StitchProcess(PIX)
    sp._proc.kill()
    sp._proc.join(10)
    with pytest.raises(stitchproc.StitchProcessError, match="gone"):
        sp.image()
    sp.close()
