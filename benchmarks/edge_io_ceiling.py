"""How many frames per second the edge's I/O carries on this machine, whatever the model.

    .venv/bin/python benchmarks/edge_io_ceiling.py [--rates 2000 4000 8000 --frames 8000]
    .venv/bin/python benchmarks/edge_io_ceiling.py --no-stitch

Runs the pipeline of ``ptychoflow bench edge`` (``ptychoflow sim`` -> ``ptychoflow
edge`` -> a PVA client receiving ``Edge:Phase``, 128x128 frames) with a do-nothing
model (an ONNX graph computing 1.0 * x + 0.0, a few microseconds per batch), once per
source rate. What is left is the edge's own work per frame: receiving, checking,
preprocessing, publishing and stitching, plus the source's and the client's. Where an
engine is faster than this ceiling (a GPU), the ceiling is what the stream gets; on a
machine whose source and client run elsewhere the edge has the cores to itself.

Prints one JSON object per rate: ``delivered_fps`` (steady rate at the client, better
of two passes), ``complete`` (every frame of both passes arrived), ``missing`` (frames of
all three passes that never reached the client), ``dropped``
(``Edge:Dropped_RBV`` after all three passes of a rate, the latency pass included: frames
lost on the way, every one counted), the CPU time per frame of source, edge and client, and
the edge's by thread (``edge_threads_us_per_frame``, as ``ptychoflow bench edge`` prints it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ptychoflow.edge.bench import edge as bench
from ptychoflow.edge.bench.models import do_nothing_model
from ptychoflow.edge.bench.pipeline import pipeline


def main() -> None:
    """Parse the options, then measure each rate in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.register(parser)
    parser.add_argument("--rates", type=float, nargs="+", default=[2000.0, 4000.0, 8000.0],
                        help="source rates in Hz, one measurement each")
    parser.set_defaults(frames=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptychoflow-io-ceiling-") as tmpname:
        tmp = Path(tmpname)
        model = do_nothing_model(tmp / "models", args.size, bench.PIXEL)
        for rate in args.rates:
            args.rate = rate
            r = pipeline(model, args, rate, tmp)
            print(json.dumps({
                "rate_hz": rate, "stitch": not args.no_stitch,
                "stitch_process": args.stitch_process, "input_queue": args.input_queue,
                "lanes": args.lanes,
                "frames": args.frames,
                "delivered_fps": r["pipeline_fps"], "passes_fps": r["pipeline_fps_runs"],
                "complete": r["complete"], "missing": r["missing"], "dropped": r["dropped"],
                "bad_frames": r["bad_frames"], "cpu_ms_per_frame": r["cpu_ms_per_frame"],
                "edge_threads_us_per_frame": r["edge_threads_us_per_frame"],
            }), flush=True)


if __name__ == "__main__":
    main()
