"""The remote chain on small simulated scans: rPIE recovers the truth, continuous training
improves and warm-starts, export is faithful, and a fixed seed reproduces the card.

Scans are 64x64 frames on a Fermat spiral (120 positions), so the whole module runs in
well under a minute on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ptychi")

from ptychoflow.modelcard import ModelCard  # noqa: E402
from ptychoflow.remote import stages  # noqa: E402
from ptychoflow.remote.pairs import ObjectGrid  # noqa: E402
from ptychoflow.remote.ptychonn import PtychoNN, PtychoNNConfig, count_parameters  # noqa: E402
from ptychoflow.remote.quality import object_quality  # noqa: E402
from ptychoflow.remote.recon import read_reconstruction  # noqa: E402
from ptychoflow.scanfile import read_scan, write_scan  # noqa: E402
from ptychoflow.sim.physics import simulate_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIEMENS = ROOT.parent / "shared" / "data" / "siemens-star-small.npz.bz2"
BASE = {"recon_epochs": 12, "train_epochs": 6, "train_batch_size": 8, "device": "cpu", "seed": 0,
        "tensorrt": False}


def _scan(path: Path, seed: int, n: int = 120) -> Path:
    # a wide probe: most of each 64x64 label is illuminated, so the network can learn it
    return write_scan(path, simulate_scan(n_frames=n, size=64, step_m=4e-7, photons=1e6,
                                          probe_diameter_px=36, seed=seed))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two simulated scans, each staged and reconstructed once for the whole module."""
    d = tmp_path_factory.mktemp("remote")
    out: dict[str, Any] = {"dir": d, "scans": [], "progress": []}
    for i, seed in enumerate((1, 2)):
        src = _scan(d / "beamline" / f"scan{i + 1}.h5", seed)
        params = dict(BASE)
        params["path"] = str(src)
        events: list[dict[str, Any]] = []

        def report(f: float, message: str = "", _ev: list[Any] = events, **kw: Any) -> None:
            _ev.append({"fraction": f, **kw})

        params.update(stages.reconstruct(str(src), str(d), params, report))
        out["scans"].append(params)
        out["progress"].append(events)
    return out


def test_rpie_recovers_the_truth(work: dict[str, Any]) -> None:
    p = work["scans"][0]
    scan = read_scan(p["path"])
    rec = read_reconstruction(p["reconstruction"])
    assert rec.object.dtype == np.complex64 and rec.probe.shape == (64, 64)
    assert len(rec.errors) == 12 and rec.errors[-1] < 0.2 * rec.errors[0]
    assert rec.settings["algorithm"] == "rPIE"
    q = object_quality(ObjectGrid.centred(rec.object, rec.pixel_size_m),
                       ObjectGrid.centred(scan.truth, scan.truth_pixel_size_m),
                       scan.positions, 6 * scan.object_pixel_size_m)
    # stated thresholds: phase SSIM >= 0.9 and correlation >= 0.95 where the probe went
    assert q["ssim"] >= 0.9, q
    assert q["correlation"] >= 0.95, q
    with h5py.File(p["reconstruction"]) as f:
        assert {"object", "probe", "positions_px", "error"} <= set(f)
        assert f.attrs["pixel_size_m"] == pytest.approx(scan.object_pixel_size_m)
        assert json.loads(f.attrs["settings"])["epochs"] == 12


def test_reconstruction_reports_every_epoch(work: dict[str, Any]) -> None:
    events = work["progress"][0]
    assert [e["epoch"] for e in events] == list(range(1, 13))
    assert events[-1]["fraction"] == pytest.approx(1.0)
    assert all(np.isfinite(e["error"]) for e in events)


@pytest.mark.parametrize("algorithm", ["ePIE", "LSQML", "DM"])
def test_other_algorithms_lower_the_error(tmp_path: Path, algorithm: str) -> None:
    src = _scan(tmp_path / "s.h5", seed=3, n=60)
    r = stages.reconstruct(str(src), str(tmp_path), {**BASE, "recon_epochs": 4,
                                                     "algorithm": algorithm})
    err = read_reconstruction(r["reconstruction"]).errors
    assert r["algorithm"] == algorithm and err[-1] < err[0]


def test_siemens_star_converges(tmp_path: Path) -> None:
    if not SIEMENS.exists():
        pytest.skip("../shared/data/siemens-star-small.npz.bz2 is not here")
    r = stages.reconstruct(str(SIEMENS), str(tmp_path), {**BASE, "recon_epochs": 4})
    err = read_reconstruction(r["reconstruction"]).errors
    assert err[-1] < 0.5 * err[0], err


def test_ptychonn_edge_variant_size() -> None:
    model = PtychoNN()
    n = count_parameters(model)
    print(f"PtychoNN edge128 parameters: {n}")
    assert 700_000 < n < 760_000
    assert model(torch.zeros(2, 1, 128, 128)).shape == (2, 1, 128, 128)
    both = PtychoNN(PtychoNNConfig(64, amplitude=True))
    with torch.no_grad():  # alone, grad is on: float() of a grad tensor warns (an error here)
        phase, amp = both(torch.randn(3, 1, 64, 64))
    assert phase.abs().max() <= np.pi and 0 <= float(amp.min()) and float(amp.max()) <= 1


@pytest.fixture(scope="module")
def trained(work: dict[str, Any]) -> dict[str, Any]:
    """Two continuous-training rounds (scan 1, then scan 2) into one training set."""
    train_dir = work["dir"] / "trainset"
    rounds = []
    for p in work["scans"]:
        params = {**p, "train_dir": str(train_dir)}
        rounds.append(stages.train(p["path"], str(work["dir"]), params))
    return {"train_dir": train_dir, "rounds": rounds}


def test_training_lowers_val_loss_and_warm_starts(trained: dict[str, Any]) -> None:
    from ptychoflow.remote.dataset import TrainSet
    from ptychoflow.remote.train import _evaluate

    first, second = trained["rounds"]
    assert not first["warm_start"] and second["warm_start"]
    assert first["history"][-1]["val_loss"] < first["history"][0]["val_loss"]
    assert second["pairs"] == 240 and first["pairs"] == 120
    ts = TrainSet.open(trained["train_dir"])
    assert ts is not None and [s["key"] for s in ts.scans] == ["scan1", "scan2"]
    # the warm start begins from trained weights: far better than a fresh network
    _, _, xv, yv = (torch.from_numpy(a) for a in ts.load(0.1))
    torch.manual_seed(0)
    fresh = _evaluate(PtychoNN(PtychoNNConfig(64)), xv, yv, 64, torch.device("cpu"), False)
    assert second["start_val_loss"] < 0.9 * fresh
    assert second["best_val_loss"] <= second["start_val_loss"]


def test_a_round_near_its_allocations_end_checkpoints_and_resumes(work: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    p = work["scans"][0]
    params = {**p, "train_dir": str(tmp_path / "ts"), "train_epochs": 4,
              # inside the 30 s margin already: it stops after epoch 1 however fast that was
              "deadline": __import__("time").time() + 20}
    first = stages.train(p["path"], str(tmp_path), params)
    assert first["resume"] and first["epoch"] == 1 and Path(first["resume_from"]).is_file()
    again = stages.train(p["path"], str(tmp_path), {
        **params, "deadline": None, "resume_from": first["resume_from"]})
    assert "resume" not in again and again["resumed"]
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3, 4]  # no epoch lost or repeated
    assert again["pairs"] == 120  # the scan's pairs were added once
    assert not Path(first["resume_from"]).exists()


def test_export_is_faithful_and_carded(work: dict[str, Any], trained: dict[str, Any]) -> None:
    import onnxruntime as ort

    p = work["scans"][1]
    model_dir = work["dir"] / "models"
    params = {**p, "train_dir": str(trained["train_dir"]), "model_dir": str(model_dir)}
    r = stages.export(p["path"], str(work["dir"]), params)
    assert r["version"] == 1 and Path(r["model"]).name == "model-v1.onnx"
    assert r["parity_max_abs_diff"] < 1e-4
    card = ModelCard.load(r["card"])
    card.verify_file(r["model"])
    assert card.sha256 == r["sha256"] and card.input.shape == [-1, 1, 64, 64]
    assert card.output_pixel_size_m == pytest.approx(read_scan(p["path"]).object_pixel_size_m)
    assert card.training["scans"] == ["scan1", "scan2"]
    assert card.preprocessing.input_size == 64 and card.preprocessing.scale > 0
    assert "subpixel" in card.provenance["graph"]  # the served graph is the folded form
    q = r["quality"]
    assert {"ssim", "psnr", "phase_rmse", "truth_ssim", "truth_phase_rmse"} <= set(q)
    assert card.metrics["quality"]["ssim"] == q["ssim"]
    sess = ort.InferenceSession(r["model"], providers=["CPUExecutionProvider"])
    for b in (1, 5):  # dynamic batch axis
        out = sess.run(None, {"diffraction": np.zeros((b, 1, 64, 64), np.float32)})
        assert out[0].shape == (b, 1, 64, 64)
    assert "int8_model" not in r
    # the next export takes the next free number; an existing version is never overwritten.
    # With int8 it also writes the int8 copy, with its own card, which an --int8 edge serves
    r2 = stages.export(p["path"], str(work["dir"]), {**params, "int8": True})
    assert r2["version"] == 2
    copy = Path(r2["int8_model"])
    assert copy.name == "model-v2-int8.onnx"
    ModelCard.load(copy.with_suffix(".json")).verify_file(copy)
    assert 0 < r2["int8_phase_change_rms_rad"] < 1
    from ptychoflow.edge.infer.modelcheck import resolve_model_path

    assert resolve_model_path("2", model_dir, int8=True) == copy.resolve()
    with pytest.raises(RuntimeError, match="already exists"):
        stages.export(p["path"], str(work["dir"]), {**params, "version": 1})
    assert ModelCard.load(r["card"]).sha256 == r["sha256"]


@pytest.fixture(scope="module")
def exported(work: dict[str, Any], trained: dict[str, Any]) -> Path:
    """The trained network exported once into a folder of its own (not the export test's)."""
    p = work["scans"][1]
    params = {**p, "train_dir": str(trained["train_dir"]),
              "model_dir": str(work["dir"] / "edge-models")}
    return Path(stages.export(p["path"], str(work["dir"]), params)["model"])


def test_edge_accepts_the_exported_model(exported: Path) -> None:
    import onnxruntime as ort

    from ptychoflow.edge.infer.modelcheck import describe_model

    model = exported
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    info = describe_model(model, i.name, i.shape,
                          [(o.name, o.shape) for o in sess.get_outputs()], 1e-8)
    assert info.batch is None and info.height == 64 and info.has_card


def test_fixed_seed_gives_the_same_card_metrics(work: dict[str, Any]) -> None:
    p = work["scans"][0]
    metrics = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        for run in ("a", "b"):
            d = work["dir"] / f"seeded-{run}"
            params = {**p, "train_dir": str(d / "ts"), "model_dir": str(d / "models"),
                      "train_epochs": 2, "seed": 7}
            params.update(stages.train(p["path"], str(d), params))
            r = stages.export(p["path"], str(d), params)
            metrics.append(ModelCard.load(r["card"]).metrics)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    assert metrics[0] == metrics[1]
    assert metrics[0]["best_val_loss"] > 0
