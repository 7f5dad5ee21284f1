"""An IOC run handed to Globus Flows (``via_flows = true``), followed in the IOC's own states.

Offline: the orchestrator is the IOC's own, the back ends and the FlowRunner are
built from TOML tables as the IOC builds them, and Transfer, Compute and Flows
answer through ``responses`` with globus-sdk's testing tools. What is checked is
what an operator watching Workflow:State_RBV and Workflow:Message_RBV relies on:
the states in order, the cause of a failure, an Abort that stops the flow run,
and the model registered from the flow's result.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_compute_sdk.serialize import ComputeSerializer
from globus_sdk.testing import RegisteredResponse, load_response

from ptychoflow.ioc.compute import GlobusCompute, table_of
from ptychoflow.ioc.flowrun import STEPS, FlowRunner
from ptychoflow.ioc.orchestrator import Orchestrator
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.transfer import GlobusTransfer, LocalTransfer
from ptychoflow.remote.flow import definition, input_schema
from ptychoflow.remote.sitecheck import site_report
from tests.unit.globus_offline import Sink, requests_to
from tests.unit.test_globus_flows import FLOW, RUN, flows_api, logged_in
from tests.unit.test_globus_transfer import CMP, EDGE, SRC, collections

SITE = "/home/u/ptycho"  # the work folder as the compute site's workers open it
RUN_DIR = f"{SITE}/runs/run-00001"
SHA = "cd" * 32
CHECK_TASK = "bbbbbbbb-0000-4000-8000-0000000000c1"
TRAINED = {"reconstruction": f"{RUN_DIR}/reconstruct/scan_001-recon.h5",
           "checkpoint": f"{SITE}/training/checkpoints/best.pt", "best_val_loss": 0.25,
           "model": f"{SITE}/models/model-v1.onnx", "card": f"{SITE}/models/model-v1.json",
           "version": 1, "sha256": SHA, "quality": {"ssim": 0.8},
           "to_edge": [{"source_path": "/~/ptycho/models/model-v1.onnx",
                        "destination_path": "/models/model-v1.onnx"}]}

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def beamline(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Configuration tables with via_flows = true, a scan, a login; the site's checks answer."""
    data = tmp_path / "data"
    (data / "2024").mkdir(parents=True)
    scan = data / "2024" / "scan_001.h5"
    scan.write_bytes(b"\0" * 1000)
    logged_in(tmp_path)
    auth = {"native_client_id": "c0ffee00-0000-4000-8000-000000000001",
            "token_dir": str(tmp_path / "tokens")}
    endpoint = load_response(globus_sdk.ComputeClientV2.get_endpoint_status).metadata[
        "endpoint_id"]
    function_id = load_response(globus_sdk.ComputeClientV3.register_function).metadata[
        "function_id"]
    tables = {
        "ioc": {"data_root": str(data), "work_root": str(tmp_path / "work")},
        "transfer": {"globus": {
            **auth, "source_collection": SRC, "source_path": "/beamline/data",
            "compute_collection": CMP, "compute_path": "/~/ptycho", "compute_local_path": SITE,
            "edge_collection": EDGE, "edge_path": "/models",
            "edge_local_path": "/opt/edge/models"}},
        "compute": {"globus_compute": {**auth, "endpoint_id": endpoint, "poll_s": 0.01,
                                       "via_flows": True}},
    }
    # Start's checks: collections up, endpoint online, the site runs this host's versions
    collections(SRC, CMP, EDGE)
    for cid in (SRC, CMP, EDGE):
        RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{cid}/ls",
                           json={"DATA_TYPE": "file_list", "DATA": []}).add()
    RegisteredResponse(service="compute", method="POST", path=f"/v3/endpoints/{endpoint}/submit",
                       json={"request_id": "r", "task_group_id": "g", "endpoint_id": endpoint,
                             "tasks": {function_id: [CHECK_TASK]}}).add()
    RegisteredResponse(service="compute", path=f"/v2/tasks/{CHECK_TASK}",
                       json={"task_id": CHECK_TASK, "status": "success",
                             "result": ComputeSerializer().serialize(site_report()),
                             "completion_t": "1700000000.0"}).add()
    flows_api()  # create / update the flow, start the run
    return tables, scan


def flow_run(*docs: dict[str, Any]) -> None:
    """The flow run's state on successive polls (the last one repeats)."""
    for doc in docs:
        RegisteredResponse(service="flows", path=f"/runs/{RUN}",
                           json={"run_id": RUN, "flow_id": FLOW, **doc}).add()


def flow_log(*steps: str) -> None:
    """The run's log on successive polls: each poll shows one more step started."""
    for n in range(1, len(steps) + 1):
        entries = [{"code": "ActionStarted", "description": f"State {s} started",
                    "details": {"state_name": s, "state_type": "Action"}} for s in steps[:n]]
        RegisteredResponse(service="flows", path=f"/runs/{RUN}/log",
                           json={"entries": entries[::-1], "limit": 50,
                                 "has_next_page": False}).add()


def succeeded() -> dict[str, Any]:
    return {"status": "SUCCEEDED", "details": {"code": "FlowSucceeded", "output": {
        "TransferScan": {"status": "SUCCEEDED", "details": {"task_id": "t"}},
        "Reconstruct": {"status": "SUCCEEDED", "details": {"result": [
            {"reconstruction": TRAINED["reconstruction"]}]}},
        "TrainExport": {"status": "SUCCEEDED", "details": {"result": [TRAINED]}},
        "ModelToEdge": {"status": "SUCCEEDED", "details": {"task_id": "t2"}}}}}


def drive(tables: dict[str, Any], scan: Path, transfer: str = "Globus",
          during: Callable[[Orchestrator, Registry], Awaitable[None]] | None = None,
          **ioc: Any) -> tuple[Sink, dict[str, Any], Registry]:
    """One run through the orchestrator, on back ends built from ``tables``; ``during``
    runs beside it."""
    settings = IocSettings(**{**tables["ioc"], **ioc})
    compute = GlobusCompute(settings, table_of(tables, "compute", "globus_compute"))
    transfers = {"Globus": GlobusTransfer(settings, table_of(tables, "transfer", "globus")),
                 "Local": LocalTransfer(settings, None)}
    flows = FlowRunner(settings, tables)
    registry = Registry(settings.work_path / "registry.sqlite")
    sink = Sink()

    async def go() -> None:
        orch = Orchestrator(settings, registry, sink, {"GlobusCompute": compute}, transfers,
                            flows=flows)
        try:
            assert orch.reserve()
            task = asyncio.create_task(orch.run(scan, {
                "transfer_backend": transfer, "compute_backend": "GlobusCompute",
                "recon_epochs": 5, "model_dir": str(settings.work_path / "models")}))
            if during is not None:
                await during(orch, registry)
            await asyncio.wait_for(task, 30)
        finally:
            orch.close()
            compute.shutdown()
            flows.close()
            for t in transfers.values():
                t.close()

    asyncio.run(go())
    run = registry.run(1)
    assert run is not None
    return sink, run, registry


def states(run: dict[str, Any]) -> list[str]:
    return [e["state"] for e in run["events"]]


def test_the_flow_steps_map_onto_the_workflow_states_in_the_flows_own_order() -> None:
    states_, order, name = definition()["States"], [], definition()["StartAt"]
    while name:
        order.append(name)
        name = states_[name].get("Next")
    assert order == list(STEPS)
    assert list(STEPS.values()) == ["Transferring", "Reconstructing", "Training", "Deploying"]


def test_a_flow_run_is_followed_through_every_state_and_its_model_registered(
        beamline: Any, offline: responses.RequestsMock) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    tables, scan = beamline
    flow_run(*[{"status": "ACTIVE"}] * 4, succeeded())
    flow_log("TransferScan", "Reconstruct", "TrainExport", "ModelToEdge")
    sink, run, registry = drive(tables, scan)
    assert run["state"] == "Done", sink.messages
    assert states(run) == ["Idle", "Transferring", "Reconstructing", "Training", "Deploying",
                           "Done"]
    assert run["events"][2]["message"] == (
        "Reconstructing: run 1, scan_001.h5 (Globus Flow step Reconstruct)")
    # the run's files go where a run driven by the IOC puts them, in the one lineage
    body = json.loads(requests_to(offline, "POST", f"/flows/{FLOW}/run")[0].body)["body"]
    jsonschema.validate(body, input_schema())
    assert (body["scan_source_path"], body["scan_compute_path"], body["workdir"]) == (
        "/beamline/data/2024/scan_001.h5", "/~/ptycho/runs/run-00001/transfer/scan_001.h5",
        RUN_DIR)
    assert (body["params"]["model_dir"], body["params"]["train_dir"]) == (
        f"{SITE}/models", f"{SITE}/training")
    assert (body["params"]["version"], body["params"]["recon_epochs"]) == (1, 5)
    # the model: the export's own checksum; where the edge finds it, since the flow moved it
    (model,) = registry.models()
    assert (model["version"], model["path"], model["sha256"]) == (
        1, f"{SITE}/models/model-v1.onnx", SHA)
    assert model["metrics"]["quality"] == {"ssim": 0.8}
    assert run["results"]["edge_model"] == "/opt/edge/models/model-v1.onnx"
    assert "to_edge" not in run["results"]
    assert (sink.values["Model:Version_RBV"], sink.values["Train:BestValLoss_RBV"]) == (1, 0.25)
    # no edge_prefix: nothing deployed; the IOC itself moved nothing
    assert registry.deployed_version() == 0 and "Model:Deployed_RBV" not in sink.values
    assert requests_to(offline, "POST", "/v0.10/transfer") == []
    assert requests_to(offline, "POST", f"/runs/{RUN}/cancel") == []
    assert run["message"] == "Done: run 1, model v1"


def test_a_waiting_flow_says_why_and_one_seen_late_steps_through_every_state_between(
        beamline: Any, edge: list[str], offline: responses.RequestsMock) -> None:
    tables, scan = beamline
    flow_run({"status": "INACTIVE", "details": {"code": "ActionPaused", "details": {
        "description": "consent required for the compute collection"}}}, succeeded())
    flow_log("TransferScan")  # a coarse poll: the run had ended before its log showed more
    sink, run, registry = drive(tables, scan, edge_prefix="EDGE1:")
    assert states(run) == ["Idle", "Transferring", "Reconstructing", "Training", "Deploying",
                           "Done"]
    assert f"Transferring: Globus Flow run {RUN} waits: consent required for the compute " \
        "collection (a consent may be missing: run `ptychoflow login` and resume the run in " \
        "the Globus web app)" in sink.messages
    # the edge loads the model where the flow's ModelToEdge step put it; it is not sent again
    assert edge == ["/opt/edge/models/model-v1.onnx"]  # put by the IOC to a real edge PV
    assert requests_to(offline, "POST", "/v0.10/transfer") == []
    assert registry.deployed_version() == 1 and sink.values["Model:Deployed_RBV"] == 1


def test_a_failed_flow_run_fails_the_run_with_the_steps_cause(beamline: Any) -> None:
    tables, scan = beamline
    flow_run({"status": "FAILED", "details": {"code": "FlowFailed", "details": {
        "cause": "TrainExport: StageError: no checkpoint"}}})
    RegisteredResponse(service="flows", path=f"/runs/{RUN}/log", json={  # the first poll
        "entries": [{"code": "ActionStarted", "details": {"state_name": "TrainExport"}}],
        "limit": 50, "has_next_page": False}).add()
    sink, run, registry = drive(tables, scan)
    assert states(run) == ["Idle", "Transferring", "Reconstructing", "Training", "Failed"]
    assert run["message"] == (f"Failed in Training: Globus Flow run {RUN} FAILED: "
                              "TrainExport: StageError: no checkpoint")
    assert sink.messages[-1] == run["message"]
    assert registry.models() == []


def test_abort_cancels_the_flow_run_and_ends_aborted(
        beamline: Any, offline: responses.RequestsMock) -> None:
    tables, scan = beamline
    flow_run({"status": "ACTIVE"})
    flow_log("TransferScan", "Reconstruct")
    RegisteredResponse(service="flows", method="POST", path=f"/runs/{RUN}/cancel",
                       json={"run_id": RUN, "status": "FAILED",
                             "details": {"code": "FlowCanceled"}}).add()

    async def abort_while_reconstructing(orch: Orchestrator, registry: Registry) -> None:
        while (registry.run(1) or {}).get("state") != "Reconstructing":
            await asyncio.sleep(0.01)
        assert await orch.abort()

    sink, run, registry = drive(tables, scan, during=abort_while_reconstructing)
    assert states(run) == ["Idle", "Transferring", "Reconstructing", "Aborted"]
    assert len(requests_to(offline, "POST", f"/runs/{RUN}/cancel")) == 1
    assert registry.models() == []


def test_via_flows_with_another_transfer_back_end_is_refused_naming_the_setting(
        beamline: Any, offline: responses.RequestsMock) -> None:
    tables, scan = beamline
    sink, run, _ = drive(tables, scan, transfer="Local")
    assert states(run) == ["Idle", "Failed"]
    assert run["message"] == (
        "Failed in start: Transfer:Backend is Local, but a Globus Flow moves the scan and the "
        "model with Globus Transfer: set Transfer:Backend to Globus, or via_flows = false in "
        "[compute.globus_compute]")
    assert requests_to(offline, "POST", f"/flows/{FLOW}/run") == []
