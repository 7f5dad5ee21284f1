"""What compressed frames cost the edge: the pipeline with and without each NDCodec codec.

    .venv/bin/python benchmarks/edge_codecs.py [--codecs none lz4 bslz4 blosc --rate 3000]

Runs the pipeline of ``ptychoflow bench edge`` (``ptychoflow sim --codec NAME`` ->
``ptychoflow edge`` -> a PVA client receiving ``Edge:Phase``) with a do-nothing model, so
what is measured is the edge's own work per frame, decoding included, once per codec in
one run, side by side, at the same source rate. Prints one JSON object per codec, then a
last line with every codec's ``delivered_fps`` relative to uncompressed frames and the
decode cost per frame measured apart (``codec_costs``: as the edge's monitor decodes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ptychoflow.edge.bench import edge as bench
from ptychoflow.edge.bench.codecs import codec_costs
from ptychoflow.edge.bench.models import do_nothing_model
from ptychoflow.edge.bench.pipeline import pipeline


def main() -> None:
    """Parse the options, then measure each codec in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.register(parser)
    parser.add_argument("--codecs", nargs="+", default=["none", "lz4", "bslz4", "blosc"],
                        help="codecs to compare (none: uncompressed)")
    parser.set_defaults(frames=4000, rate=3000.0)
    args = parser.parse_args()
    fps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ptychoflow-codecs-") as tmpname:
        tmp = Path(tmpname)
        model = do_nothing_model(tmp / "models", args.size, bench.PIXEL)
        for codec in args.codecs:
            args.codec = codec
            r = pipeline(model, args, args.rate, tmp)
            fps[codec] = r["pipeline_fps"]
            print(json.dumps({
                "codec": codec, "rate_hz": args.rate, "frames": args.frames,
                "delivered_fps": r["pipeline_fps"], "passes_fps": r["pipeline_fps_runs"],
                "complete": r["complete"], "missing": r["missing"], "dropped": r["dropped"],
                "bad_frames": r["bad_frames"], "cpu_ms_per_frame": r["cpu_ms_per_frame"],
                "edge_threads_us_per_frame": r["edge_threads_us_per_frame"],
            }), flush=True)
    base = fps.get("none")
    print(json.dumps({
        "size": args.size, "rate_hz": args.rate,
        "vs_uncompressed": {c: round(f / base, 3) for c, f in fps.items()} if base else None,
        "decode": codec_costs(args.size),
    }), flush=True)


if __name__ == "__main__":
    main()
