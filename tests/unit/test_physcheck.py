"""The physics check: a prediction that explains its frame scores low, one that does not, high.

Frames come from the simulator's own forward model, so the check's forward model is
held to it: with the true object patch the misfit is near zero (the simulator's
frames, noise-free, at positions where the label grid falls on object pixels), and
a wrong phase scores many times more.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ptychoflow.edge.infer.physics import physics_check
from ptychoflow.edge.output.consistency import ConsistencyMeter
from ptychoflow.ioc.consistency import ConsistencyRule
from ptychoflow.modelcard import ModelCard, TensorSpec
from ptychoflow.ntnda import Frame
from ptychoflow.physcheck import (
    CHECK_ATTRIBUTE,
    ForwardModel,
    PhysicsCheckError,
    card_value,
    load_probe,
    probe_path,
    save_probe,
)
from ptychoflow.preprocess import Preprocess
from ptychoflow.remote.pairs import ObjectGrid, output_pixel_size, reference_phase
from ptychoflow.sim import physics
from ptychoflow.sim.physics import simulate_scan


@pytest.fixture(scope="module")
def sim() -> dict[str, object]:
    scan = simulate_scan(n_frames=40, size=64, step_m=4e-7, photons=1e6,
                         probe_diameter_px=36, seed=1)
    dx = scan.truth_pixel_size_m
    # positions half a pixel off the object grid: the labels' pixel (S-1)/2 on the
    # position then samples object pixels exactly (no interpolation blur)
    pos = np.floor(scan.positions / dx) + 0.5
    clean = physics.far_field(physics.exit_waves(scan.truth, scan.probe, pos))
    return {"scan": scan, "dx": dx, "pos_m": pos * dx, "clean": clean}


def _patches(sim: dict, pre: Preprocess) -> tuple[np.ndarray, float]:
    scan = sim["scan"]
    px = output_pixel_size(scan, pre)  # type: ignore[arg-type]
    grid = ObjectGrid.centred(scan.truth, sim["dx"])  # type: ignore[attr-defined]
    return grid.patches(sim["pos_m"], pre.input_size, px), px


def test_the_true_patch_explains_a_simulated_frame(sim: dict) -> None:
    pre = Preprocess(64, None, "sqrt", 0.01)
    patches, px = _patches(sim, pre)
    fm = ForwardModel.build(sim["scan"].probe, sim["dx"], pre, px)
    x = pre(sim["clean"])
    right = fm.errors(x, reference_phase(patches), np.abs(patches))
    wrong = fm.errors(x, np.zeros_like(reference_phase(patches)), np.abs(patches))
    shuffled = fm.errors(x, reference_phase(patches)[::-1], np.abs(patches)[::-1])
    assert np.median(right) < 0.04  # only the probe's tail at the field's edge differs
    assert np.median(wrong) > 5 * np.median(right)
    assert np.median(shuffled) > 4 * np.median(right)
    # the photon noise of 1e6 photons a frame adds a few per cent, no more
    noisy = fm.errors(pre(np.random.default_rng(0).poisson(sim["clean"])),
                      reference_phase(patches), np.abs(patches))
    assert np.median(noisy) < 0.07


def test_a_global_phase_and_the_flux_do_not_count(sim: dict) -> None:
    pre = Preprocess(32, None, "sqrt", 0.01)  # binned: the patch is the central half
    patches, px = _patches(sim, pre)
    fm = ForwardModel.build(sim["scan"].probe, sim["dx"], pre, px)
    ph = reference_phase(patches)
    e = fm.errors(pre(sim["clean"]), ph)
    assert np.allclose(fm.errors(pre(sim["clean"]), ph + 1.3), e, atol=1e-4)
    assert np.allclose(fm.errors(pre(4 * sim["clean"]), ph), e, atol=1e-4)


def test_a_probe_from_another_geometry_is_refused(sim: dict) -> None:
    pre = Preprocess(32, 48, "sqrt")
    with pytest.raises(PhysicsCheckError, match="crops frames to 48"):
        ForwardModel.build(sim["scan"].probe, sim["dx"], pre, sim["dx"])


def _card(folder: Path, probe: np.ndarray, dx: float, pre: Preprocess) -> ModelCard:
    folder.mkdir(parents=True, exist_ok=True)
    entry = save_probe(probe_path(folder / "model-v1.onnx"), probe, dx)
    return ModelCard(1, "model-v1.onnx", "0" * 64, TensorSpec("diffraction", [-1, 1, 64, 64]),
                     [TensorSpec("phase", [-1, 1, 64, 64])], pre, dx,
                     metrics={"consistency": 0.05}, probe=entry)


def test_the_card_carries_the_probe_and_its_checksum(sim: dict, tmp_path: Path) -> None:
    pre = Preprocess(64, None, "sqrt")
    card = _card(tmp_path, sim["scan"].probe, sim["dx"], pre)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.probe["file"] == "model-v1-probe.npy"
    assert again.probe["sha256"] == hashlib.sha256(
        (tmp_path / "model-v1-probe.npy").read_bytes()).hexdigest()
    probe, pixel = load_probe(again.probe, tmp_path)
    assert np.array_equal(probe, sim["scan"].probe) and pixel == sim["dx"]
    assert probe_path(tmp_path / "model-v1-int8.onnx") == tmp_path / "model-v1-probe.npy"


def test_the_edge_turns_the_check_off_and_says_why(sim: dict, tmp_path: Path) -> None:
    from ptychoflow.edge.infer.modelcheck import describe_model

    pre = Preprocess(64, None, "sqrt")
    card = _card(tmp_path, sim["scan"].probe, sim["dx"], pre)
    card.save(tmp_path / "model-v1.json")
    (tmp_path / "model-v1.onnx").write_bytes(b"")
    info = describe_model(tmp_path / "model-v1.onnx", "diffraction", [None, 1, 64, 64],
                          [("phase", [None, 1, 64, 64])], 0.0, verify=False)
    check, note = physics_check(info, 10)
    assert check is not None and "divisible by 10" in note and "0.05" in note
    assert physics_check(info, 0) == (None, "physics check off (check_every = 0)")
    probe_file = tmp_path / "model-v1-probe.npy"
    probe_file.write_bytes(probe_file.read_bytes()[:-8] + b"\0" * 8)  # altered
    check, note = physics_check(info, 10)
    assert check is None and "does not match the card" in note
    probe_file.unlink()
    check, note = physics_check(info, 10)
    assert check is None and "not beside the model" in note


def test_checked_frames_carry_their_misfit_and_the_meter_runs_the_median(sim: dict) -> None:
    pre = Preprocess(64, None, "sqrt", 0.01)
    patches, px = _patches(sim, pre)
    from ptychoflow.edge.infer.physics import FrameCheck

    check = FrameCheck(ForwardModel.build(sim["scan"].probe, sim["dx"], pre, px), 4)
    frames = [Frame(sim["clean"][i].astype(np.uint16), i + 1, 0.0, {}) for i in range(8)]
    rows = check.rows(frames)
    assert [frames[i].unique_id for i in rows] == [4, 8]
    x = pre(sim["clean"][:8])
    check.apply(frames, x, rows, reference_phase(patches[:8]), np.abs(patches[:8]))
    assert [CHECK_ATTRIBUTE in f.attributes for f in frames] == [
        False, False, False, True, False, False, False, True]
    meter = ConsistencyMeter()
    assert np.isnan(meter.value())
    attrs = [meter.take(f) for f in frames]
    assert attrs[3] == {CHECK_ATTRIBUTE: frames[3].attributes[CHECK_ATTRIBUTE]}
    assert attrs[0] is None
    assert meter.value() == pytest.approx(card_value(np.array(
        [frames[3].attributes[CHECK_ATTRIBUTE], frames[7].attributes[CHECK_ATTRIBUTE]])),
        abs=1e-5)
    meter.reset()
    assert np.isnan(meter.value())


def test_the_rule_fires_once_after_the_drift_held() -> None:
    rule = ConsistencyRule(factor=2.0, hold_s=10.0)
    assert rule.update(0.15, 0.1, 0.0) is None  # under 2 x 0.1
    assert rule.update(0.3, 0.1, 1.0) is None  # above: the hold starts
    assert rule.update(0.3, 0.1, 10.0) is None  # 9 s
    why = rule.update(0.31, 0.1, 11.0)
    assert why is not None and "0.31" in why and "held for 10 s" in why
    assert rule.update(0.4, 0.1, 30.0) is None  # one drift, one run
    assert rule.update(0.1, 0.1, 31.0) is None  # back to normal re-arms
    assert rule.update(0.3, 0.1, 32.0) is None
    assert rule.update(0.3, 0.1, 42.0) is not None


def test_the_rule_waits_for_a_card_value_and_can_be_turned_off() -> None:
    rule = ConsistencyRule(factor=2.0, hold_s=0.0)
    assert rule.update(5.0, None, 0.0) is None  # no card value: nothing to compare with
    assert rule.update(float("nan"), 0.1, 0.0) is None  # no check running
    rule.factor = 0.0
    assert rule.update(5.0, 0.1, 1.0) is None
    rule.factor = 2.0
    assert rule.update(5.0, 0.1, 2.0) is not None
    rule.defer(3.0)  # no run could start: again after another hold
    assert rule.update(5.0, 0.1, 3.0) is not None
    rule.rearm()
    assert not rule.fired and rule.since is None
