"""The ``ptychoflow`` command: one entry point, a subcommand per component.

Subcommands live next to what they run (``ptychoflow.sim.cli``,
``ptychoflow.ioc.cli``, ...). Each such module exposes ``HELP`` and
``register(parser)``, imports nothing heavy at module level, and sets
``func`` on the parser; so ``ptychoflow --help`` works on an edge box that has
neither torch nor softioc installed, and a subcommand whose extra is missing
says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ptychoflow import __version__
from ptychoflow.config import ConfigError

COMMANDS: dict[str, str] = {
    "sim": "ptychoflow.sim.cli",
    "ioc": "ptychoflow.ioc.cli",
    "edge": "ptychoflow.edge.cli",
    "remote": "ptychoflow.remote.cli",
    "demo": "ptychoflow.demo",
    "bench": "ptychoflow.bench",
    "flow": "ptychoflow.ioc.flow_cli",
    "report": "ptychoflow.ioc.report",
    "status": "ptychoflow.status",
    "gui": "ptychoflow.gui",
    "login": "ptychoflow.ioc.login_cli",
}

EXTRA_FOR = {"softioc": "ioc", "ophyd": "ioc", "bluesky": "ioc", "ophyd_async": "ioc",
             "torch": "remote", "ptychi": "remote", "onnx": "remote", "parsl": "remote",
             "globus_sdk": "remote", "globus_compute_sdk": "remote", "onnxruntime": "edge",
             "pydm": "op", "qtpy": "op", "PyQt5": "op", "rich": "ioc", "matplotlib": "ioc"}


def common_parser(top: bool = False) -> argparse.ArgumentParser:
    """Options every subcommand takes: configuration file and log level.

    Only the top-level parser sets defaults; a subcommand's copy of the options
    is suppressed when not given, so ``ptychoflow --log-level X sim`` keeps X.
    """
    default = None if top else argparse.SUPPRESS
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default=default,
                   help="TOML configuration file (default: ptychoflow.toml in the working "
                        "folder, if present)")
    p.add_argument("--log-level", default=default,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (default: INFO)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand whose module is installed."""
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="ptychoflow", parents=[common_parser(top=True)],
        description="Real-time, AI-accelerated X-ray ptychography over EPICS.")
    parser.add_argument("--version", action="version", version=f"ptychoflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # that subcommand is not part of this build yet
            raise
        sp = sub.add_parser(name, parents=[common], help=mod.HELP, description=mod.HELP)
        mod.register(sp)
    return parser


def _setup_logging(level: str | None) -> None:
    logging.basicConfig(
        level=getattr(logging, level or "INFO"),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        print(f"ptychoflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRA_FOR.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"ptychoflow: this command needs {exc.name}; install it with "
              f"pip install 'ptychoflow[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
