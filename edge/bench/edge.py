"""``ptychoflow bench edge``: engine, pipeline and PyTorch-baseline frames/s, side by side.

All figures are measured in one run on the same model, the 128x128
phase-only PtychoNN (``ptychoflow.remote.ptychonn``, random weights, exported
to ONNX as the remote side exports it, each upsampling folded into the next
convolution; an ONNX stand-in of the same layers built with the onnx helper
API where torch is not installed):

* ``engine_fps``: the edge's engine alone, built as the edge builds it (the
  same streams and threads), on preprocessed frames already in memory (timed
  before and after the pipeline, the better of the two);
* ``pipeline_fps``: frames from a PVA source (``ptychoflow sim``) through
  ``ptychoflow edge`` (a subprocess) to a PVA client receiving ``Edge:Phase``,
  every frame accounted for (``dropped`` must be 0); the steady rate between
  the 10th and 90th percentile frame; two passes, the better kept. The
  source runs 25 % faster than the engine on a 5 ms clock (``--tick-ms``:
  the frames due in a tick go out together, as a fast detector's do);
  source, edge and client run under ``--scheduling``, EPICS's real-time
  network threads included;
* ``baseline_fps``: PyTorch eager, batch size 1, the way the original edge
  deployment ran: the plain network, upsampling and all (the better of 1
  thread and all cores);
* ``peer_fps``: the same ONNX model run by ``pvapy-hpc-consumer`` (the APS
  streaming framework edgePtychoNN is built on) with a processor of the usual
  kind (ONNX Runtime, batch 8, as edgePtychoNN runs it; ``peer_processor.py``),
  fed by the same source with the same frames at the same rate, received by
  the same kind of client; ``pipeline_vs_peer`` is the ratio (goal 1.2);
* ``latency_p99_ms``: source time stamp to the client's receipt, at
  ``--latency-load`` of the measured pipeline rate;
* ``cpu_ms_per_frame``: CPU time of the source, the edge and the client per
  frame over the kept pass. All three share this machine's cores; on a
  beamline source and client run elsewhere;
* ``edge_threads_us_per_frame``: the edge's CPU per frame thread by thread
  (``edge-input`` decodes, ``edge-collect`` checks and preprocesses,
  ``edge-infer_N`` run the engine, ``edge-publish`` posts and stitches,
  ``PVX*`` are pvAccess's network threads, ``edge-stitch`` is a separate
  process and not counted). The Python threads share one interpreter lock,
  released only inside NumPy and the engine, so where an engine is fast
  their per-frame time, not the cores, bounds what one edge process carries.
  Linux counts thread CPU in clock ticks (10 ms): over 1,000 frames a
  thread's figure is good to about 10 us, so use ``--frames`` of 10,000 or
  more to compare them.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.bench.baseline import PIXEL, baseline_fps, build_model
from ptychoflow.edge.bench.codecs import codec_costs
from ptychoflow.edge.bench.models import write_card
from ptychoflow.edge.bench.physics import check_costs
from ptychoflow.edge.bench.pipeline import pipeline
from ptychoflow.edge.infer.hotswap import prepare
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.threads import POLICIES
from ptychoflow.int8 import quantize_int8
from ptychoflow.preprocess import Preprocess
from ptychoflow.pvnames import EDGE
from ptychoflow.sim.cli import CODEC_CHOICES

HELP = (f"edge: engine, pipeline (PVA in -> {EDGE.phase.suffix} out), PyTorch baseline and "
        "pvapy peer frames/s")



def register(parser: argparse.ArgumentParser) -> None:
    """Benchmark options."""
    parser.add_argument("--frames", type=int, default=1000, help="frames per pipeline pass")
    parser.add_argument("--size", type=int, default=128, help="network input (and frame) size")
    parser.add_argument("--batch-size", type=int, default=16, help="edge micro-batch")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    parser.add_argument("--engine", default="auto", help="edge engine (auto, onnxruntime, "
                        "tensorrt, torch)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--workers", type=int, default=1, help="edge inference workers")
    parser.add_argument("--lanes", type=int, default=1, help="split the source's frames over "
                        "this many PVs (ptychoflow sim --scatter) and run the edge with one "
                        "lane process per PV (for thousands of frames/s)")
    parser.add_argument("--streams", type=int, default=0, help="edge inference streams "
                        "(0: the edge's automatic choice)")
    parser.add_argument("--scheduling", choices=POLICIES, default="batch",
                        help="Linux scheduling policy of source, edge and client alike "
                        "(see ptychoflow edge --help)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="how long to time the engine and the baseline")
    parser.add_argument("--rate-factor", type=float, default=1.25,
                        help="source rate for the throughput pass, times engine_fps")
    parser.add_argument("--latency-load", type=float, default=0.7,
                        help="source rate for the latency pass, times pipeline_fps")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="source rate for the throughput pass in Hz (0: rate-factor x "
                        "engine_fps)")
    parser.add_argument("--source-tick-ms", type=float, default=5.0,
                        help="the source's clock (ptychoflow sim --tick-ms): each wake-up "
                        "posts every frame due by then; 0: one wake-up per frame")
    parser.add_argument("--no-stitch", action="store_true", help="run the edge without the "
                        "stitched map")
    parser.add_argument("--stitch-process", action="store_true", help="run the edge with "
                        "--stitch-process (the map in a process of its own)")
    parser.add_argument("--input-queue", type=int, default=EdgeSettings().input_queue,
                        help="the edge's --input-queue (updates the source holds for it)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                        help="int8: run engine and pipeline on a statically quantized copy "
                        "(QDQ ONNX; ONNX Runtime and OpenVINO both run it in int8); the "
                        "baseline stays float32 PyTorch. For bfloat16 use --engine openvino")
    parser.add_argument("--no-baseline", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--codec", choices=CODEC_CHOICES, default="none",
                        help="the source compresses its frames as areaDetector's NDCodec does "
                             "(the decode cost of every codec is reported whatever this is)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the peer: the same model in pvapy-hpc-consumer (ONNX "
                             "Runtime, batch 8, as edgePtychoNN runs it), same source and frames")


def _to_int8(path: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Quantize the benchmark model (calibrated on simulated-like frames); returns its error.

    The error is that of the engine benchmarked (OpenVINO computes what is not
    quantized in bfloat16 where it can) against float32 ONNX Runtime.
    """
    from ptychoflow.edge.infer.engines import OrtEngine, make_engine

    size = args.size

    rng = np.random.default_rng(1)
    pre = Preprocess(input_size=size)
    cal = pre(rng.poisson(50.0, (32, size, size)).astype(np.uint16))
    fp32 = path.with_name("model-fp32.onnx")
    path.rename(fp32)
    quantize_int8(fp32, path, cal)
    write_card(path, 1, pre, PIXEL)
    test = pre(rng.poisson(50.0, (16, size, size)).astype(np.uint16))
    a = OrtEngine(fp32, threads=1).infer(test)[0]
    quantized = make_engine(path, args.engine, args.device, threads=1)
    try:
        b = quantized.infer(test)[0]
    finally:
        quantized.close()
    return path, float(np.abs(a - b).max())


def _settings(path: Path, args: argparse.Namespace) -> EdgeSettings:
    return EdgeSettings(model=str(path), engine=args.engine, device=args.device,
                        threads=args.threads, streams=args.streams, workers=args.workers,
                        batch_size=args.batch_size)


def engine_fps(path: Path, args: argparse.Namespace) -> tuple[float, str, str]:
    """The edge's engine(s) alone, built exactly as the edge builds them, on frames in memory.

    Two batches per engine are kept in flight, so every stream and worker is busy.
    """
    settings = _settings(path, args)
    served = prepare(str(path), settings, path.parent)
    runner = served.runner
    rng = np.random.default_rng(0)
    frames = rng.poisson(50.0, (args.batch_size, args.size, args.size)).astype(np.uint16)
    x = Preprocess(input_size=args.size)(frames)
    depth = 2 * runner.workers * runner.streams
    try:
        for f in [runner.submit(x) for _ in range(depth)]:
            f.result()
        n, t0 = 0, time.perf_counter()
        pending = deque(runner.submit(x) for _ in range(depth))
        while time.perf_counter() - t0 < args.seconds:
            pending.popleft().result()
            n += x.shape[0]
            pending.append(runner.submit(x))
        fps = n / (time.perf_counter() - t0)
        for f in pending:
            f.result()
    finally:
        runner.close()
    precision = getattr(getattr(runner, "engine", None), "precision", args.precision)
    return fps, runner.describe(), precision


def _peer(path: Path, args: argparse.Namespace, tmp: Path, pipe: dict[str, Any],
          rate: float) -> dict[str, Any]:
    """The peer pass and its ratio; why not, where pvapy is not installed."""
    from ptychoflow.edge.bench.peer import compare, consumer_exe, peer_pass

    try:
        consumer_exe()
    except RuntimeError as exc:
        return {"peer_fps": None, "peer_skipped": str(exc)}
    peer = peer_pass(path, args, tmp, rate)
    return {**peer, **compare(pipe["pipeline_fps"], peer["peer_fps"])}


def _gpu_name() -> str:
    """The CUDA card's name, so a GPU figure is quoted with its card ("" where none is seen)."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and return the figures.

    ``ok`` says every frame was accounted for (the exit status follows it); the
    speed goals are reported beside it as ``goal_*``, measured, not enforced.
    """
    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-edge-") as tmpname:
        tmp = Path(tmpname)
        path, net, desc = build_model(tmp / "models", args.size)
        int8_err = None
        if args.precision == "int8":
            path, int8_err = _to_int8(path, args)
            desc += ", int8 (QDQ) copy"
        eng_before, eng_name, precision = engine_fps(path, args)
        base, base_threads = (None, 0) if args.no_baseline else baseline_fps(net, args)
        pipe = pipeline(path, args, eng_before, tmp)
        peer = {} if args.no_peer else _peer(path, args, tmp, pipe,
                                             args.rate or args.rate_factor * eng_before)
        # the engine is timed again after the pipeline and the better figure kept: on a
        # shared box this guards the ratio against a quiet moment for the pipeline alone
        eng_after, _, _ = engine_fps(path, args)
        eng_fps = max(eng_before, eng_after)
    gpu = "CUDA" in eng_name or "Tensorrt" in eng_name or "cuda" in args.device
    out: dict[str, Any] = {
        "model": desc, "stitch": not args.no_stitch, "stitch_process": args.stitch_process,
        "input_queue": args.input_queue,
        "engine": eng_name,
        "batch_size": args.batch_size, "workers": args.workers, "lanes": args.lanes,
        "scheduling": args.scheduling,
        "source_tick_ms": args.source_tick_ms,
        "cores": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        **({"gpu": _gpu_name()} if gpu else {}),
        "precision": precision, "engine_fps": round(eng_fps, 1),
        "engine_fps_runs": [round(eng_before, 1), round(eng_after, 1)], **pipe,
        "baseline_fps": round(base, 1) if base is not None else None,
        "baseline_threads": base_threads,
    }
    if int8_err is not None:
        out["int8_max_abs_error_rad"] = round(int8_err, 4)
    out["pipeline_vs_engine"] = round(pipe["pipeline_fps"] / eng_fps, 3)
    if base:
        out["pipeline_vs_baseline"] = round(pipe["pipeline_fps"] / base, 2)
    out.update(peer)
    out["codec"] = args.codec
    out["codecs"] = codec_costs(args.size)  # ratio, bytes and decode_us of every codec
    out["physics_check"] = check_costs(args.size)  # us per checked frame, and at the default k
    lossless = pipe["complete"] and pipe["dropped"] == 0
    if gpu:
        out["goal_gpu_20k"] = pipe["pipeline_fps"] >= 20000
    else:
        out["goal_vs_engine"] = out["pipeline_vs_engine"] >= 0.9
        out["goal_vs_baseline"] = bool(base) and out.get("pipeline_vs_baseline", 0) >= 2.5
    out["ok"] = bool(lossless)
    return out
