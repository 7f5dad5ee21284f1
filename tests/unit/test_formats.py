"""Every scan layout reads to the same scan, and a file of no known layout is refused clearly.

One simulated scan is written as ours, as CXI and as the APS Velociprobe writes
it; each is read back through ``read_scan`` (what the stages, the simulator's
replay and the IOC call) and compared with the original: frames, positions
(y, x) in metres in our axes and sign, energy, distance and pixel size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychoflow.epicsenv import isolated_env, random_prefix
from ptychoflow.formats import (
    CXI,
    FORMATS,
    NATIVE,
    VELOCIPROBE,
    detect_format,
    write_cxi,
    write_velociprobe,
)
from ptychoflow.formats._h5 import ELECTRON_VOLT_J
from ptychoflow.ioc.validate import check_scan_path
from ptychoflow.remote.recon import Reconstruction, write_reconstruction_cxi
from ptychoflow.scanfile import Scan, ScanFileError, read_scan, write_scan
from ptychoflow.sim.cli import SimSettings, load_scan
from ptychoflow.sim.physics import simulate_scan

N = 40


@pytest.fixture(scope="module")
def scan() -> Scan:
    return simulate_scan(n_frames=N, size=64, seed=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, scan: Scan) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    return {
        "ours": write_scan(d / "ours.h5", scan),
        "cxi": write_cxi(d / "scan.cxi", scan),
        # 40 frames in three data files, inside a 96x80 detector, stage at (1.2 mm, -0.5 mm)
        "aps": write_velociprobe(d / "aps", scan, name="fly007", frames_per_file=16,
                                 pad=(10, 22, 16, 0), origin_nm=(1_200_000, -500_000)),
    }


def _same_geometry(back: Scan, scan: Scan) -> None:
    assert back.energy_ev == pytest.approx(scan.energy_ev, rel=1e-12)
    assert back.distance_m == pytest.approx(scan.distance_m, rel=1e-12)
    assert back.pixel_size_m == pytest.approx(scan.pixel_size_m, rel=1e-12)
    assert back.object_pixel_size_m == pytest.approx(scan.object_pixel_size_m, rel=1e-12)


def test_cxi_reads_back_as_the_same_scan(files: dict[str, Path], scan: Scan) -> None:
    ours, back = read_scan(files["ours"]), read_scan(files["cxi"])
    np.testing.assert_array_equal(back.data, ours.data)
    assert back.data.dtype == ours.data.dtype == np.uint16
    np.testing.assert_array_equal(back.positions, ours.positions)  # (y, x), metres, unshifted
    _same_geometry(back, ours)
    np.testing.assert_array_equal(back.probe, ours.probe)
    np.testing.assert_array_equal(back.truth, ours.truth)
    assert back.truth_pixel_size_m == ours.truth_pixel_size_m
    assert back.metadata == scan.metadata  # what the simulator recorded


def test_cxi_holds_everything_where_the_spec_and_ptychodus_look(files: dict[str, Path],
                                                               scan: Scan) -> None:
    with h5py.File(files["cxi"]) as f:
        assert f["cxi_version"][()] == 160
        assert f["entry_1/data_1/data"].shape == (N, 64, 64)
        t = f["entry_1/sample_1/geometry_1/translation"][()]
        assert t.shape == (N, 3)
        np.testing.assert_array_equal(t[:, 0], scan.positions[:, 1])  # CXI x is our x
        np.testing.assert_array_equal(t[:, 1], scan.positions[:, 0])  # CXI y is our y
        np.testing.assert_array_equal(f["entry_1/data_1/translation"][()], t)
        energy_j = f["entry_1/instrument_1/source_1/energy"][()]
        assert energy_j == pytest.approx(scan.energy_ev * 1.602176634e-19, rel=1e-12)
        det = f["entry_1/instrument_1/detector_1"]
        assert det["distance"][()] == scan.distance_m
        assert det["x_pixel_size"][()] == det["y_pixel_size"][()] == scan.pixel_size_m
        np.testing.assert_array_equal(f["entry_1/instrument_1/source_1/illumination"][()],
                                      scan.probe)
    assert not list(files["cxi"].parent.glob("*.part"))


def _foreign_cxi(path: Path, scan: Scan, *, transposed: bool, data_1: bool,
                 mask: np.ndarray | None = None) -> Path:
    """A CXI file as PyNX (translation (3, N), with units) or CDTools/ptychodus write it."""
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = scan.data
        det["distance"] = scan.distance_m
        det["x_pixel_size"] = det["y_pixel_size"] = scan.pixel_size_m
        if mask is not None:
            det["mask"] = mask
        f["entry_1/instrument_1/source_1/energy"] = scan.energy_ev * ELECTRON_VOLT_J
        xyz = np.stack([scan.positions[:, 1] + 3e-3, scan.positions[:, 0] - 1e-3,
                        np.zeros(N)])  # stage coordinates: an offset origin
        if transposed:
            f["entry_1/sample_1/geometry_1/translation"] = xyz * 1e6
            f["entry_1/sample_1/geometry_1/translation"].attrs["units"] = "um"
        else:
            f["entry_1/sample_1/geometry_1/translation"] = xyz.T
        if data_1:
            f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
    return path


@pytest.mark.parametrize("transposed, data_1", [(True, True), (False, False)])
def test_cxi_of_other_tools_reads_with_positions_centred(tmp_path: Path, scan: Scan,
                                                         transposed: bool, data_1: bool) -> None:
    back = read_scan(_foreign_cxi(tmp_path / "f.cxi", scan, transposed=transposed,
                                  data_1=data_1))
    np.testing.assert_array_equal(back.data, scan.data)
    # stage coordinates are centred on their mean, as ptychodus centres stage encoders
    np.testing.assert_allclose(back.positions, scan.positions - scan.positions.mean(axis=0),
                               rtol=0, atol=1e-15)
    _same_geometry(back, scan)
    assert back.probe is None and back.truth is None
    assert back.metadata == {"source_format": "CXI"}


def test_a_storage_ring_energy_is_not_taken_for_the_photon_energy(tmp_path: Path,
                                                                   scan: Scan) -> None:
    path = _foreign_cxi(tmp_path / "nx.cxi", scan, transposed=False, data_1=True)
    with h5py.File(path, "a") as f:  # NXcxi_ptycho: source_1/energy is the machine's
        f["entry_1/instrument_1/source_1/energy"][()] = 7e9 * ELECTRON_VOLT_J
    with pytest.raises(ScanFileError, match="no photon energy between 10 eV and 1e\\+06 eV: "
                                            "/entry_1/instrument_1/source_1/energy = 7e\\+09 eV"):
        read_scan(path)
    with h5py.File(path, "a") as f:
        f["entry_1/instrument_1/beam_1/energy"] = scan.energy_ev / 1e3
        f["entry_1/instrument_1/beam_1/energy"].attrs["units"] = "keV"
    assert read_scan(path).energy_ev == pytest.approx(scan.energy_ev, rel=1e-12)


def test_cxi_mask_zeroes_bad_pixels(tmp_path: Path, scan: Scan) -> None:
    mask = np.zeros((64, 64), np.uint32)
    mask[5, 7] = 1  # CXI_PIXEL_IS_INVALID
    back = read_scan(_foreign_cxi(tmp_path / "m.cxi", scan, transposed=False, data_1=True,
                                  mask=mask))
    assert scan.data[:, 5, 7].any() and not back.data[:, 5, 7].any()
    keep = mask == 0
    np.testing.assert_array_equal(back.data[:, keep], scan.data[:, keep])


def test_velociprobe_reads_back_as_the_same_scan(files: dict[str, Path], scan: Scan) -> None:
    master = files["aps"]
    assert master == files["aps"].parent / "fly007_master.h5"
    assert sorted(p.name for p in master.parent.iterdir()) == [
        "fly007_data_000001.h5", "fly007_data_000002.h5", "fly007_data_000003.h5",
        "fly007_master.h5"]
    back = read_scan(master)
    # frames cropped out of the 96x80 detector around the beam centre: the scan's frames
    np.testing.assert_array_equal(back.data, scan.data)
    # integer nanometres, centred on their mean as ptychodus does: the scan's positions
    np.testing.assert_allclose(back.positions, scan.positions - scan.positions.mean(axis=0),
                               rtol=0, atol=1e-9)
    assert np.ptp(back.positions[:, 1]) == pytest.approx(np.ptp(scan.positions[:, 1]), abs=2e-9)
    _same_geometry(back, scan)
    assert back.metadata["crop"] == "rows 10:74, columns 16:80"
    assert back.metadata["frames_without_position"] == 0
    assert back.metadata["positions_file"] == str(master.parents[2] / "positions" /
                                                  "fly007_0.txt")


def test_velociprobe_matches_frames_and_positions_by_trigger(tmp_path: Path,
                                                             scan: Scan) -> None:
    master = write_velociprobe(tmp_path, scan, frames_per_file=N)
    pos = tmp_path / "positions" / "fly001_0.txt"
    lines = pos.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    del rows[5]  # frame 5 was never triggered
    rows.insert(4, "0,999999,999999,0,0,-999999,0,3")  # a second row for trigger 3
    rows.append(f"0,1,2,0,0,-2,0,{N + 3}")  # a trigger with no frame
    pos.write_text("\n".join([header, *rows]) + "\n")
    back = read_scan(master)
    kept = [i for i in range(N) if i != 5]
    np.testing.assert_array_equal(back.data, scan.data[kept])
    # the first row of trigger 3 wins; steps between kept frames are the scan's
    np.testing.assert_allclose(np.diff(back.positions, axis=0),
                               np.diff(scan.positions[kept], axis=0), rtol=0, atol=2e-9)
    assert back.metadata["frames_without_position"] == 1
    assert back.metadata["positions_without_frame"] == 1


def test_layout_is_told_by_content_not_name(files: dict[str, Path], tmp_path: Path) -> None:
    assert [detect_format(files[k]) for k in ("ours", "cxi", "aps")] == [NATIVE, CXI, VELOCIPROBE]
    disguised = tmp_path / "really-cxi.h5"
    disguised.write_bytes(files["cxi"].read_bytes())
    assert detect_format(disguised) is CXI
    np.testing.assert_array_equal(read_scan(disguised).data, read_scan(files["cxi"]).data)


def test_a_file_of_no_known_layout_lists_every_layout_tried(tmp_path: Path) -> None:
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["measurement/frames"] = np.zeros((2, 4, 4))
    with pytest.raises(ScanFileError) as err:
        read_scan(odd)
    msg = str(err.value)
    assert msg.startswith(f"{odd}: matches no known scan layout (it holds /measurement/frames)")
    for fmt in FORMATS:
        assert f"{fmt.name}: {fmt.expects}" in msg
    assert "/entry_1/sample_1/geometry_1/translation" in msg and "_master.h5" in msg
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ScanFileError, match="not readable HDF5 .* matches no known scan layout; "
                                            "tried ptychoflow: "):
        read_scan(text)


@pytest.mark.parametrize("drop, named", [
    ("entry_1/sample_1/geometry_1/translation",
     "missing dataset /entry_1/sample_1/geometry_1/translation nor "
     "/entry_1/data_1/translation nor /entry_1/instrument_1/detector_1/translation"),
    ("entry_1/instrument_1/detector_1/data",
     "missing dataset /entry_1/data_1/data nor /entry_1/instrument_1/detector_1/data "
     "(the diffraction frames)"),
    ("entry_1/instrument_1/source_1/energy",
     "missing dataset /entry_1/instrument_1/source_1/energy (the photon energy in J)"),
    ("entry_1/instrument_1/detector_1/distance",
     "missing dataset /entry_1/instrument_1/detector_1/distance"),
    ("entry_1/instrument_1/detector_1/y_pixel_size",
     "missing dataset /entry_1/instrument_1/detector_1/y_pixel_size"),
])
def test_a_partial_cxi_file_names_the_missing_dataset(tmp_path: Path, scan: Scan, drop: str,
                                                      named: str) -> None:
    path = write_cxi(tmp_path / "p.cxi", scan)
    with h5py.File(path, "a") as f:
        del f[drop]
        for link in ("entry_1/data_1/translation", "entry_1/instrument_1/detector_1/translation"):
            if drop.endswith("translation"):
                del f[link]
    with pytest.raises(ScanFileError) as err:
        read_scan(path)
    assert str(err.value).startswith(f"{path}: {named}")


def test_truncated_files_are_refused_as_truncated(files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("cxi", "aps"):
        src = files[name]
        cut = tmp_path / name / src.name
        cut.parent.mkdir()
        cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        with pytest.raises(ScanFileError, match="truncated") as err:
            read_scan(cut)
        assert str(err.value).startswith(str(cut))
    with pytest.raises(ScanFileError, match="no such file"):
        read_scan(tmp_path / "gone.cxi")


def test_velociprobe_names_a_missing_data_or_positions_file(tmp_path: Path, scan: Scan) -> None:
    master = write_velociprobe(tmp_path, scan, frames_per_file=16)
    with pytest.raises(ScanFileError, match=r"an Eiger data file: give its \*_master.h5\) "
                                            r"\(it holds /entry/data/data\)"):
        read_scan(master.parent / "fly001_data_000001.h5")
    (master.parent / "fly001_data_000002.h5").unlink()
    with pytest.raises(ScanFileError, match="data file .*fly001_data_000002.h5 is missing"):
        read_scan(master)
    master = write_velociprobe(tmp_path / "b", scan)
    (tmp_path / "b" / "positions" / "fly001_0.txt").unlink()
    with pytest.raises(ScanFileError, match="no positions file; looked for .*fly001_0.txt"):
        read_scan(master)


def test_the_ioc_accepts_every_layout_and_refuses_others_with_the_reason(
        files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("ours", "cxi", "aps"):
        assert check_scan_path(str(files[name]), files["ours"].parent) is None
    odd = files["ours"].parent / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["x"] = 1
    problem = check_scan_path(str(odd), odd.parent)
    assert problem is not None and problem.startswith(f"Scan:Path {odd}: matches no known scan "
                                                      "layout (it holds /x); tried ptychoflow")
    master = write_velociprobe(tmp_path, read_scan(files["ours"]), name="fly002")
    (tmp_path / "positions" / "fly002_0.txt").unlink()
    problem = check_scan_path(str(master), tmp_path)
    assert problem is not None and "no positions file" in problem


def test_the_simulator_replays_a_cxi_file(files: dict[str, Path], tmp_path: Path,
                                          scan: Scan) -> None:
    loaded = load_scan(SimSettings(replay=str(files["cxi"])))
    np.testing.assert_array_equal(loaded.data, scan.data)
    env = isolated_env()
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ptychoflow.cli", "sim", "--replay", str(files["cxi"]),
         "--prefix", random_prefix(), "--rate", "0", "--delay", "0", "--out", str(out),
         "--name", "replay"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    saved = read_scan(out / "replay_0001.h5")  # what it streamed, saved in our layout
    np.testing.assert_array_equal(saved.data, scan.data)
    np.testing.assert_array_equal(saved.positions, scan.positions)
    _same_geometry(saved, scan)


def test_reconstruction_cxi_has_object_and_probe_where_ptychodus_reads_them(
        tmp_path: Path, scan: Scan) -> None:
    rng = np.random.default_rng(0)
    obj = (rng.normal(size=(100, 120)) + 1j * rng.normal(size=(100, 120))).astype(np.complex64)
    rec = Reconstruction(object=obj, probe=scan.probe, positions_px=scan.positions_px(),
                         pixel_size_m=scan.object_pixel_size_m, errors=[3.0, 2.0, 1.5],
                         settings={"algorithm": "rPIE"}, source="/data/ours.h5")
    path = write_reconstruction_cxi(tmp_path / "ours-recon.cxi", rec, scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours-recon.cxi"]  # no .part left
    px = scan.object_pixel_size_m
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 160
        np.testing.assert_array_equal(f["entry_1/image_2/data"][()], obj[None])  # object
        np.testing.assert_array_equal(f["entry_1/image_1/data"][()], scan.probe[None, None])
        assert f["entry_1/image_2/data"].attrs["axes"] == "layer:y:x"
        assert f["entry_1/image_1/data"].attrs["axes"] == "coherent:incoherent:y:x"
        np.testing.assert_array_equal(f["entry_1/instrument_1/source_1/illumination"][()],
                                      scan.probe[None, None])
        np.testing.assert_array_equal(f["entry_1/object/data"][()], obj[None])
        np.testing.assert_allclose(f["entry_1/image_2/image_size"][()], [120 * px, 100 * px, 0])
        t = f["entry_1/sample_1/geometry_1/translation"][()]
        np.testing.assert_allclose(t[:, :2], scan.positions[:, ::-1], rtol=1e-12)  # (x, y)
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(
            scan.energy_ev * ELECTRON_VOLT_J, rel=1e-12)
        pt = f["entry_1/ptychodus"]
        assert pt["object_pixel_width_m"][()] == pt["object_pixel_height_m"][()] == px
        # ptychodus puts x at pixel (x - centre) / px + width / 2; ours at origin + x / px
        assert pt["object_center_x_m"][()] == pt["object_center_y_m"][()] == 0.0
        np.testing.assert_array_equal(pt["loss_values"][()], rec.errors)
        assert f["entry_1/title"][()] == b"ours.h5"


def test_the_reconstruct_stage_writes_a_cxi_alongside(tmp_path: Path) -> None:
    pytest.importorskip("ptychi")
    from ptychoflow.remote import stages

    src = write_cxi(tmp_path / "small.cxi", simulate_scan(n_frames=20, size=64, seed=3))
    params = {"recon_epochs": 2, "device": "cpu", "seed": 0}
    out = stages.reconstruct(str(src), str(tmp_path), params)
    cxi = Path(out["reconstruction_cxi"])
    assert cxi == Path(out["reconstruction"]).with_suffix(".cxi") and cxi.is_file()
    with h5py.File(cxi, "r") as f:
        assert f["entry_1/image_2/data"].shape[0] == 1 and f["entry_1/image_2/data"].ndim == 3
        assert f["entry_1/image_1/data"].shape == (1, 1, 64, 64)
        assert len(f["entry_1/ptychodus/loss_values"]) == 2
    off = stages.reconstruct(str(src), str(tmp_path / "off"), {**params, "recon_cxi": False})
    assert "reconstruction_cxi" not in off and not list((tmp_path / "off").glob("*.cxi"))
