"""Streaming rPIE against rPIE after the fact: the time from the last frame to the final
reconstruction, and the phase's correlation with the truth, measured side by side.

    .venv/bin/python benchmarks/streaming_recon.py                      # the demo's scan
    .venv/bin/python benchmarks/streaming_recon.py --frames 963 --size 128

A writer thread acquires a simulated scan at ``--rate`` frames/s into a scan file
and its chunks (:mod:`ptychoflow.chunks`, every ``--chunk-frames``) while the
streaming reconstruction (:mod:`ptychoflow.remote.streaming`) follows them; the
clock stops for it when its result is ready, counted from the moment the writer
closed the scan. Then the finished file is reconstructed from scratch with
``--epochs`` (the IOC's Recon:Epochs) on the same machine: after_s counts its
read and its solve. The last line of stdout is one JSON object with ``after_s``,
``streaming_s``, ``ratio`` (streaming_s / after_s), ``corr_after`` and
``corr_streaming``. Goal: ratio <= 0.25 with corr_streaming >= corr_after - 0.01.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.chunks import ChunkPolicy, scan_stem, stream_folder
from ptychoflow.remote.quality import reconstruction_vs_truth
from ptychoflow.remote.recon import ReconSettings, Reconstruction, reconstruct_scan
from ptychoflow.remote.streaming import ChunkReader, StreamingReconstruction, StreamSettings
from ptychoflow.scanfile import Scan, ScanWriter, read_scan
from ptychoflow.sim.physics import simulate_scan


def acquire(scan: Scan, path: Path, rate: float, chunk: int, closed: list[float]) -> None:
    """Write ``scan`` frame by frame at ``rate`` Hz with chunks; ``closed`` gets the close time."""
    w = ScanWriter(path, scan.frame_shape, scan.data.dtype, energy_ev=scan.energy_ev,
                   distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
                   probe=scan.probe, truth=scan.truth,
                   truth_pixel_size_m=scan.truth_pixel_size_m, metadata=scan.metadata,
                   expected_frames=scan.n_frames, chunks=ChunkPolicy(chunk))
    t0 = time.perf_counter()
    for i in range(scan.n_frames):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        w.append(scan.data[i], *scan.positions[i])
    w.close()
    closed.append(time.perf_counter())


def correlation(rec: Reconstruction, scan: Scan) -> float:
    """Phase correlation of a reconstruction with the simulated truth, where the scan reached."""
    return float(reconstruction_vs_truth(rec, scan)["correlation"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="frames (the demo's: 400)")
    ap.add_argument("--size", type=int, default=64, help="frame size (the demo's: 64)")
    ap.add_argument("--rate", type=float, default=20.0,
                    help="acquisition rate, frames/s (a step scan's tens of Hz)")
    ap.add_argument("--epochs", type=int, default=40, help="after the fact: rPIE epochs")
    ap.add_argument("--chunk-frames", type=int, default=64)
    ap.add_argument("--chunk-epochs", type=int, default=StreamSettings.chunk_epochs,
                    help="epochs per step while acquiring (the stage's stream_chunk_epochs)")
    ap.add_argument("--final-epochs", type=int, default=StreamSettings.final_epochs,
                    help="epochs after the last chunk (the stage's stream_final_epochs)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ptychoflow-streaming-"))
    scan = simulate_scan(n_frames=a.frames, size=a.size, seed=a.seed)
    settings = ReconSettings(epochs=a.epochs)
    path = work / "scan_0001.h5"

    closed: list[float] = []
    writer = threading.Thread(target=acquire, args=(scan, path, a.rate, a.chunk_frames, closed))
    writer.start()
    reader = ChunkReader(stream_folder(path), scan_stem(path), read_scan)
    stream = StreamingReconstruction(reader, settings, StreamSettings(
        chunk_epochs=a.chunk_epochs, final_epochs=a.final_epochs, idle_s=120.0))
    rec_s, _ = stream.run()
    done = time.perf_counter()
    writer.join()
    streaming_s = done - closed[0]
    print(f"streaming: {stream.steps} warm starts, {len(rec_s.errors)} epochs, "
          f"{streaming_s:.1f} s after the last frame", file=sys.stderr)

    t0 = time.perf_counter()
    rec_a = reconstruct_scan(read_scan(path), settings)
    after_s = time.perf_counter() - t0
    print(f"after the fact: {a.epochs} epochs in {after_s:.1f} s", file=sys.stderr)
    out = {"frames": a.frames, "size": a.size, "rate_hz": a.rate,
           "acquisition_s": a.frames / a.rate, "epochs": a.epochs,
           "chunk_frames": a.chunk_frames, "chunk_epochs": a.chunk_epochs,
           "final_epochs": a.final_epochs, "stream_warm_starts": stream.steps,
           "stream_epochs": len(rec_s.errors), "after_s": round(after_s, 3),
           "streaming_s": round(streaming_s, 3), "ratio": round(streaming_s / after_s, 4),
           "corr_after": round(correlation(rec_a, scan), 4),
           "corr_streaming": round(correlation(rec_s, scan), 4),
           "error_after": rec_a.errors[-1], "error_streaming": rec_s.errors[-1]}
    out["goal_met"] = bool(out["ratio"] <= 0.25 and
                           out["corr_streaming"] >= out["corr_after"] - 0.01)
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    print(json.dumps(main()))
