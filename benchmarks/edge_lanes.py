"""One edge process against lanes, side by side: the Python each frame costs the edge process.

    .venv/bin/python benchmarks/edge_lanes.py [--lanes 2] [--rates 3000 5000] [--rounds 2]

Runs the I/O-ceiling pipeline of ``benchmarks/edge_io_ceiling.py`` (``ptychoflow sim``
-> ``ptychoflow edge`` -> a PVA client on ``Edge:Phase``, 128x128 frames, a do-nothing
model) at each source rate, once with one input PV and the edge's own threads, once with
the source scattering its frames over ``--lanes`` PVs (``ptychoflow sim --scatter K``)
and one lane process per PV, in alternating rounds. For each it prints the frames/s
delivered, whether all arrived, and ``edge_python_us``: the CPU time per frame of the
edge process's own Python threads (``edge-*``: input, collect, engine calls, publish,
the lane readers), all of which take turns on that process's one interpreter lock; pvxs's
network threads (``PVX*``) run beside them without it. ``python_ceiling_fps`` =
1e6 / ``edge_python_us`` is then roughly what that process could carry with cores to
spare, however fast its engine: the figure a GPU box is bounded by. On a 2-core box
the source, the client and the lanes share the two cores, so the delivered rates here
say little about a bigger box; the per-frame figures do.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ptychoflow.edge.bench import edge as bench
from ptychoflow.edge.bench.models import do_nothing_model
from ptychoflow.edge.bench.pipeline import pipeline


def python_us(threads_us: dict[str, float]) -> float:
    """µs per frame of the edge process's own Python threads (not its children's)."""
    return sum(v for k, v in threads_us.items() if "/" not in k and k.startswith("edge-"))


def _one(model: Path, args: argparse.Namespace, rate: float, lanes: int, tmp: Path
         ) -> dict[str, Any]:
    args.rate, args.lanes = rate, lanes
    r = pipeline(model, args, rate, tmp)
    py = python_us(r["edge_threads_us_per_frame"])
    return {"lanes": lanes, "delivered_fps": r["pipeline_fps"], "complete": r["complete"],
            "missing": r["missing"], "dropped": r["dropped"], "edge_python_us": round(py, 1),
            "python_ceiling_fps": round(1e6 / py) if py > 0 else None,
            "cpu_ms_per_frame": r["cpu_ms_per_frame"],
            "edge_threads_us_per_frame": r["edge_threads_us_per_frame"]}


def main() -> None:
    """Parse the options, then measure each rate, one process and lanes in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.register(parser)
    parser.add_argument("--rates", type=float, nargs="+", default=[3000.0, 5000.0],
                        help="source rates in Hz, one comparison each")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per rate")
    parser.add_argument("--stitch", dest="no_stitch", action="store_false",
                        help="with the stitched map (default: without, as the I/O alone)")
    parser.set_defaults(frames=8000, lanes=2, no_stitch=True, batch_size=64,
                        input_queue=256)
    args = parser.parse_args()
    k = args.lanes
    with tempfile.TemporaryDirectory(prefix="ptychoflow-lanes-") as tmpname:
        tmp = Path(tmpname)
        model = do_nothing_model(tmp / "models", args.size, bench.PIXEL)
        for rate in args.rates:
            runs: dict[int, list[dict[str, Any]]] = {1: [], k: []}
            for _ in range(args.rounds):
                for lanes in (1, k):
                    runs[lanes].append(_one(model, args, rate, lanes, tmp))
            best = {n: min(r["edge_python_us"] for r in rs) for n, rs in runs.items()}
            print(json.dumps({
                "rate_hz": rate, "frames": args.frames, "stitch": not args.no_stitch,
                "stitch_process": args.stitch_process, "batch_size": args.batch_size,
                "one_process": runs[1], f"lanes_{k}": runs[k],
                "edge_python_us": {"one_process": best[1], f"lanes_{k}": best[k]},
                "python_per_frame_ratio": round(best[1] / best[k], 2) if best[k] else None,
            }), flush=True)


if __name__ == "__main__":
    main()
