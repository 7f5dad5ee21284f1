"""The exported inference form computes what the trained network computes, without upsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from ptychoflow.edge.bench.models import ptychonn_graph  # noqa: E402
from ptychoflow.remote.export import check_onnx, to_onnx  # noqa: E402
from ptychoflow.remote.ptychonn import PtychoNN, PtychoNNConfig  # noqa: E402
from ptychoflow.remote.subpixel import SubPixelConv, fold_sequential, for_inference  # noqa: E402


def _trained_like(config: PtychoNNConfig, seed: int) -> PtychoNN:
    """Random weights and non-zero biases: zero biases would hide a bias folded wrongly."""
    torch.manual_seed(seed)
    net = PtychoNN(config).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    return net


@pytest.mark.parametrize("config", [PtychoNNConfig(32, (8, 16)),
                                    PtychoNNConfig(64, (8, 8, 16), amplitude=True)])
def test_folded_network_equals_the_plain_one(config: PtychoNNConfig) -> None:
    net = _trained_like(config, seed=3)
    folded = for_inference(net)
    x = torch.rand(3, 1, config.input_size, config.input_size) * 4.0
    with torch.no_grad():
        ref, got = net.predict(x), folded.predict(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-4
    assert not any(isinstance(m, nn.Upsample) for m in folded.modules())
    assert any(isinstance(m, nn.Upsample) for m in net.modules())  # the original is untouched


def test_one_pair_equals_upsample_then_conv_at_every_phase() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 9)  # not square: rows and columns must not be swapped
    with torch.no_grad():
        ref = torch.relu(conv(nn.Upsample(scale_factor=2, mode="nearest")(x)))
        got = SubPixelConv(conv, relu=True)(x)
    assert got.shape == (2, 7, 12, 18)
    for a in range(2):
        for c in range(2):
            phase = (got - ref)[..., a::2, c::2].abs().max()
            assert float(phase) < 1e-5, f"phase ({a}, {c}) differs by {float(phase)}"


def test_layers_that_are_not_the_pattern_stay() -> None:
    bilinear = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(2, 2, 3,
                                                                                     padding=1))
    strided = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=1, stride=2))
    five = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 5, padding=2))
    rows_only = nn.Sequential(nn.Upsample(scale_factor=(2, 1)), nn.Conv2d(2, 2, 3, padding=1))
    for seq in (bilinear, strided, five, rows_only):
        assert [type(m) for m in fold_sequential(seq)] == [type(m) for m in seq]
    pair = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0)), nn.Conv2d(2, 2, 3, padding=1))
    assert [type(m) for m in fold_sequential(pair)] == [SubPixelConv]


def test_exported_graph_has_no_resize_and_passes_parity(tmp_path: Path) -> None:
    net = _trained_like(PtychoNNConfig(64, (8, 16, 16, 16)), seed=5)
    path = tmp_path / "model-v1.onnx"
    to_onnx(net, path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Resize" not in ops and "DepthToSpace" in ops
    frames = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    assert check_onnx(path, net, frames) < 1e-4


def test_standin_graph_has_the_served_layout(tmp_path: Path) -> None:
    path = ptychonn_graph(tmp_path / "s.onnx", 32, channels=(8, 16, 16, 16))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Resize" not in ops and ops.count("DepthToSpace") == 4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"diffraction": np.ones((2, 1, 32, 32), np.float32)})[0]
    assert out.shape == (2, 1, 32, 32) and np.all(np.abs(out) <= np.pi)
