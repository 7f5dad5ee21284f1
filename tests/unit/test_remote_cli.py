"""``ptychoflow remote ...`` by hand: each stage prints its record as JSON, settings come
from flags or the ``[remote]`` TOML section, and bad input exits 1 with the cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("ptychi")

from ptychoflow.cli import main  # noqa: E402
from ptychoflow.scanfile import write_scan  # noqa: E402
from ptychoflow.sim.physics import simulate_scan  # noqa: E402


def test_help_lists_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["remote", "--help"])
    out = capsys.readouterr().out
    for stage in ("reconstruct", "train", "export", "evaluate"):
        assert stage in out


def test_reconstruct_train_export_evaluate_by_hand(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    scan = write_scan(tmp_path / "s.h5", simulate_scan(n_frames=40, size=64, step_m=4e-7,
                                                       probe_diameter_px=36, seed=4))
    (tmp_path / "ptychoflow.toml").write_text(
        '[remote]\nrecon_epochs = 2\ntrain_epochs = 1\ndevice = "cpu"\ntensorrt = false\n')
    assert main(["remote", "reconstruct", str(scan), "--algorithm", "ePIE"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["epochs"] == 2 and rec["algorithm"] == "ePIE"
    assert main(["remote", "train", str(scan), "--reconstruction", rec["reconstruction"]]) == 0
    tr = json.loads(capsys.readouterr().out)
    assert tr["epochs"] == 1 and Path(tr["checkpoint"]).exists()
    assert main(["remote", "export", str(scan), "--reconstruction", rec["reconstruction"],
                 "--version", "3"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert Path(ex["model"]).name == "model-v3.onnx" and "ssim" in ex["quality"]
    assert main(["remote", "evaluate", ex["model"], str(scan), "--reconstruction",
                 rec["reconstruction"]]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["ssim"] == pytest.approx(ex["quality"]["ssim"], abs=1e-3)


def test_bad_scan_exits_1_with_the_cause(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n" + b"\0" * 50)
    assert main(["remote", "reconstruct", str(bad), "--workdir", str(tmp_path),
                 "--recon-epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "broken.h5" in err and "not a readable HDF5 scan file" in err
