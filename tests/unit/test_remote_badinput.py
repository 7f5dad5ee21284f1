"""Bad input to the remote stages: a clear error naming the cause, and nothing half-written
left behind; the training set and the best checkpoint survive every failed run."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ptychi")

from ptychoflow.remote import stages  # noqa: E402
from ptychoflow.remote.pairs import PairsError  # noqa: E402
from ptychoflow.remote.recon import ReconstructionError  # noqa: E402
from ptychoflow.remote.train import TrainingError  # noqa: E402
from ptychoflow.scanfile import ScanFileError, write_scan  # noqa: E402
from ptychoflow.sim.physics import simulate_scan  # noqa: E402
from ptychoflow.stages import Cancelled, Reporter  # noqa: E402

BASE = {"recon_epochs": 3, "train_epochs": 2, "train_batch_size": 16, "device": "cpu",
        "tensorrt": False}


def _scan(path: Path, n: int = 60, step: float = 4e-7, seed: int = 1) -> Path:
    return write_scan(path, simulate_scan(n_frames=n, size=64, step_m=step,
                                          probe_diameter_px=36, seed=seed))


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'unchanged' means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One scan, reconstructed and trained into a training set with a best checkpoint."""
    d = tmp_path_factory.mktemp("bad")
    src = _scan(d / "good.h5")
    params: dict[str, Any] = {**BASE, "train_dir": str(d / "ts")}
    params.update(stages.reconstruct(str(src), str(d), params))
    params.update(stages.train(str(src), str(d), params))
    return {"dir": d, "scan": src, "params": params}


def test_unreadable_scan_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"this is not HDF5" * 100)
    with pytest.raises(ScanFileError, match="not a readable HDF5 scan file"):
        stages.reconstruct(str(bad), str(tmp_path), BASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.h5"]


def test_inconsistent_scan_is_refused(tmp_path: Path) -> None:
    src = _scan(tmp_path / "s.h5")
    with h5py.File(src, "a") as f:  # drop the last position: 60 frames, 59 positions
        for axis in ("x", "y"):
            v = f[f"entry/instrument/positions/{axis}"][()]
            del f[f"entry/instrument/positions/{axis}"]
            f[f"entry/instrument/positions/{axis}"] = v[:-1]
    with pytest.raises(ScanFileError, match="every frame needs one"):
        stages.reconstruct(str(src), str(tmp_path), BASE)
    assert not list(tmp_path.glob("*-recon.h5")) and not _leftovers(tmp_path)


def test_positions_outside_the_object_are_refused(tmp_path: Path) -> None:
    src = _scan(tmp_path / "s.h5")
    with pytest.raises(ReconstructionError, match="reach outside the object"):
        stages.reconstruct(str(src), str(tmp_path), {**BASE, "object_size": 64})
    assert not list(tmp_path.glob("*-recon.h5")) and not _leftovers(tmp_path)


def test_divergence_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    src = _scan(tmp_path / "s.h5")
    with pytest.raises(ReconstructionError, match="diverged at epoch"):
        stages.reconstruct(str(src), str(tmp_path), {**BASE, "step_size": 1e30})
    assert not list(tmp_path.glob("*-recon.h5")) and not _leftovers(tmp_path)


def test_bad_parameters_name_the_setting(tmp_path: Path) -> None:
    src = _scan(tmp_path / "s.h5")
    with pytest.raises(stages.StageError, match="unknown reconstruction algorithm 'XPIE'"):
        stages.reconstruct(str(src), str(tmp_path), {**BASE, "algorithm": "XPIE"})
    with pytest.raises(stages.StageError, match="needs params\\['reconstruction'\\]"):
        stages.train(str(src), str(tmp_path), BASE)
    with pytest.raises(ReconstructionError, match="tike"):
        stages.reconstruct(str(src), str(tmp_path), {**BASE, "recon_engine": "tike"})


def test_reconstruction_of_another_scan_leaves_the_set_untouched(
        trained: dict[str, Any], tmp_path: Path) -> None:
    # a wider scan with the small scan's reconstruction: labels fall outside the object
    wide = _scan(tmp_path / "wide.h5", n=200, step=8e-7, seed=5)
    before = _digest(Path(trained["params"]["train_dir"]))
    with pytest.raises(PairsError, match="reach outside the object"):
        stages.train(str(wide), str(tmp_path), {**trained["params"], "path": None})
    assert _digest(Path(trained["params"]["train_dir"])) == before


def test_diverging_training_keeps_the_best_checkpoint(trained: dict[str, Any]) -> None:
    ts = Path(trained["params"]["train_dir"])
    best = ts / "checkpoints" / "best.pt"
    before = best.read_bytes()
    with pytest.raises(TrainingError, match="diverged.*unchanged"):
        stages.train(str(trained["scan"]), str(trained["dir"]),
                     {**trained["params"], "base_lr": 1e8, "max_lr": 1e8})
    assert best.read_bytes() == before and not _leftovers(ts)


def test_corrupt_checkpoint_is_named(trained: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(TrainingError, match="unreadable"):
        stages.export(str(trained["scan"]), str(tmp_path),
                      {**trained["params"], "checkpoint": str(bad),
                       "model_dir": str(tmp_path / "m")})
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_abort_mid_reconstruction_leaves_nothing(tmp_path: Path) -> None:
    src = _scan(tmp_path / "s.h5")
    cancel = threading.Event()
    seen: list[Any] = []

    class Q:
        def put(self, item: Any) -> None:
            seen.append(item)
            cancel.set()  # abort after the first epoch's report

    with pytest.raises(Cancelled):
        stages.reconstruct(str(src), str(tmp_path), {**BASE, "recon_epochs": 5},
                           Reporter("reconstruct", Q(), cancel))
    assert len(seen) == 1 and seen[0]["epoch"] == 1
    assert not list(tmp_path.glob("*-recon.h5")) and not _leftovers(tmp_path)


def test_pairs_need_finite_data(trained: dict[str, Any]) -> None:
    from ptychoflow.preprocess import Preprocess
    from ptychoflow.remote.pairs import ObjectGrid, make_pairs
    from ptychoflow.scanfile import read_scan

    scan = read_scan(trained["scan"])
    obj = np.ones((300, 300), np.complex64)
    obj[150, 150] = np.nan
    with pytest.raises(PairsError, match="NaN"):
        make_pairs(scan, ObjectGrid.centred(obj, scan.object_pixel_size_m), Preprocess(64), 64)
