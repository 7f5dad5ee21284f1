"""``ptychoflow flow``: the loop as a Globus Flow — print it, or deploy it and run one scan.

``export`` prints ``{"definition": ..., "input_schema": ...}`` (for
``globus flows create`` or review). ``run SCAN`` registers :func:`flow_stage` on
the Globus Compute endpoint (once), creates the flow or updates the one it
created before (its id is kept in ``<work>/globus_flow.json``), starts a run and
prints each change of the run's state until it ends. Collections, paths and the
endpoint come from ``[transfer.globus]`` and ``[compute.globus_compute]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptychoflow.config import ConfigError, load_file, resolve

HELP = "the workflow as a Globus Flow: export its definition, or deploy it and run a scan"


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``export`` and ``run``."""
    from ptychoflow.cli import common_parser

    sub = parser.add_subparsers(dest="flow_action", metavar="ACTION", required=True)
    sub.add_parser("export", parents=[common_parser()],
                   help="print the flow definition and input schema as one JSON object")
    r = sub.add_parser("run", parents=[common_parser()],
                       help="deploy (create or update) the flow and run it on one scan")
    r.add_argument("scan", help="a complete scan file under the data root")
    r.add_argument("--poll-s", type=float, default=5.0,
                   help="how often the run's state is read (s, default: 5)")
    r.add_argument("--label", default="", help="the run's label (default: from the scan)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action."""
    if args.flow_action == "export":
        from ptychoflow.remote.flow import definition, input_schema

        print(json.dumps({"definition": definition(), "input_schema": input_schema()},
                         indent=2))
        return 0
    from ptychoflow.ioc.globus_auth import CredentialsError

    try:
        return run_scan(args)
    except CredentialsError as exc:
        print(f"ptychoflow flow: {exc}", file=sys.stderr)
        return 2


def run_scan(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Deploy the flow, start a run on ``args.scan`` and follow it; 0 when it SUCCEEDED."""
    from globus_compute_sdk import Client

    from ptychoflow.ioc.compute.base import table_of
    from ptychoflow.ioc.compute.globus import FUNCTION_CACHE, GlobusComputeSettings, register_once
    from ptychoflow.ioc.flowrun import deploy, run_input
    from ptychoflow.ioc.globus_auth import (
        auth_from,
        compute_app,
        credentials_needed,
        flows_client,
        specific_flow_client,
    )
    from ptychoflow.ioc.settings import IocSettings
    from ptychoflow.ioc.transfer.globus import GlobusTransferSettings
    from ptychoflow.remote.flow import flow_stage

    file_data = load_file(getattr(args, "config", None))
    ioc = resolve(IocSettings, "ioc", None, file_data)
    t_table = table_of(file_data, "transfer", "globus")
    c_table = table_of(file_data, "compute", "globus_compute")
    if t_table is None or c_table is None:
        raise ConfigError("flow run needs both [transfer.globus] and [compute.globus_compute] "
                          "in the configuration")
    tcfg = GlobusTransferSettings.from_table(t_table)
    ccfg = GlobusComputeSettings.from_table(c_table)
    missing = tcfg.missing() + [k for k in ("edge_collection", "edge_path") if not
                                getattr(tcfg, k)] + ([] if ccfg.endpoint_id else ["endpoint_id"])
    if missing:
        raise ConfigError(f"flow run needs {', '.join(missing)} in [transfer.globus] / "
                          "[compute.globus_compute]")
    scan = Path(args.scan).resolve()
    body = run_input(scan, f"flow-{time.strftime('%Y%m%d-%H%M%S')}-{scan.stem}", ioc, tcfg,
                     args.label)
    auth = auth_from([t_table, c_table])
    interactive = sys.stdin.isatty()
    with credentials_needed("Globus Compute (flow function)"):
        gc = Client(app=compute_app(auth), do_version_check=False)
        body["function_id"] = register_once(gc, flow_stage, ioc.work_path / FUNCTION_CACHE)
        body["compute_endpoint"] = ccfg.endpoint_id
    with credentials_needed("Globus Flows"):
        fc = flows_client(auth, interactive=interactive)
        flow_id = deploy(fc, ioc.work_path, out)
        sfc = specific_flow_client(auth, flow_id, interactive=interactive)
        if tcfg.data_access:  # mapped collections: the run needs their consent too
            sfc.add_app_transfer_data_access_scope(tcfg.data_access)
        started = sfc.run_flow(body, label=body["label"], tags=["ptychoflow"])
        out(f"run {started['run_id']} of flow {flow_id} started")
        return 0 if follow(fc, str(started["run_id"]), args.poll_s, out) == "SUCCEEDED" else 1


def follow(fc: Any, run_id: str, poll_s: float, out: Callable[[str], None]) -> str:
    """Print each change of the run's state until it ends; the final status."""
    from ptychoflow.ioc.flowrun import CONSENT_HINT, ENDED, failure_detail

    last = ""
    while True:
        doc = fc.get_run(run_id)
        status = str(doc["status"])
        shown = doc.get("display_status") or status
        line = status if shown == status else f"{status} ({shown})"
        if line != last:
            out(f"run {run_id}: {line}")
            if status == "INACTIVE":
                out(f"run {run_id} waits: {failure_detail(doc)} ({CONSENT_HINT})")
            last = line
        if status in ENDED:
            if status != "SUCCEEDED":
                out(f"run {run_id} {status}: {failure_detail(doc)}")
            return status
        time.sleep(poll_s)
