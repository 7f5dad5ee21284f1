"""Which models the edge serves: inside the model folder, matching their card, runnable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ptychoflow.edge.bench.models import affine_model, write_card
from ptychoflow.edge.infer.engines import OrtEngine
from ptychoflow.edge.infer.hotswap import prepare
from ptychoflow.edge.infer.modelcheck import ModelError, resolve_model_path
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.preprocess import Preprocess


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    affine_model(d / "model-v1.onnx", 16)
    write_card(d / "model-v1.onnx", 1, Preprocess(16, intensity="linear"), 1e-8)
    return d


def test_paths_resolve_inside_the_folder_only(folder: Path, tmp_path: Path) -> None:
    assert resolve_model_path("model-v1.onnx", folder) == (folder / "model-v1.onnx").resolve()
    assert resolve_model_path("1", folder) == (folder / "model-v1.onnx").resolve()
    with pytest.raises(ModelError, match="outside the model folder"):
        resolve_model_path("../x/model-v1.onnx", folder)
    outside = affine_model(tmp_path / "evil" / "model-v5.onnx", 16)
    with pytest.raises(ModelError, match="outside the model folder"):
        resolve_model_path(str(outside), folder)
    os.symlink(outside, folder / "model-v5.onnx")  # a link pointing out is refused too
    with pytest.raises(ModelError, match="outside the model folder"):
        resolve_model_path("5", folder)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path("7", folder)
    with pytest.raises(ModelError, match="not an .onnx"):
        resolve_model_path("model-v1.json", folder)


def test_with_int8_a_model_stands_for_its_int8_copy_where_one_exists(folder: Path,
                                                                     tmp_path: Path) -> None:
    plain, copy = (folder / "model-v1.onnx").resolve(), (folder / "model-v1-int8.onnx").resolve()
    assert resolve_model_path("1", folder, int8=True) == plain  # no copy yet
    affine_model(copy, 16)
    # by version and by path (the IOC deploys the registered path)
    for spec in ("1", "model-v1.onnx", str(plain)):
        assert resolve_model_path(spec, folder, int8=True) == copy
        assert resolve_model_path(spec, folder) == plain
    assert resolve_model_path("model-v1-int8.onnx", folder) == copy
    # a copy that links out of the folder is refused like any such path
    copy.unlink()
    outside = affine_model(tmp_path / "evil" / "model-v1-int8.onnx", 16)
    os.symlink(outside, copy)
    with pytest.raises(ModelError, match="outside the model folder"):
        resolve_model_path("1", folder, int8=True)


def _settings(**kw: object) -> EdgeSettings:
    return EdgeSettings(threads=1, **kw)  # type: ignore[arg-type]


def test_prepare_reads_the_card(folder: Path) -> None:
    served = prepare("1", _settings(), folder)
    try:
        info = served.info
        assert info.version == 1 and info.has_card and info.batch is None
        assert info.preprocess.intensity == "linear" and info.pixel_size_m == 1e-8
        out = served.runner.submit(np.ones((3, 1, 16, 16), np.float32)).result(10)
        assert out[0].shape == (3, 1, 16, 16)
    finally:
        served.runner.close()


def test_checksum_mismatch_is_refused(folder: Path) -> None:
    affine_model(folder / "model-v1.onnx", 16, scale=3.0)  # file changed after its card
    with pytest.raises(ModelError, match="sha256"):
        prepare("1", _settings(), folder)


def test_card_shape_mismatch_is_refused(folder: Path) -> None:
    card = json.loads((folder / "model-v1.json").read_text())
    card["input"]["shape"] = [-1, 1, 32, 32]
    (folder / "model-v1.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="input shape"):
        prepare("1", _settings(), folder)


def test_model_without_card_uses_its_own_shapes(tmp_path: Path) -> None:
    affine_model(tmp_path / "net.onnx", 24, batch=4, amplitude=True)
    served = prepare("net.onnx", _settings(pixel_size_m=2e-8), tmp_path)
    try:
        info = served.info
        assert (info.batch, info.height, info.width) == (4, 24, 24)
        assert info.preprocess == Preprocess(input_size=24)
        assert info.pixel_size_m == 2e-8 and info.card is None
        assert info.output_names[info.phase_index] == "phase"
        assert info.output_names[info.amplitude_index] == "amplitude"  # type: ignore[index]
    finally:
        served.runner.close()


def test_fixed_batch_models_get_padded_and_split(tmp_path: Path) -> None:
    eng = OrtEngine(affine_model(tmp_path / "m.onnx", 8, batch=4, scale=2.0), threads=1)
    assert eng.fixed_batch == 4
    x = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 1, 8, 8),
                                                                        np.float32)
    (y,) = eng.infer(x)
    assert y.shape == (10, 1, 8, 8)
    np.testing.assert_allclose(y[:, 0, 0, 0], 2 * np.arange(10))


def test_multi_channel_models_are_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from ptychoflow.edge.bench.models import _save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 8, 8])
    _save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
          tmp_path / "rgb.onnx")
    with pytest.raises(ModelError, match=r"\[B, 1, H, W\]"):
        prepare("rgb.onnx", _settings(), tmp_path)


def test_torch_engine_matches_onnxruntime(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ptychoflow.edge.infer.engines import TorchEngine, make_engine

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Tanh()).eval()
    path = tmp_path / "model-v1.onnx"
    torch.onnx.export(net, torch.zeros(2, 1, 16, 16), str(path), input_names=["diffraction"],
                      output_names=["phase"], dynamic_axes={"diffraction": {0: "b"},
                                                            "phase": {0: "b"}}, dynamo=False)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "model-v1.pt2"))
    write_card(path, 1, Preprocess(16), 1e-8)
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    te = make_engine(path, engine="torch", device="cpu", threads=1)
    assert isinstance(te, TorchEngine) and te.input_name == "diffraction"
    np.testing.assert_allclose(te.infer(x)[0], OrtEngine(path, threads=1).infer(x)[0],
                               atol=1e-5)


def test_streams_run_batches_side_by_side_and_keep_their_order(folder: Path) -> None:
    """Two one-thread engines on the CPU; each batch's outputs belong to that batch."""
    served = prepare("1", EdgeSettings(threads=2, streams=2), folder)
    try:
        runner = served.runner
        assert runner.streams == 2
        assert all(e.session.get_session_options().intra_op_num_threads == 1
                   for e in runner.engines)  # type: ignore[attr-defined]
        batches = [np.full((i % 5 + 1, 1, 16, 16), float(i), np.float32) for i in range(40)]
        futures = [runner.submit(x) for x in batches]
        for x, fut in zip(batches, futures, strict=True):
            (y,) = fut.result(10)
            assert y.shape == x.shape
            np.testing.assert_allclose(y, served.runner.engines[0].infer(x)[0])
    finally:
        served.runner.close()


def test_automatic_streams_follow_the_engine(folder: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from ptychoflow.edge.infer import hotswap as swap

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    eng = OrtEngine(folder / "model-v1.onnx", threads=1)
    assert eng.concurrent_cpu
    assert swap.streams_for(eng, EdgeSettings()) == 4  # one per core, at most four
    assert swap.streams_for(eng, EdgeSettings(threads=2)) == 2
    assert swap.streams_for(eng, EdgeSettings(streams=3)) == 3
    monkeypatch.setattr(OrtEngine, "concurrent_cpu", property(lambda self: False))
    assert swap.streams_for(eng, EdgeSettings(streams=3)) == 1  # a GPU engine: one stream
    with pytest.raises(ValueError, match="streams must be"):
        EdgeSettings(streams=-1)


def test_openvino_engine_matches_onnxruntime(tmp_path: Path) -> None:
    """float32 agrees with ONNX Runtime; bfloat16 (where the CPU has it) to its precision."""
    pytest.importorskip("openvino")
    from ptychoflow.edge.infer.engines import OpenVINOEngine, make_engine

    path = affine_model(tmp_path / "m.onnx", 16, scale=0.5, offset=0.25)
    x = np.random.default_rng(0).uniform(0, 4, (5, 1, 16, 16)).astype(np.float32)
    (ref,) = OrtEngine(path, threads=1).infer(x)
    f32 = OpenVINOEngine(path, threads=1, half=False)
    assert f32.precision == "fp32" and f32.input_name == "diffraction"
    assert f32.input_shape[1:] == [1, 16, 16] and f32.fixed_batch is None
    np.testing.assert_allclose(f32.infer(x)[0], ref, rtol=1e-6)
    half = make_engine(path, engine="openvino", device="cpu", threads=1)
    assert half.name == "openvino"
    np.testing.assert_allclose(half.infer(x)[0], ref, rtol=1e-2, atol=1e-2)
    fixed = OpenVINOEngine(affine_model(tmp_path / "f.onnx", 16, batch=4, scale=0.5,
                                        offset=0.25), threads=1, half=False)
    assert fixed.fixed_batch == 4
    np.testing.assert_allclose(fixed.infer(x)[0], ref, rtol=1e-6)  # padded and split


def test_openvino_runs_a_quantized_model_in_int8(tmp_path: Path) -> None:
    """A QDQ int8 copy runs its convolutions in int8 under OpenVINO and says so."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime.quantization")
    from ptychoflow.edge.bench.models import ptychonn_graph
    from ptychoflow.edge.infer.engines import OpenVINOEngine
    from ptychoflow.int8 import quantize_int8

    rng = np.random.default_rng(0)
    pre = Preprocess(input_size=32)
    fp32 = ptychonn_graph(tmp_path / "fp32.onnx", 32, channels=(8, 16, 16, 16))
    q = quantize_int8(fp32, tmp_path / "int8.onnx",
                      pre(rng.poisson(50.0, (16, 32, 32)).astype(np.uint16)))
    x = pre(rng.poisson(50.0, (4, 32, 32)).astype(np.uint16))
    (ref,) = OrtEngine(q, threads=1).infer(x)
    eng = OpenVINOEngine(q, threads=1)
    assert eng.precision == "int8" and "int8" in eng.providers[0]
    (got,) = eng.infer(x)
    assert got.shape == ref.shape
    # the same int8 network in both engines (seen here: identical outputs); the float32
    # network differs from it by 5 % of the output on average
    assert float(np.abs(got - ref).mean()) < 0.01 * float(np.abs(ref).mean())
    assert OpenVINOEngine(fp32, threads=1, half=False).precision == "fp32"


def test_the_card_s_geometry_is_served_and_a_different_edge_setting_refused(
        tmp_path: Path) -> None:
    from ptychoflow.geometry import Geometry
    from ptychoflow.modelcard import ModelCard

    path = affine_model(tmp_path / "model-v1.onnx", 32)
    card = write_card(path, 1, Preprocess(input_size=32), 1e-8)
    trained = Geometry(transpose=True, x_sign=-1)
    card.geometry = trained.to_dict()
    card.save(path.with_suffix(".json"))
    ModelCard.load(path.with_suffix(".json"))
    served = prepare(str(path), EdgeSettings(threads=1), tmp_path)
    try:
        assert served.info.geometry == trained  # the edge set to nothing: the card's
    finally:
        served.close()
    served = prepare(str(path), EdgeSettings(threads=1, geometry=trained.words()), tmp_path)
    served.close()  # the same, said twice: fine
    with pytest.raises(ModelError, match="trained on scans read with geometry"):
        prepare(str(path), EdgeSettings(threads=1, geometry="flip_rows"), tmp_path)
