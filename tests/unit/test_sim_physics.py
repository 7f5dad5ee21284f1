"""The simulator's forward model obeys the physics it claims."""

from __future__ import annotations

import numpy as np
import pytest

from ptychoflow.sim.physics import (
    exit_waves,
    far_field,
    fermat_spiral,
    make_probe,
    object_pixel_size,
    object_shape_for,
    sample_pattern,
    simulate_scan,
)


def test_parseval_far_field_keeps_the_photons() -> None:
    rng = np.random.default_rng(1)
    waves = (rng.normal(size=(3, 64, 64)) + 1j * rng.normal(size=(3, 64, 64))).astype(np.complex64)
    intensity = far_field(waves)
    np.testing.assert_allclose(intensity.sum(axis=(1, 2)),
                               (np.abs(waves) ** 2).sum(axis=(1, 2)), rtol=1e-5)


def test_far_field_is_centred() -> None:
    flat = np.ones((1, 64, 64), np.complex64)
    intensity = far_field(flat)
    assert np.unravel_index(intensity[0].argmax(), (64, 64)) == (32, 32)


def test_fermat_spiral_step_and_count() -> None:
    pos = fermat_spiral(963, 50e-9)
    assert pos.shape == (963, 2)
    # mean nearest-neighbour distance close to the step
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.min(axis=1).mean()
    assert 0.8 * 50e-9 < nn < 1.2 * 50e-9
    assert len(np.unique(pos.round(12), axis=0)) == 963


@pytest.mark.parametrize("kind", ["zoneplate", "gaussian"])
def test_probe_has_unit_intensity_and_requested_width(kind: str) -> None:
    dx = object_pixel_size(128, 8800, 2.0, 75e-6)
    p = make_probe(128, dx, 1.4089e-10, kind, diameter_px=32)
    assert np.isclose((np.abs(p) ** 2).sum(), 1.0, rtol=1e-4)
    inten = np.abs(p) ** 2
    y, x = np.mgrid[0:128, 0:128] - 64
    r = np.hypot(y, x)
    inside = inten[r < 32].sum()  # within twice the nominal radius
    assert inside > 0.8


def test_positions_stay_inside_the_object() -> None:
    s = simulate_scan(n_frames=200, size=64, seed=3)
    assert s.truth is not None
    px = s.positions_px()
    half = np.array(s.truth.shape) / 2
    assert np.all(np.abs(px) + 32 <= half)
    s.validate()


def test_exit_waves_refuse_positions_outside_the_object() -> None:
    obj = sample_pattern((80, 80))
    probe = np.ones((64, 64), np.complex64)
    with pytest.raises(ValueError, match="outside the object"):
        exit_waves(obj, probe, np.array([[20.0, 0.0]]))


def test_photon_statistics_are_poisson() -> None:
    s = simulate_scan(n_frames=64, size=64, photons=2e5, dtype="int32", seed=5)
    assert s.data.dtype == np.int32
    totals = s.data.sum(axis=(1, 2))
    # the object transmits 36-100 % of the intensity, so totals lie in that band of the dose
    assert np.all(totals > 0.3 * 2e5) and np.all(totals < 1.05 * 2e5)
    # Poisson: for repeated noise on the same expected pattern, variance == mean
    p = s.probe
    assert p is not None and s.truth is not None
    expected = far_field(exit_waves(s.truth, p, s.positions_px()[:1]))[0]
    rng = np.random.default_rng(0)
    draws = rng.poisson(np.broadcast_to(expected, (400, 64, 64)))
    bright = expected > 20
    ratio = draws.var(axis=0)[bright] / draws.mean(axis=0)[bright]
    assert 0.85 < np.median(ratio) < 1.15
    # and the simulated frame is one such draw: its mean matches the expectation
    assert abs(s.data[0].sum() - expected.sum()) < 5 * np.sqrt(expected.sum())


def test_object_shape_holds_the_scan() -> None:
    pos = fermat_spiral(100, 50e-9) / 30e-9
    h, w = object_shape_for(pos, 64)
    assert h % 2 == 0 and w % 2 == 0 and h >= 64 + 2 * np.abs(pos[:, 0]).max()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="frame size"):
        simulate_scan(n_frames=10, size=100)
    with pytest.raises(ValueError, match="dtype"):
        simulate_scan(n_frames=10, size=64, dtype="float64")
