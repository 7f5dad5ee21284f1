"""Small ONNX models built with the onnx helper API, for tests and the benchmark.

* :func:`affine_model`: output = scale * input + offset (identity by default),
  a network whose answer is known exactly, so the stitched map can be checked
  against the object; optionally a second "amplitude" output and a fixed batch.
* :func:`ptychonn_graph`: the PtychoNN architecture (encoder, phase decoder,
  ``tanh * pi``) with random weights, the benchmark's stand-in when torch
  (and so ``ptychoflow.remote.ptychonn``) is not installed.

Needs the ``onnx`` package (a development and ``remote`` dependency, not
one the edge needs to run).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.modelcard import ModelCard, TensorSpec, sha256_file
from ptychoflow.preprocess import Preprocess

OPSET = 17


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def affine_model(path: str | Path, size: int, batch: int | None = None, scale: float = 1.0,
                 offset: float = 0.0, amplitude: bool = False,
                 input_name: str = "diffraction") -> Path:
    """[B, 1, size, size] -> ``phase`` = scale * x + offset (and ``amplitude`` = x)."""
    from onnx import TensorProto, helper, numpy_helper

    b: int | str = batch if batch else "batch"
    shape = [b, 1, size, size]
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info("phase", TensorProto.FLOAT, shape)]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(np.array(offset, np.float32), "offset")]
    nodes = [helper.make_node("Mul", [input_name, "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["phase"])]
    if amplitude:
        outs.append(helper.make_tensor_value_info("amplitude", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node("Identity", [input_name], ["amplitude"]))
    graph = helper.make_graph(nodes, "affine", [x], outs, inits)
    return _save(graph, Path(path))


def ptychonn_graph(path: str | Path, size: int = 128, channels: tuple[int, ...] = (16, 32, 64,
                   128), seed: int = 0, input_name: str = "diffraction") -> Path:
    """Phase-only PtychoNN (random He-initialised weights), dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def conv(src: str, cin: int, cout: int, relu: bool = True) -> str:
        counter[0] += 1
        k = f"c{counter[0]}"
        w = rng.normal(0, math.sqrt(2.0 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, k + "_w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), k + "_b")])
        nodes.append(helper.make_node("Conv", [src, k + "_w", k + "_b"], [k],
                                      pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        if not relu:
            return k
        nodes.append(helper.make_node("Relu", [k], [k + "r"]))
        return k + "r"

    t, cin = input_name, 1
    for i, cout in enumerate(channels):
        t = conv(conv(t, cin, cout), cout, cout)
        nodes.append(helper.make_node("MaxPool", [t], [f"p{i}"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        t, cin = f"p{i}", cout
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    for i, cout in enumerate(reversed(channels)):
        t = conv(conv(t, cin, cout), cout, cout)
        nodes.append(helper.make_node("Resize", [t, "", "up_scales"], [f"u{i}"], mode="nearest"))
        t, cin = f"u{i}", cout
    t = conv(t, cin, 1, relu=False)
    inits.append(numpy_helper.from_array(np.array(math.pi, np.float32), "pi"))
    nodes += [helper.make_node("Tanh", [t], ["th"]), helper.make_node("Mul", ["th", "pi"],
                                                                       ["phase"])]
    shape: list[int | str] = ["batch", 1, size, size]
    graph = helper.make_graph(
        nodes, "ptychonn", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("phase", TensorProto.FLOAT, shape)], inits)
    return _save(graph, Path(path))


def write_card(model_path: str | Path, version: int, preprocess: Preprocess,
               pixel_size_m: float, input_name: str = "diffraction", batch: int | None = None,
               outputs: tuple[str, ...] = ("phase",)) -> ModelCard:
    """Write ``model-vN.json`` for ``model_path`` (sha256 included) and return it."""
    p = Path(model_path)
    s = preprocess.input_size
    b = batch or -1
    card = ModelCard(version=version, model_file=p.name, sha256=sha256_file(p),
                     input=TensorSpec(input_name, [b, 1, s, s]),
                     outputs=[TensorSpec(o, [b, 1, s, s]) for o in outputs],
                     preprocessing=preprocess, output_pixel_size_m=pixel_size_m)
    card.save(p.with_suffix(".json"))
    return card


def quantize_int8(src: str | Path, dst: str | Path, calibration: np.ndarray,
                  input_name: str = "diffraction") -> Path:
    """Static int8 (QDQ, per-channel weights) copy of ``src``, calibrated on ``calibration``.

    ``calibration``: (N, 1, H, W) preprocessed frames like those the edge will see.
    On CPUs with VNNI/AMX ONNX Runtime runs the result about twice as fast as
    float32; check its error against the float model on real data before use.
    """
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return Path(dst)
