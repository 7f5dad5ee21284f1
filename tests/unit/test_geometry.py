"""A beamline's frame orientation and position axes, mapped onto ptychoflow's conventions."""

from __future__ import annotations

import numpy as np
import pytest

from ptychoflow.geometry import Geometry
from ptychoflow.modelcard import ModelCard, ModelCardError, TensorSpec
from ptychoflow.preprocess import Preprocess
from ptychoflow.scanfile import Scan


def test_identity_changes_nothing() -> None:
    g = Geometry()
    a = np.arange(12).reshape(3, 4)
    assert g.identity and g.frames(a) is a and g.xy(1.0, 2.0) == (1.0, 2.0)


def test_frames_transpose_first_then_flips() -> None:
    a = np.arange(6).reshape(2, 3)
    g = Geometry(transpose=True, flip_rows=True)
    np.testing.assert_array_equal(g.frames(a), a.T[::-1, :])
    np.testing.assert_array_equal(Geometry(flip_cols=True).frames(a[None])[0], a[:, ::-1])
    assert g.frame_shape((2, 3)) == (3, 2) and Geometry().frame_shape((2, 3)) == (2, 3)


def test_positions_signs_units_and_swap() -> None:
    g = Geometry(x_sign=-1, position_unit="um", swap_xy=True)
    assert g.xy(3.0, 5.0) == pytest.approx((-5e-6, 3e-6))
    yx = np.array([[1.0, 2.0], [3.0, 4.0]])  # (y, x) in um, axes swapped
    np.testing.assert_allclose(g.positions_yx(yx), [[2e-6, -1e-6], [4e-6, -3e-6]])  # as xy()


def test_a_scan_in_beamline_axes_comes_back_in_ours() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 100, (4, 8, 6)).astype(np.uint16)
    pos = rng.normal(size=(4, 2)) * 1e-6
    ours = Scan(frames, pos, 8000.0, 1.0, 75e-6)
    g = Geometry(transpose=True, flip_cols=True, y_sign=-1, position_unit="nm")
    # what that beamline would have written: the inverse of g, applied to our scan
    sent_frames = np.swapaxes(frames[:, :, ::-1], 1, 2)
    sent_pos = pos * np.array([-1.0, 1.0]) / 1e-9
    back = g.scan(Scan(sent_frames, sent_pos, 8000.0, 1.0, 75e-6))
    np.testing.assert_array_equal(back.data, ours.data)
    np.testing.assert_allclose(back.positions, ours.positions)
    assert back.metadata["geometry"]["transpose"] is True


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown geometry setting.*rotate"):
        Geometry.from_dict({"rotate": 90})
    with pytest.raises(ValueError, match="position_unit 'inch'"):
        Geometry(position_unit="inch")
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        Geometry(x_sign=2)


def test_the_model_card_records_the_geometry(tmp_path) -> None:
    g = Geometry(transpose=True, x_sign=-1)
    card = ModelCard(1, "model-v1.onnx", "0" * 64, TensorSpec("diffraction", [-1, 1, 8, 8]),
                     [TensorSpec("phase", [-1, 1, 8, 8])], Preprocess(8), 1e-8,
                     geometry=g.to_dict())
    card.save(tmp_path / "model-v1.json")
    back = ModelCard.load(tmp_path / "model-v1.json")
    assert Geometry.from_dict(back.geometry) == g
    d = card.to_dict()
    d["geometry"] = {"transpose": True, "spin": 1}
    with pytest.raises(ModelCardError, match="spin"):
        ModelCard.from_dict(d)


def test_the_one_line_setting_reads_and_writes() -> None:
    g = Geometry.parse("transpose flip_cols x_sign=-1 position_unit=um")
    assert g == Geometry(transpose=True, flip_cols=True, x_sign=-1, position_unit="um")
    assert Geometry.parse(g.words()) == g and Geometry.parse("") == Geometry()
    with pytest.raises(ValueError, match="'rotate=90' unknown"):
        Geometry.parse("rotate=90")


def test_the_remote_stages_read_a_scan_in_ptychoflow_s_axes(tmp_path) -> None:
    from ptychoflow.remote.stages import StageError, _read
    from ptychoflow.scanfile import write_scan

    rng = np.random.default_rng(1)
    scan = Scan(rng.integers(0, 50, (3, 8, 8)).astype(np.uint16), rng.normal(size=(3, 2)) * 1e-6,
                8000.0, 1.0, 75e-6)
    path = write_scan(tmp_path / "s.h5", scan)
    g = Geometry(flip_cols=True, position_unit="um")
    got = _read(path, {"geometry": g.to_dict()})
    np.testing.assert_array_equal(got.data, scan.data[:, :, ::-1])
    np.testing.assert_allclose(got.positions, scan.positions * 1e-6)
    np.testing.assert_array_equal(_read(path, {}).data, scan.data)
    with pytest.raises(StageError, match="geometry"):
        _read(path, {"geometry": {"mirror": True}})
