"""``ptychoflow bench NAME``: the quick benchmarks, each next to what it measures.

Each benchmark module (``ptychoflow.sim.bench``, ``ptychoflow.ioc.bench``,
``ptychoflow.edge.bench.edge``) exposes ``register(parser)`` and ``run(args) -> dict``;
this front end prints the figures as one JSON object (``--json``) or as lines.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

HELP = "run a benchmark and print its figures (sim, ioc, edge, remote)"

BENCHES = {
    "sim": "ptychoflow.sim.bench",
    "ioc": "ptychoflow.ioc.bench",
    "edge": "ptychoflow.edge.bench.edge",
    "remote": "ptychoflow.ioc.remotebench",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add one sub-subcommand per benchmark module that is present."""
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, modname in BENCHES.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        mod.register(sp)
        sp.set_defaults(func=_runner(mod))


def _runner(mod: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        result: dict[str, Any] = mod.run(args)
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k}: {v}")
        return 0 if result.get("ok", True) else 1
    return run
