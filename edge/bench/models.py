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
    """Phase-only PtychoNN (random He-initialised weights), dynamic batch.

    Laid out as the remote exporter lays out a trained one
    (:mod:`ptychoflow.remote.subpixel`): each upsampling and the 3x3 convolution
    after it are one 2x2 convolution to four phase blocks, sliced and interleaved
    by DepthToSpace (CRD, as torch writes ``pixel_shuffle``), so that a benchmark
    on this stand-in times the served graph.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(name: str, value: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    def conv(src: str, cin: int, cout: int, relu: bool = True, k: int = 3) -> str:
        counter[0] += 1
        name = f"c{counter[0]}"
        fan_in = 9 * cin  # He initialisation; a 2x2 kernel stands for a folded 3x3 one
        w = rng.normal(0, math.sqrt(2.0 / fan_in), (cout, cin, k, k)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, name + "_w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), name + "_b")])
        nodes.append(helper.make_node("Conv", [src, name + "_w", name + "_b"], [name],
                                      pads=[1, 1, 1, 1], kernel_shape=[k, k]))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [name + "r"]))
        return name + "r"

    def up_conv(src: str, cin: int, cout: int, hw: int, relu: bool = True) -> str:
        """Upsample 2x then conv 3x3, folded: (B, cin, hw, hw) -> (B, cout, 2hw, 2hw)."""
        y = conv(src, cin, 4 * cout, relu, k=2)  # (B, 4 cout, hw+1, hw+1)
        phases = []
        for i in range(4):
            a, c = divmod(i, 2)
            t = f"{y}_s{i}"
            nodes.append(helper.make_node("Slice", [
                y, const(t + "_lo", [i * cout, a, c]),
                const(t + "_hi", [(i + 1) * cout, a + hw, c + hw]), const(t + "_ax", [1, 2, 3])],
                [t]))
            phases.append(t)
        # as torch exports pixel_shuffle: (B, cout, 4, hw, hw) -> (B, 4 cout, hw, hw), CRD order
        # (OpenVINO 2026.4 mis-shaped the int8 copy of a channel Concat feeding a DCR DepthToSpace)
        axis = const(y + "_axis", [2])
        for t in phases:
            nodes.append(helper.make_node("Unsqueeze", [t, axis], [t + "_u"]))
        nodes.append(helper.make_node("Concat", [t + "_u" for t in phases], [y + "_cat"], axis=2))
        nodes.append(helper.make_node("Reshape", [y + "_cat", const(y + "_shape",
                                                                    [0, 4 * cout, hw, hw])],
                                      [y + "_flat"]))
        nodes.append(helper.make_node("DepthToSpace", [y + "_flat"], [y + "_up"], blocksize=2,
                                      mode="CRD"))
        return y + "_up"

    t, cin, hw = input_name, 1, size
    for i, cout in enumerate(channels):
        t = conv(conv(t, cin, cout), cout, cout)
        nodes.append(helper.make_node("MaxPool", [t], [f"p{i}"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        t, cin, hw = f"p{i}", cout, hw // 2
    for i, cout in enumerate(reversed(channels)):
        if i:
            t = up_conv(t, cin, cout, hw)
            hw *= 2
        else:
            t = conv(t, cin, cout)
        t, cin = conv(t, cout, cout), cout
    t = up_conv(t, cin, 1, hw, relu=False)
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


def do_nothing_model(folder: str | Path, size: int, pixel_size_m: float = 10e-9) -> Path:
    """``folder/model-v1.onnx`` computing 1.0 * x + 0.0, with its card: what the edge's
    benchmarks run to measure everything but the network (a few microseconds a batch).
    """
    path = affine_model(Path(folder) / "model-v1.onnx", size)
    write_card(path, 1, Preprocess(input_size=size), pixel_size_m)
    return path
