"""The workflow loop as a Globus Flow: for a site where Globus, not the IOC, drives the run.

Four Action states, the same loop the IOC's orchestrator runs::

    TransferScan  (Transfer AP)  beamline collection -> compute collection
    Reconstruct   (Compute AP)   flow_stage(["...:reconstruct"])
    TrainExport   (Compute AP)   flow_stage(["...:train", "...:export"]), given Reconstruct's result
    ModelToEdge   (Transfer AP)  compute collection -> edge collection, the files TrainExport names

A Compute AP call carries only JSON, so the function the flow calls is
:func:`flow_stage`, which takes the stages as ``"module:function"`` names (the
IOC's ``[ioc.stages]``) and runs each through :func:`ptychoflow.stages.run_stage`,
merging each result into the parameters of the next, as the orchestrator does.
It also turns the exported model's paths into the Transfer items of the last
state, since a flow cannot rewrite paths itself.

This module imports nothing heavy: it is imported on the compute endpoint.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

TRANSFER_URL = "https://transfer.actions.globus.org/transfer"
COMPUTE_URL = "https://compute.actions.globus.org"
TITLE = "ptychoflow: scan -> reconstruct -> train -> model to edge"
FLOW_FILE = "globus_flow.json"
WAIT_S = 7 * 24 * 3600
"""How long a state may wait for its action (the flow's, not ptychoflow's, limit)."""

_UUID = {"type": "string", "format": "uuid"}
_PATH = {"type": "string", "minLength": 1}


def _transfer(source: str, dest: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"source_endpoint.$": source, "destination_endpoint.$": dest,
            "label.$": "$.label", "sync_level": "checksum", "verify_checksum": True, **data}


def _compute(stages: str, **extra: str) -> dict[str, Any]:
    kwargs = {"stages.$": stages, "scan_path.$": "$.scan_path", "workdir.$": "$.workdir",
              "params.$": "$.params", **{f"{k}.$": v for k, v in extra.items()}}
    return {"endpoint.$": "$.compute_endpoint", "function.$": "$.function_id",
            "kwargs": kwargs}


def _action(url: str, params: dict[str, Any], name: str, then: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Action", "ActionUrl": url, "Parameters": params,
                             "ResultPath": f"$.{name}", "WaitTime": WAIT_S,
                             "ExceptionOnActionFailure": True}
    if then is None:
        state["End"] = True
    else:
        state["Next"] = then
    return state


def definition() -> dict[str, Any]:
    """The flow definition (states language of Globus Flows)."""
    result = "$.TrainExport.details.result[0]"
    return {
        "Comment": "ptychoflow: one scan through the federated loop",
        "StartAt": "TransferScan",
        "States": {
            "TransferScan": _action(TRANSFER_URL, _transfer(
                "$.source_collection", "$.compute_collection",
                {"DATA": [{"source_path.$": "$.scan_source_path",
                           "destination_path.$": "$.scan_compute_path"}]}),
                "TransferScan", "Reconstruct"),
            "Reconstruct": _action(COMPUTE_URL, _compute("$.stages.reconstruct"),
                                   "Reconstruct", "TrainExport"),
            "TrainExport": _action(COMPUTE_URL, _compute(
                "$.stages.train_export", previous="$.Reconstruct.details.result[0]",
                paths="$.paths"), "TrainExport", "ModelToEdge"),
            "ModelToEdge": _action(TRANSFER_URL, _transfer(
                "$.compute_collection", "$.edge_collection", {"DATA.$": f"{result}.to_edge"}),
                "ModelToEdge", None),
        },
    }


def input_schema() -> dict[str, Any]:
    """The JSON schema of a run's input (what ``ptychoflow flow run`` sends)."""
    stage_list = {"type": "array", "items": {"type": "string", "pattern": r"^[\w.]+:\w+$"},
                  "minItems": 1}
    props: dict[str, Any] = {
        "label": {"type": "string", "maxLength": 128},
        "source_collection": _UUID, "compute_collection": _UUID, "edge_collection": _UUID,
        "compute_endpoint": _UUID, "function_id": _UUID,
        "scan_source_path": _PATH, "scan_compute_path": _PATH,
        "scan_path": {**_PATH, "description": "the scan as compute workers open it"},
        "workdir": {**_PATH, "description": "the run folder as compute workers open it"},
        "params": {"type": "object", "description": "stage parameters"},
        "stages": {"type": "object", "required": ["reconstruct", "train_export"],
                   "properties": {"reconstruct": stage_list, "train_export": stage_list}},
        "paths": {"type": "object", "required": ["compute_path", "compute_local_path",
                                                 "edge_path"],
                  "properties": {k: _PATH for k in ("compute_path", "compute_local_path",
                                                    "edge_path")},
                  "description": "the work folder in the compute collection and as workers "
                                 "see it; the edge's model folder in its collection"},
    }
    return {"type": "object", "required": sorted(props), "properties": props,
            "additionalProperties": False}


def edge_items(files: list[str], paths: dict[str, str]) -> list[dict[str, str]]:
    """Transfer items sending ``files`` (as workers wrote them) to the edge's model folder."""
    items = []
    for f in files:
        rel = PurePosixPath(f).relative_to(paths["compute_local_path"])
        items.append({"source_path": str(PurePosixPath(paths["compute_path"]) / rel),
                      "destination_path": str(PurePosixPath(paths["edge_path"]) /
                                              PurePosixPath(f).name)})
    return items


def flow_stage(stages: list[str], scan_path: str, workdir: str, params: dict[str, Any],
               previous: dict[str, Any] | None = None,
               paths: dict[str, str] | None = None) -> dict[str, Any]:
    """Run named stages in order on a Globus Compute worker; the merged JSON-ready result."""
    from ptychoflow.stages import run_stage

    merged = {**params, **(previous or {})}
    out = dict(previous or {})
    Path(workdir).mkdir(parents=True, exist_ok=True)
    for dotted in stages:
        module, _, name = dotted.partition(":")
        result = run_stage(getattr(importlib.import_module(module), name), scan_path,
                           workdir, merged)
        merged.update(result)
        out.update(result)
    if paths is not None and out.get("model"):
        files = [out["model"]] + [out[k] for k in ("card", "probe") if out.get(k)]
        out["to_edge"] = edge_items(files, paths)
    return out


def saved_flow_id(work: Path) -> str | None:
    """The id of the flow ``ptychoflow flow run`` deployed from this work folder, if any."""
    try:
        return str(json.loads((work / FLOW_FILE).read_text())["flow_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_flow_id(work: Path, flow_id: str) -> None:
    """Remember the deployed flow, so the next run updates it instead of creating another."""
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / (FLOW_FILE + ".part")
    tmp.write_text(json.dumps({"flow_id": flow_id}))
    tmp.replace(work / FLOW_FILE)
