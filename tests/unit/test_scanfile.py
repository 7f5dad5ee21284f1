"""Scan files round-trip, and every kind of bad file gets one clear error."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychoflow.scanfile import ScanFileError, read_scan, scan_writer, write_scan
from ptychoflow.sim.physics import simulate_scan

SIEMENS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / \
    "siemens-star-small.npz.bz2"


@pytest.fixture(scope="module")
def scan():  # noqa: ANN201
    return simulate_scan(n_frames=40, size=64, seed=2)


def test_round_trip(tmp_path: Path, scan) -> None:  # noqa: ANN001
    path = write_scan(tmp_path / "a.h5", scan)
    assert path == tmp_path / "a.h5" and not (tmp_path / "a.h5.part").exists()
    back = read_scan(path)
    np.testing.assert_array_equal(back.data, scan.data)
    assert back.data.dtype == scan.data.dtype
    np.testing.assert_allclose(back.positions, scan.positions)
    assert back.energy_ev == scan.energy_ev and back.distance_m == scan.distance_m
    assert back.pixel_size_m == scan.pixel_size_m
    np.testing.assert_allclose(back.truth, scan.truth)
    np.testing.assert_allclose(back.probe, scan.probe, rtol=1e-6)
    assert back.truth_pixel_size_m == pytest.approx(scan.object_pixel_size_m)
    with h5py.File(path) as f:
        assert f["entry/instrument/positions/x"].attrs["units"] == "m"
        assert f["entry/instrument"].attrs["energy_units"] == "eV"


def test_failed_writer_leaves_nothing(tmp_path: Path, scan) -> None:  # noqa: ANN001
    with pytest.raises(RuntimeError):
        with scan_writer(tmp_path / "b.h5", scan.frame_shape, scan.data.dtype,
                         energy_ev=1e4, distance_m=1, pixel_size_m=1e-4) as w:
            w.append(scan.data[0], 0, 0)
            raise RuntimeError("detector fell over")
    assert list(tmp_path.iterdir()) == []


def test_siemens_star_reads_as_a_scan() -> None:
    s = read_scan(SIEMENS)
    assert s.data.shape == (516, 128, 128)
    assert s.probe is not None and s.probe.shape == (128, 128)
    # frames are centred like a detector's: the bright centre is near the middle
    mean = s.data.mean(axis=0)
    cy, cx = np.unravel_index(mean.argmax(), mean.shape)
    assert abs(cy - 64) < 20 and abs(cx - 64) < 20  # measured: (68, 80)
    px = s.positions_px()
    assert px.min() > -200 and px.max() < 200


def _write(tmp_path: Path, scan, **changes) -> Path:  # noqa: ANN001
    path = write_scan(tmp_path / "x.h5", scan)
    with h5py.File(path, "a") as f:
        for key, value in changes.items():
            key = key.replace("__", "/")
            if value is None:
                del f[key]
            else:
                del f[key]
                f[key] = value
    return path


@pytest.mark.parametrize("change,message", [
    ({"entry__data__data": None}, "missing dataset entry/data/data"),
    ({"entry__instrument__positions__x": None}, "missing dataset entry/instrument/positions/x"),
    ({"entry__data__data": np.zeros((40, 64), np.uint16)}, "must be (N, H, W)"),
    ({"entry__data__data": np.zeros((40, 64, 32), np.uint16)}, "square"),
    ({"entry__data__data": np.zeros((39, 64, 64), np.uint16)}, "39 frames but positions"),
    ({"entry__data__data": np.full((40, 64, 64), np.nan, np.float32)}, "NaN"),
    ({"entry__instrument__positions__y": np.full(40, np.nan)}, "positions contain NaN"),
    ({"entry__instrument__positions__y": np.zeros(39)}, "must be equal 1-D arrays"),
])
def test_bad_files_name_file_and_problem(tmp_path: Path, scan, change, message) -> None:  # noqa: ANN001
    path = _write(tmp_path, scan, **change)
    with pytest.raises(ScanFileError) as err:
        read_scan(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_attribute(tmp_path: Path, scan) -> None:  # noqa: ANN001
    path = write_scan(tmp_path / "x.h5", scan)
    with h5py.File(path, "a") as f:
        del f["entry/instrument"].attrs["energy"]
    with pytest.raises(ScanFileError, match="energy"):
        read_scan(path)


def test_truncated_file(tmp_path: Path, scan) -> None:  # noqa: ANN001
    path = write_scan(tmp_path / "x.h5", scan)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ScanFileError, match="truncated"):
        read_scan(path)


def test_not_hdf5_and_missing_and_part(tmp_path: Path) -> None:
    (tmp_path / "t.h5").write_text("hello")
    with pytest.raises(ScanFileError, match="not a readable HDF5"):
        read_scan(tmp_path / "t.h5")
    with pytest.raises(ScanFileError, match="no such file"):
        read_scan(tmp_path / "nope.h5")
    (tmp_path / "w.h5.part").write_text("")
    with pytest.raises(ScanFileError, match="still being written"):
        read_scan(tmp_path / "w.h5.part")


def test_positions_outside_truth(tmp_path: Path, scan) -> None:  # noqa: ANN001
    far = scan.positions.copy()
    far[0] = [5e-6, 0]
    path = _write(tmp_path, scan, entry__instrument__positions__y=far[:, 0])
    with pytest.raises(ScanFileError, match="outside the truth"):
        read_scan(path)
