"""A whole run on Globus Transfer and Globus Compute, by configuration alone, offline.

The orchestrator is the IOC's own; the back ends are built from their TOML tables
as the IOC builds them; Transfer and Compute answer through ``responses`` with
globus-sdk's testing tools; the edge is a real pvAccess server on isolated ports.
What is checked is the wiring a beamline relies on: where each file goes in which
collection, which path each stage is given on the compute site, what is
registered and what the edge is told to load.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import globus_sdk
from globus_compute_sdk.serialize import ComputeSerializer
from globus_sdk.testing import RegisteredResponse, load_response

from ptychoflow.ioc.compute.globus import GlobusCompute
from ptychoflow.ioc.orchestrator import Orchestrator
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.transfer.globus import GlobusTransfer
from ptychoflow.remote import stages
from ptychoflow.remote.sitecheck import site_report
from tests.unit.globus_offline import Sink
from tests.unit.test_globus_auth import NATIVE_ID, store_tokens
from tests.unit.test_globus_transfer import CMP, EDGE, SRC, collections, submitted, task

SITE = "/home/u/ptycho"  # the work folder as the compute site's workers open it
TASKS = [f"bbbbbbbb-0000-4000-8000-00000000000{i}" for i in range(4)]
XFER = ["aaaaaaaa-0000-4000-8000-000000000011", "aaaaaaaa-0000-4000-8000-000000000012"]
SHA = "ab" * 32


def compute_task(task_id: str, result: dict[str, Any]) -> None:
    RegisteredResponse(service="compute", path=f"/v2/tasks/{task_id}",
                       json={"task_id": task_id, "status": "success",
                             "result": ComputeSerializer().serialize(result),
                             "completion_t": "1700000000.0"}).add()


def submits(offline: Any, endpoint: str, function_id: str) -> list[tuple[Any, ...]]:
    serde = ComputeSerializer()
    out = []
    for c in offline.calls:
        if c.request.method == "POST" and \
                c.request.url.endswith(f"/v3/endpoints/{endpoint}/submit"):
            args, _ = serde.unpack_buffers(json.loads(c.request.body)["tasks"][function_id][0])
            out.append(serde.deserialize(args))
    return out


def transfers(offline: Any) -> list[dict[str, Any]]:
    return [json.loads(c.request.body) for c in offline.calls
            if c.request.method == "POST" and c.request.url.endswith("/v0.10/transfer")]


def test_a_run_on_globus_transfer_and_compute_goes_by_configuration_alone(
        tmp_path: Path, offline: Any, edge: list[str]) -> None:
    data = tmp_path / "data"
    (data / "2024").mkdir(parents=True)
    scan = data / "2024" / "scan_001.h5"
    scan.write_bytes(b"\0" * 1000)
    store_tokens(tmp_path / "tokens")
    auth = {"native_client_id": NATIVE_ID, "token_dir": str(tmp_path / "tokens")}
    endpoint = load_response(globus_sdk.ComputeClientV2.get_endpoint_status).metadata[
        "endpoint_id"]
    function_id = load_response(globus_sdk.ComputeClientV3.register_function).metadata[
        "function_id"]
    settings = IocSettings(data_root=str(data), work_root=str(tmp_path / "work"),
                           edge_prefix="EDGE1:")
    transfer = GlobusTransfer(settings, {
        **auth, "source_collection": SRC, "source_path": "/beamline/data",
        "compute_collection": CMP, "compute_path": "/~/ptycho", "compute_local_path": SITE,
        "edge_collection": EDGE, "edge_path": "/models", "edge_local_path": "/opt/edge/models",
        "poll_s": 0, "backoff_s": 0})
    compute = GlobusCompute(settings, {**auth, "endpoint_id": endpoint, "poll_s": 0.01})

    collections(SRC, CMP, EDGE)
    for cid in (SRC, CMP, EDGE):  # check(): each collection lists its folder
        RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{cid}/ls",
                           json={"DATA_TYPE": "file_list", "DATA": []}).add()
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{EDGE}/stat",
                       json={"DATA_TYPE": "file", "name": "model-v1.onnx", "type": "file",
                             "size": 2000}).add()
    submitted(*XFER)
    task(XFER[0], "SUCCEEDED", bytes_transferred=1000, subtasks_succeeded=1)
    task(XFER[1], "SUCCEEDED", bytes_transferred=2000, subtasks_succeeded=2)
    for task_id in TASKS:
        RegisteredResponse(service="compute", method="POST",
                           path=f"/v3/endpoints/{endpoint}/submit",
                           json={"request_id": "r", "task_group_id": "g", "endpoint_id": endpoint,
                                 "tasks": {function_id: [task_id]}}).add()
    run_dir = f"{SITE}/runs/run-00001"
    compute_task(TASKS[0], site_report())  # the site check: the same Python and packages
    compute_task(TASKS[1], {"reconstruction": f"{run_dir}/reconstruct/scan_001-recon.h5"})
    compute_task(TASKS[2], {"checkpoint": f"{SITE}/training/checkpoints/best.pt",
                            "best_val_loss": 0.25})
    compute_task(TASKS[3], {"model": f"{SITE}/models/model-v1.onnx",
                            "card": f"{SITE}/models/model-v1.json", "version": 1,
                            "sha256": SHA, "quality": {"ssim": 0.8}})

    async def run() -> Sink:
        sink = Sink()
        registry = Registry(tmp_path / "work" / "registry.sqlite")
        orch = Orchestrator(settings, registry, sink, {"GlobusCompute": compute},
                            {"Globus": transfer})
        try:
            assert orch.reserve()
            await orch.run(scan, {"transfer_backend": "Globus",
                                  "compute_backend": "GlobusCompute", "recon_epochs": 5,
                                  "model_dir": str(tmp_path / "work" / "models")})
            sink.values["runs"] = registry.runs()
            sink.values["models"] = registry.models()
        finally:
            orch.close()
            compute.shutdown()
            registry.close()
        return sink

    sink = asyncio.run(run())
    (only,) = sink.values["runs"]
    assert only["state"] == "Done", sink.messages
    assert [e["state"] for e in only["events"]] == [
        "Idle", "Transferring", "Reconstructing", "Training", "Deploying", "Done"]
    # the scan: from the data root's place in the beamline collection to the run folder
    scan_xfer, model_xfer = transfers(offline)
    assert (scan_xfer["source_endpoint"], scan_xfer["destination_endpoint"]) == (SRC, CMP)
    assert [(d["source_path"], d["destination_path"]) for d in scan_xfer["DATA"]] == [
        ("/beamline/data/2024/scan_001.h5", "/~/ptycho/runs/run-00001/transfer/scan_001.h5")]
    assert scan_xfer["sync_level"] in (3, "checksum") and scan_xfer["verify_checksum"]
    # the stages: run_stage(fn, scan, workdir, params, None) with the site's paths
    check, rec, train, export = submits(offline, endpoint, function_id)
    assert check[0] is site_report
    assert [s[0] for s in (rec, train, export)] == [stages.reconstruct, stages.train,
                                                    stages.export]
    scan_there = f"{run_dir}/transfer/scan_001.h5"
    assert [(s[1], s[2]) for s in (rec, train, export)] == [
        (scan_there, f"{run_dir}/reconstruct"), (scan_there, f"{run_dir}/train"),
        (scan_there, f"{run_dir}/export")]
    assert rec[3]["model_dir"] == f"{SITE}/models" and rec[3]["train_dir"] == f"{SITE}/training"
    assert train[3]["reconstruction"] == f"{run_dir}/reconstruct/scan_001-recon.h5"
    assert export[3]["version"] == 1 and all(s[4] is None for s in (rec, train, export))
    # the model: registered with the export's checksum, sent to the edge, loaded from there
    (model,) = sink.values["models"]
    assert (model["version"], model["path"], model["sha256"]) == (
        1, f"{SITE}/models/model-v1.onnx", SHA)
    assert (model_xfer["source_endpoint"], model_xfer["destination_endpoint"]) == (CMP, EDGE)
    assert sorted(d["destination_path"] for d in model_xfer["DATA"]) == [
        "/models/model-v1.json", "/models/model-v1.onnx"]
    assert edge == ["/opt/edge/models/model-v1.onnx"]
    assert sink.values["Model:Deployed_RBV"] == 1
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))
