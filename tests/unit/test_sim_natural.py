"""The generated natural-looking sample: another kind of object than the test pattern."""

from __future__ import annotations

import numpy as np

from ptychoflow.sim.physics import (
    NATURAL,
    complex_object,
    natural_image,
    sample_pattern,
    simulate_scan,
)


def _radial_power(a: np.ndarray, lo: float, hi: float) -> float:
    f = np.hypot(np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :])
    p = np.abs(np.fft.fft2(a - a.mean())) ** 2
    return float(p[(f >= lo) & (f < hi)].mean())


def test_natural_image_is_a_repeatable_texture_in_the_unit_range() -> None:
    a = natural_image((96, 128), seed=4)
    assert a.shape == (96, 128)
    assert a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_array_equal(a, natural_image((96, 128), seed=4))
    assert np.corrcoef(a.ravel(), natural_image((96, 128), seed=5).ravel())[0, 1] < 0.3


def test_natural_image_has_structure_at_every_scale() -> None:
    a = natural_image((256, 256), seed=0)
    low, mid, high = (_radial_power(a, lo, hi) for lo, hi in
                      ((0.01, 0.03), (0.06, 0.12), (0.25, 0.5)))
    # a 1/f texture: power falls steadily with frequency but never vanishes
    assert low > 10 * mid > 10 * high > 0


def test_simulate_scan_natural_uses_the_generated_sample_as_truth() -> None:
    scan = simulate_scan(n_frames=20, size=64, seed=3, obj=NATURAL)
    expected = complex_object(natural_image(scan.truth.shape, seed=3))
    np.testing.assert_allclose(scan.truth, expected, atol=1e-6)
    phase = np.angle(scan.truth)
    assert -1.0 - 1e-6 <= phase.min() and phase.max() <= 1.0 + 1e-6
    # not the test pattern in disguise
    pattern = np.angle(sample_pattern(scan.truth.shape, seed=3))
    assert abs(np.corrcoef(phase.ravel(), pattern.ravel())[0, 1]) < 0.3
