"""``ptychoflow ioc``: serve the workflow's control PVs over CA and PVA.

Settings come from the ``[ioc]`` table of the configuration (stage functions in
``[ioc.stages]``), overridden by flags; see :class:`~ptychoflow.ioc.settings.IocSettings`.
"""

from __future__ import annotations

import argparse

from ptychoflow.config import ConfigError, add_arguments, load_file, resolve
from ptychoflow.ioc.settings import IocSettings

HELP = "serve the workflow control PVs (CA + PVA), run the state machine and registry"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the IOC's flags (one per setting)."""
    add_arguments(parser, IocSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the settings and serve until SIGINT/SIGTERM."""
    tables = load_file(getattr(args, "config", None))
    settings = resolve(IocSettings, "ioc", args, tables)
    if not settings.data_path.is_dir():
        raise ConfigError(f"data root {settings.data_path} is not a folder; create it or set "
                          f"--data-root / data_root in [ioc]")
    from ptychoflow.ioc.server import serve

    return serve(settings, tables)
