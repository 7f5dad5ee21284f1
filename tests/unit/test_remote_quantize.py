"""``ptychoflow remote quantize``: an int8 copy the edge serves, with what it costs in its card."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")

from ptychoflow.cli import main  # noqa: E402
from ptychoflow.edge.bench.models import ptychonn_graph, write_card  # noqa: E402
from ptychoflow.edge.infer.hotswap import prepare  # noqa: E402
from ptychoflow.edge.settings import EdgeSettings  # noqa: E402
from ptychoflow.modelcard import ModelCard  # noqa: E402
from ptychoflow.preprocess import Preprocess  # noqa: E402
from ptychoflow.remote.quantize import QuantizeError, quantize_model  # noqa: E402
from ptychoflow.scanfile import write_scan  # noqa: E402
from ptychoflow.sim.physics import simulate_scan  # noqa: E402

CHANNELS = (8, 16, 16, 16)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return write_scan(tmp_path / "scan.h5", simulate_scan(n_frames=48, size=64, step_m=4e-7,
                                                         probe_diameter_px=36, seed=2))


def _model(folder: Path, size: int = 64, version: int = 3) -> Path:
    path = ptychonn_graph(folder / f"model-v{version}.onnx", size, channels=CHANNELS)
    write_card(path, version, Preprocess(input_size=size), 1e-8)
    return path


def test_the_int8_copy_is_served_and_its_card_says_what_it_costs(tmp_path: Path,
                                                                 scan: Path) -> None:
    src = _model(tmp_path / "models")
    out = quantize_model(src, scan, calibration=16)
    dst = Path(out["model"])
    assert dst.name == "model-v3-int8.onnx" and out["calibration_frames"] == 16
    assert out["calibration_frames"] + out["measured_on_frames"] <= 48
    card = ModelCard.load(tmp_path / "models" / "model-v3-int8.json")
    card.verify_file(dst)  # its own checksum
    assert card.version == 3 and card.model_file == dst.name
    assert card.provenance["quantized_from"] == "model-v3.onnx"
    assert card.provenance["quantized_from_sha256"] == ModelCard.load(
        src.with_suffix(".json")).sha256
    rms, worst = card.metrics["int8_phase_change_rms_rad"], card.metrics[
        "int8_phase_change_max_rad"]
    assert 0 < rms <= worst < 10 and out["int8_phase_change_rms_rad"] == rms
    # the edge takes it as it takes any model with a card: checksum, shapes, warm-up
    engine = "openvino" if find_spec("openvino") else "onnxruntime"
    served = prepare(dst.name, EdgeSettings(engine=engine, threads=1), tmp_path / "models")
    try:
        assert served.info.version == 3
        if engine == "openvino":
            assert served.runner.engine.precision == "int8"  # type: ignore[attr-defined]
        x = served.info.preprocess(np.full((2, 64, 64), 40, np.uint16))
        assert np.isfinite(served.runner.submit(x).result(30)[0]).all()
    finally:
        served.runner.close()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "model-v3-int8.json", "model-v3-int8.onnx", "model-v3.json", "model-v3.onnx"]


def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, scan: Path) -> None:
    folder = tmp_path / "models"
    cardless = ptychonn_graph(folder / "model-v1.onnx", 64, channels=CHANNELS)
    with pytest.raises(QuantizeError, match="card"):
        quantize_model(cardless, scan)
    big = _model(folder, size=128, version=2)  # wants 128x128 frames; the scan has 64x64
    with pytest.raises(QuantizeError, match="smaller than the 128x128"):
        quantize_model(big, scan)
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize_model(folder / "model-v9.onnx", scan)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model-v1.onnx", "model-v2.json", "model-v2.onnx"]
    ok = _model(folder, version=4)
    copy = Path(quantize_model(ok, scan, calibration=8)["model"])
    with pytest.raises(QuantizeError, match="already an int8 copy of model-v4.onnx"):
        quantize_model(copy, scan)


def test_by_hand_from_the_command_line(tmp_path: Path, scan: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = _model(tmp_path)
    assert main(["remote", "quantize", str(src), str(scan), "--calibration-frames", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["model"]).is_file() and out["version"] == 3
    assert main(["remote", "quantize", str(tmp_path / "nope.onnx"), str(scan)]) == 1
    assert "does not exist" in capsys.readouterr().err
