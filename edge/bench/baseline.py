"""The benchmark's network and its PyTorch baseline: the one place edge/ imports remote/.

The benchmark times the network the remote side trains (``ptychoflow.remote.
ptychonn``, random weights), exported as ``ptychoflow remote export`` exports
it; where torch is not installed (an edge box) it builds an ONNX stand-in of
the same layers and skips the baseline. Nothing else under ``edge/`` imports
``ptychoflow.remote``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.bench.models import ptychonn_graph, write_card
from ptychoflow.preprocess import Preprocess

PIXEL = 10e-9


def _torch_model(size: int) -> Any:
    try:
        import torch  # noqa: F401

        from ptychoflow.remote.ptychonn import PtychoNN, variant
    except ImportError:
        return None
    torch.manual_seed(0)
    return PtychoNN(variant(size)).eval()


def build_model(folder: Path, size: int) -> tuple[Path, Any, str]:
    """model-v1.onnx (+ card, + TorchScript when torch is here); returns the torch module."""
    path = folder / "model-v1.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    net = _torch_model(size)
    if net is None:
        ptychonn_graph(path, size)
        desc = f"PtychoNN {size}x{size} phase-only (ONNX stand-in, random weights)"
    else:
        import torch

        from ptychoflow.remote.subpixel import for_inference

        served = for_inference(net)  # what the remote exporter serves; the baseline runs net
        try:
            from ptychoflow.remote.export import to_onnx

            to_onnx(net, path)
        except Exception:  # without onnxscript: the same graph through the older exporter
            torch.onnx.export(served, (torch.zeros(2, 1, size, size),), str(path),
                              input_names=["diffraction"], output_names=["phase"],
                              dynamic_axes={"diffraction": {0: "batch"}, "phase": {0: "batch"}},
                              dynamo=False)
        batch = torch.export.Dim("batch", min=1, max=65536)
        ep = torch.export.export(served, (torch.zeros(2, 1, size, size),),
                                 dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(path.with_suffix(".pt2")))  # for the PyTorch engine
        n = sum(p.numel() for p in net.parameters())
        desc = f"PtychoNN {size}x{size} phase-only ({n / 1e6:.2f} M parameters, random weights)"
    write_card(path, 1, Preprocess(input_size=size), PIXEL)
    return path, net, desc


def baseline_fps(net: Any, args: argparse.Namespace) -> tuple[float | None, int]:
    """PyTorch eager, one frame at a time; the better of 1 thread and all cores.

    On a small shared box torch's OpenMP threads can run ten times slower than
    one thread, so both are timed and the baseline keeps its best figure.
    """
    if net is None:
        return None, 0
    import torch

    dev = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    net = net.to(dev)
    x = torch.from_numpy(Preprocess(input_size=args.size)(
        np.random.default_rng(0).poisson(50.0, (1, args.size, args.size)).astype(np.uint16)))
    best, best_threads = 0.0, 0
    saved = torch.get_num_threads()
    for threads in sorted({1, len(os.sched_getaffinity(0))}) if dev == "cpu" else [saved]:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for _ in range(3):
                net(x.to(dev))
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds / 2:
                net(x.to(dev)).cpu()
                n += 1
        fps = n / (time.perf_counter() - t0)
        if fps > best:
            best, best_threads = fps, threads
    torch.set_num_threads(saved)
    return best, best_threads
