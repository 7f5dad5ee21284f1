"""The exported PtychoNN with and without its upsamplings folded, side by side in one run.

    .venv/bin/python benchmarks/subpixel_fold.py [--size 128 --batch 16 --threads 1 2 --rounds 5]
    .venv/bin/python benchmarks/subpixel_fold.py --int8     # both int8 copies, as `--int8` serves

Exports one network (random weights: speed does not depend on them) twice with the
remote exporter's ``to_onnx``: plainly (``fold=False``: nearest ``Resize`` then a 3x3
``Conv``) and folded, as ``remote export`` serves it (:mod:`ptychoflow.remote.subpixel`).
Times both in ONNX Runtime on the CPU, alternating rounds so that a host whose speed drifts
affects both alike, for each thread count (with ``--int8``: the int8 copies ``remote
quantize`` would write of each, calibrated on the same frames); prints one JSON object with
the frames/s of each (median of the rounds), their ratio and the largest difference between
the outputs (with ``--int8``, between two separately quantized copies: mostly their
quantization error).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _fps(sess: Any, x: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"diffraction": x})
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, export both graphs, time them and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per thread count")
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and graph")
    ap.add_argument("--int8", action="store_true", help="time the static int8 (QDQ) copies")
    a = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from ptychoflow.int8 import quantize_int8
    from ptychoflow.preprocess import Preprocess
    from ptychoflow.remote.export import to_onnx
    from ptychoflow.remote.ptychonn import PtychoNN, variant

    torch.manual_seed(0)
    net = PtychoNN(variant(a.size)).eval()
    rng = np.random.default_rng(0)
    pre = Preprocess(input_size=a.size)
    x = pre(rng.poisson(50.0, (a.batch, a.size, a.size)).astype(np.uint16))
    out: dict[str, Any] = {"size": a.size, "batch": a.batch, "rounds": a.rounds,
                           "precision": "int8" if a.int8 else "fp32"}
    with tempfile.TemporaryDirectory() as tmp:
        plain, folded = Path(tmp) / "plain.onnx", Path(tmp) / "folded.onnx"
        to_onnx(net, plain, fold=False)
        to_onnx(net, folded)
        if a.int8:
            cal = pre(rng.poisson(50.0, (32, a.size, a.size)).astype(np.uint16))
            plain, folded = (quantize_int8(p, p.with_name(p.stem + "-int8.onnx"), cal)
                             for p in (plain, folded))
        for threads in a.threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sessions = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                        for p in (plain, folded)]
            outs = [s.run(None, {"diffraction": x})[0] for s in sessions]
            rates: list[list[float]] = [[], []]
            for _ in range(a.rounds):
                for i, s in enumerate(sessions):
                    rates[i].append(_fps(s, x, a.seconds))
            p, f = (statistics.median(r) for r in rates)
            out[f"threads_{threads}"] = {"plain_fps": round(p, 1), "folded_fps": round(f, 1),
                                         "folded_over_plain": round(f / p, 3)}
            out["max_abs_diff"] = float(np.abs(outs[0] - outs[1]).max())
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
