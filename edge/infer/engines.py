"""Inference engines behind one interface: ONNX Runtime, TensorRT, PyTorch.

Every engine takes a (n, 1, H, W) float32 batch and returns the model's
outputs for those n frames. Models with a fixed batch size get partial
batches padded (and larger ones split) here, once, so the rest of the edge
never cares. torch is imported only inside :class:`TorchEngine`: the edge
installs without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """An engine that cannot be built here; the message names what to install or set."""


class Engine:
    """Base class: batch handling shared by all engines."""

    name = "engine"
    input_name: str
    input_shape: list[Any]
    outputs: list[tuple[str, list[Any]]]

    @property
    def fixed_batch(self) -> int | None:
        """The model's fixed batch size, or None when its batch axis is dynamic."""
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    @property
    def concurrent_cpu(self) -> bool:
        """Several instances may run side by side on the CPU, each with fewer threads.

        True for ONNX Runtime on the CPU: its sessions are independent and
        one-thread sessions need no barrier between threads. PyTorch's thread
        count is global to the process, and a GPU engine has one device.
        """
        return False

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Outputs for the ``n`` frames of ``x``, whatever batch size the model was built for."""
        n = x.shape[0]
        b = self.fixed_batch
        if b is None or n == b:
            return self._run(x)
        parts: list[list[np.ndarray]] = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            m = chunk.shape[0]
            if m < b:
                pad = np.zeros((b - m, *x.shape[1:]), dtype=x.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append([o[:m] for o in self._run(chunk)])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def close(self) -> None:
        """Release the engine's resources."""


def cpu_threads(threads: int) -> int:
    """``threads``, or every core this process may use when it is 0."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OrtEngine(Engine):
    """ONNX Runtime on the CPU or, where onnxruntime-gpu is installed, CUDA.

    One intra-op thread per core and no inter-op threads: the edge overlaps
    preprocessing and publishing with inference itself, and more threads than
    cores only make the cores fight.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0,
                 providers: Sequence[Any] | None = None, spin: bool = False) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers is None:
            if device == "cuda":
                if "CUDAExecutionProvider" not in available:
                    raise EngineError("CUDA requested but this onnxruntime has no CUDA provider; "
                                      "install onnxruntime-gpu or use --device cpu")
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                providers = ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = cpu_threads(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if not spin:
            # idle intra-op threads sleep instead of spinning: on a small box the
            # PVA client, preprocessing and publishing need those cores between batches
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{path.name} has {len(inputs)} inputs; the edge runs networks "
                              "with exactly one input [B, 1, H, W]")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]
        self._out_names = [n for n, _ in self.outputs]
        self.providers = self.session.get_providers()

    @property
    def concurrent_cpu(self) -> bool:
        """An ONNX Runtime session on the CPU provider."""
        return self.providers[0] == "CPUExecutionProvider"

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(self._out_names, {self.input_name: x}))


class TensorRTEngine(OrtEngine):
    """TensorRT through ONNX Runtime's TensorRT provider, with its engine cache on disk.

    Building a TensorRT engine takes minutes; the cache (keyed by the model and
    the GPU) makes the second start and every hot swap back to a known model fast.
    """

    name = "tensorrt"

    def __init__(self, path: Path, cache_dir: Path, threads: int = 0, fp16: bool = True) -> None:
        import onnxruntime as ort

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise EngineError("TensorRT is not available to onnxruntime here; install "
                              "onnxruntime-gpu with TensorRT, or use --engine onnxruntime")
        cache_dir.mkdir(parents=True, exist_ok=True)
        trt_opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True, "trt_fp16_enable": fp16}
        super().__init__(path, threads=threads, providers=[
            ("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider",
            "CPUExecutionProvider"])
        if "TensorrtExecutionProvider" not in self.providers:
            raise EngineError(f"TensorRT could not take {path.name}; use --engine onnxruntime")


class OpenVINOEngine(Engine):
    """OpenVINO on the CPU, in bfloat16 where the CPU computes it natively.

    On CPUs with AMX or AVX512-BF16 (Intel Xeon since Sapphire Rapids)
    bfloat16 convolutions run several times faster than float32; with
    ``half`` (the ``fp16`` setting, which means half precision on GPUs) the
    engine uses them, as the GPU engines use float16. On a trained 64x64
    PtychoNN the phase moved by 0.005 rad RMS, against the network's own
    0.17 rad error to rPIE. Elsewhere, or with ``half`` off, it computes in
    float32. One inference request, run by OpenVINO's own ``threads`` threads.

    A statically quantized model (QDQ, as ``quantize_int8`` writes it) runs its
    convolutions in int8 (VNNI); ``precision`` then says ``int8``. On a 2-core
    AVX512-VNNI box with one thread it did 485 frames/s of the 128x128
    PtychoNN against 316 for ONNX Runtime on the same int8 file.
    """

    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, half: bool = True) -> None:
        try:
            import openvino as ov
        except ModuleNotFoundError as exc:
            raise EngineError("OpenVINO is not installed; pip install 'ptychoflow[openvino]' "
                              "or use --engine onnxruntime") from exc
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise EngineError(f"OpenVINO cannot read {path.name}: {exc}") from exc
        if len(model.inputs) != 1:
            raise EngineError(f"{path.name} has {len(model.inputs)} inputs; the edge runs "
                              "networks with exactly one input [B, 1, H, W]")
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        between = "bf16" if half and "BF16" in caps else "fp32"  # what is not quantized
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.precision = "int8" if quantized else between
        config = {"INFERENCE_NUM_THREADS": cpu_threads(threads), "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if between == "bf16" else "f32"}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise EngineError(f"OpenVINO cannot compile {path.name}: {exc}") from exc
        self._request = self.compiled.create_infer_request()
        self.input_name = model.inputs[0].get_any_name()
        self.input_shape = _dims(model.inputs[0].get_partial_shape())
        self.outputs = [(o.get_any_name(), _dims(o.get_partial_shape())) for o in model.outputs]
        self._ports = list(self.compiled.outputs)
        self.providers = [f"CPU {self.precision}" + (f", {between} between" if quantized
                                                     else "")]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        # infer() copies the outputs out of the request's buffers (share_outputs=False)
        res = self._request.infer({0: x})
        return [np.asarray(res[port]) for port in self._ports]


def _dims(shape: Any) -> list[Any]:
    """An OpenVINO partial shape as the edge's [int | name] list (dynamic: 'batch' etc.)."""
    return [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(shape)]


class TorchEngine(Engine):
    """PyTorch fallback: runs ``model-vN.pt2`` (torch.export) or ``model-vN.pt`` (TorchScript).

    For boxes without onnxruntime; torch is imported here and nowhere else in
    the edge. Input/output names and shapes come from the model card.
    """

    name = "torch"

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0,
                 input_name: str = "diffraction", input_shape: Sequence[Any] = (),
                 outputs: Sequence[tuple[str, list[Any]]] = (), fp16: bool = True) -> None:
        import torch

        exported, script = path.with_suffix(".pt2"), path.with_suffix(".pt")
        if not exported.is_file() and not script.is_file():
            raise EngineError(f"the PyTorch engine needs {exported.name} (torch.export) or "
                              f"{script.name} (TorchScript) beside {path.name}; install "
                              "onnxruntime or export one")
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("CUDA requested but torch sees no GPU; use --device cpu")
        if device != "cuda" and threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device("cuda" if device == "cuda" else "cpu")
        if exported.is_file():
            self.module = torch.export.load(str(exported)).module().to(self._device)
        else:
            self.module = torch.jit.load(str(script), map_location=self._device).eval()
        self._half = fp16 and self._device.type == "cuda"
        self._pinned: dict[int, Any] = {}
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.module = self.module.to(memory_format=torch.channels_last)
            if self._half:
                self.module = self.module.half()
        self.input_name = input_name
        self.input_shape = list(input_shape)
        self.outputs = list(outputs)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        n = x.shape[0]
        with torch.inference_mode():
            if self._device.type != "cuda":
                outs = self._outputs(self.module(torch.from_numpy(x)))
                return [o.float().numpy() for o in outs]
            # pad to a power-of-two bucket: cuDNN autotunes once per bucket, not once per
            # micro-batch size, and the pinned staging buffer is allocated once per bucket
            b = 1 << max(0, (n - 1).bit_length())
            pin = self._pinned.get(b)
            if pin is None:
                pin = self._pinned[b] = torch.zeros((b, *x.shape[1:]), pin_memory=True)
            pin[:n].copy_(torch.from_numpy(x))
            if n < b:
                pin[n:].zero_()
            t = pin.to(self._device, non_blocking=True).to(memory_format=torch.channels_last)
            if self._half:
                t = t.half()
            outs = self._outputs(self.module(t))
            return [o[:n].float().cpu().numpy() for o in outs]

    @staticmethod
    def _outputs(out: Any) -> list[Any]:
        return list(out) if isinstance(out, list | tuple) else [out]


def _ort_has(provider: str) -> bool:
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return False
    return provider in ort.get_available_providers()


def _card_io(path: Path) -> dict[str, Any]:
    """Input/output names and shapes from the model card (for engines that cannot read ONNX)."""
    from ptychoflow.modelcard import ModelCard, card_path

    card = ModelCard.load(card_path(path))
    return {"input_name": card.input.name, "input_shape": card.input.shape,
            "outputs": [(o.name, o.shape) for o in card.outputs]}


EngineSpec = Callable[..., Engine]


def _tensorrt(path: Path, device: str, threads: int, trt_cache_dir: Path | None,
              fp16: bool) -> Engine:
    return TensorRTEngine(path, trt_cache_dir or path.parent / ".trt", threads=threads,
                          fp16=fp16)


def _openvino(path: Path, device: str, threads: int, trt_cache_dir: Path | None,
              fp16: bool) -> Engine:
    if device == "cuda":
        raise EngineError("the OpenVINO engine runs on the CPU; use --device cpu or auto, "
                          "or another engine for CUDA")
    return OpenVINOEngine(path, threads=threads, half=fp16)


def _onnxruntime(path: Path, device: str, threads: int, trt_cache_dir: Path | None,
                 fp16: bool) -> Engine:
    cuda = device == "cuda" or (device == "auto" and _ort_has("CUDAExecutionProvider"))
    return OrtEngine(path, device="cuda" if cuda else "cpu", threads=threads)


def _torch(path: Path, device: str, threads: int, trt_cache_dir: Path | None,
           fp16: bool) -> Engine:
    try:
        import torch
    except ModuleNotFoundError as exc:
        raise EngineError("neither onnxruntime nor torch is installed; install "
                          "'ptychoflow[edge]'") from exc
    torch_device = device if device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    return TorchEngine(path, device=torch_device, threads=threads, fp16=fp16, **_card_io(path))


ENGINES: dict[str, EngineSpec] = {
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
    "openvino": _openvino,
    "torch": _torch,
}
"""Every engine by the name ``--engine`` takes; the settings' choices are these and ``auto``."""

AUTO: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("tensorrt", lambda device: device != "cpu" and _ort_has("TensorrtExecutionProvider")),
    ("onnxruntime", lambda device: _ort_has("CPUExecutionProvider")),
    ("torch", lambda device: True),
)
"""``auto``: the first engine in this order that this box offers for ``device``."""


def make_engine(path: Path, engine: str = "auto", device: str = "auto", threads: int = 0,
                trt_cache_dir: Path | None = None, gpu: int | None = None,
                fp16: bool = True) -> Engine:
    """Build the engine the settings ask for; ``auto`` takes the fastest one installed.

    ``auto`` follows :data:`AUTO`: TensorRT (unless --device cpu), ONNX Runtime
    (CUDA where its provider exists and the device allows), PyTorch. ``gpu``
    pins CUDA engines to one device (one worker per GPU).
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if engine == "auto":
        engine = next(name for name, offered in AUTO if offered(device))
    try:
        build = ENGINES[engine]
    except KeyError:
        raise EngineError(f"engine {engine!r} unknown; use auto or one of "
                          f"{', '.join(ENGINES)}") from None
    return build(path, device, threads, trt_cache_dir, fp16)
