"""Network vs iterative, side by side in one run on one machine: time to a phase image per
frame through the exported ONNX network (ONNX Runtime) against rPIE's time per frame for
the same simulated scan.

    .venv/bin/python benchmarks/network_vs_iterative.py [--frames 963 --size 128 --epochs 50]

rPIE's figure is its whole reconstruction time divided by the frames (what it costs to
turn a scan into an image); the network's is preprocessing plus inference, batched as the
edge batches, per frame. Inference speed does not depend on the weights, so an untrained
network of the production shape is exported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.remote.recon import ReconSettings, reconstruct_scan
from ptychoflow.sim.physics import simulate_scan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=963)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=50, help="rPIE epochs")
    ap.add_argument("--model-sizes", type=int, nargs="+", default=[128, 64],
                    help="network input sizes to time (64: the default for 128-pixel "
                         "frames, which are binned by two)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from ptychoflow.preprocess import Preprocess
    from ptychoflow.remote.export import INPUT_NAME, to_onnx
    from ptychoflow.remote.ptychonn import PtychoNN, PtychoNNConfig

    scan = simulate_scan(n_frames=a.frames, size=a.size)
    t0 = time.perf_counter()
    rec = reconstruct_scan(scan, ReconSettings(epochs=a.epochs, device=a.device))
    rpie = time.perf_counter() - t0

    per_rpie = rpie / scan.n_frames
    out: dict[str, Any] = {
        "frames": scan.n_frames, "frame_size": a.size, "rpie_epochs": a.epochs,
        "rpie_batch": rec.settings["batch_size_used"], "rpie_seconds": rpie,
        "rpie_ms_per_frame": 1e3 * per_rpie, "rpie_final_error": rec.errors[-1],
        "network_batch": a.batch, "torch_threads": torch.get_num_threads()}
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if a.device != "cpu"
                 else ["CPUExecutionProvider"])
    for size in a.model_sizes:
        torch.manual_seed(0)
        path = Path(tempfile.mkdtemp()) / "bench.onnx"
        to_onnx(PtychoNN(PtychoNNConfig(size)), path)
        sess = ort.InferenceSession(str(path), providers=providers)
        pre = Preprocess(size)
        sess.run(None, {INPUT_NAME: pre(scan.data[: a.batch])})  # warm-up
        t0 = time.perf_counter()
        for i in range(0, scan.n_frames, a.batch):
            sess.run(None, {INPUT_NAME: pre(scan.data[i:i + a.batch])})
        per_net = (time.perf_counter() - t0) / scan.n_frames
        n1 = min(scan.n_frames, 50)
        t0 = time.perf_counter()
        for i in range(n1):
            sess.run(None, {INPUT_NAME: pre(scan.data[i])})
        single = (time.perf_counter() - t0) / n1
        out[f"net{size}"] = {
            "ms_per_frame_batched": 1e3 * per_net, "ms_per_frame_single": 1e3 * single,
            "speedup_batched": per_rpie / per_net, "speedup_single": per_rpie / single,
            "orders_of_magnitude": float(np.log10(per_rpie / per_net)),
            "providers": sess.get_providers()}
    return out

if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
