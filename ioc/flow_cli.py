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
from pathlib import Path, PurePosixPath
from typing import Any

from ptychoflow.config import ConfigError, load_file, resolve

HELP = "the workflow as a Globus Flow: export its definition, or deploy it and run a scan"
ENDED = ("SUCCEEDED", "FAILED", "ENDED")


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
    body = run_input(args, ioc, tcfg)
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


def run_input(args: argparse.Namespace, ioc: Any, tcfg: Any) -> dict[str, Any]:
    """The run's input document (see :func:`~ptychoflow.remote.flow.input_schema`)."""
    scan = Path(args.scan).resolve()
    if not scan.is_file() or scan.name.endswith(".part"):
        raise ConfigError(f"{scan} is not a complete scan file")
    try:
        rel = scan.relative_to(ioc.data_path)
    except ValueError:
        raise ConfigError(f"scan {scan} is outside the data root {ioc.data_path}; set "
                          "data_root in [ioc]") from None
    name = f"flow-{time.strftime('%Y%m%d-%H%M%S')}-{scan.stem}"
    run_dir = PurePosixPath("runs", name)
    local = PurePosixPath(tcfg.compute_local_path)
    stages = ioc.stages
    return {
        "label": (args.label or f"ptychoflow {scan.name}")[:128],
        "source_collection": tcfg.source_collection,
        "compute_collection": tcfg.compute_collection,
        "edge_collection": tcfg.edge_collection,
        "scan_source_path": str(PurePosixPath(tcfg.source_path, *rel.parts)),
        "scan_compute_path": str(PurePosixPath(tcfg.compute_path) / run_dir / "transfer" /
                                 scan.name),
        "scan_path": str(local / run_dir / "transfer" / scan.name),
        "workdir": str(local / run_dir),
        "params": {"path": str(local / run_dir / "transfer" / scan.name),
                   "model_dir": str(local / "models"), "train_dir": str(local / "training")},
        "stages": {"reconstruct": [stages["reconstruct"]],
                   "train_export": [stages["train"], stages["export"]]},
        "paths": {"compute_path": tcfg.compute_path, "compute_local_path": str(local),
                  "edge_path": tcfg.edge_path},
    }


def deploy(fc: Any, work: Path, out: Callable[[str], None]) -> str:
    """Update the flow deployed from ``work`` before, or create it; its id."""
    from globus_sdk import GlobusAPIError

    from ptychoflow.remote.flow import TITLE, definition, input_schema, save_flow_id, saved_flow_id

    doc = {"title": TITLE, "definition": definition(), "input_schema": input_schema()}
    flow_id = saved_flow_id(work)
    if flow_id:
        try:
            fc.update_flow(flow_id, **doc)
            out(f"flow {flow_id} updated")
            return flow_id
        except GlobusAPIError as exc:
            if exc.http_status != 404:
                raise
            out(f"flow {flow_id} is gone; creating a new one")
    flow_id = str(fc.create_flow(keywords=["ptychoflow"], **doc)["id"])
    save_flow_id(work, flow_id)
    out(f"flow {flow_id} created")
    return flow_id


def follow(fc: Any, run_id: str, poll_s: float, out: Callable[[str], None]) -> str:
    """Print each change of the run's state until it ends; the final status."""
    last = ""
    while True:
        doc = fc.get_run(run_id)
        status = str(doc["status"])
        shown = doc.get("display_status") or status
        line = status if shown == status else f"{status} ({shown})"
        if line != last:
            out(f"run {run_id}: {line}")
            if status == "INACTIVE":
                out(f"run {run_id} waits: {_detail(doc)} (a consent may be missing: run "
                    "`ptychoflow login` and resume it in the Globus web app)")
            last = line
        if status in ENDED:
            if status != "SUCCEEDED":
                out(f"run {run_id} {status}: {_detail(doc)}")
            return status
        time.sleep(poll_s)


def _detail(doc: Any) -> str:
    details = doc.get("details") or {}
    inner = details.get("details") if isinstance(details, dict) else None
    if isinstance(inner, dict):
        cause = inner.get("cause") or inner.get("error") or inner.get("description")
        if cause:
            return str(cause)
    code = details.get("code") if isinstance(details, dict) else None
    return str(code or details or "no details")
