"""The loop as a Globus Flow: its definition, deploying it, and following a run.

Offline: the Flows and Compute APIs are answered by ``responses`` through
globus-sdk's testing tools.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_sdk.scopes import SpecificFlowScopes
from globus_sdk.testing import RegisteredResponse, load_response

from ptychoflow.cli import main
from ptychoflow.remote.flow import (
    COMPUTE_URL,
    FLOW_FILE,
    TRANSFER_URL,
    definition,
    flow_stage,
    input_schema,
)
from tests.unit.globus_offline import requests_to
from tests.unit.test_globus_auth import NATIVE_ID, SCOPES, store_tokens

FLOW = "f10f1000-0000-4000-8000-000000000001"
RUN = "7a117a11-0000-4000-8000-000000000001"
SRC = "11111111-1111-4111-8111-111111111111"
CMP = "22222222-2222-4222-8222-222222222222"
EDGE = "33333333-3333-4333-8333-333333333333"

pytestmark = pytest.mark.usefixtures("offline")


def fake_recon(scan_path: str, workdir: str, params: dict[str, Any],
               progress: Any = None) -> dict[str, Any]:
    return {"reconstruction": f"{workdir}/r.h5", "seen_path": params["path"]}


def fake_export(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    return {"model": f"{workdir}/models/model-v{params['v']}.onnx",
            "card": f"{workdir}/models/model-v{params['v']}.json",
            "from_recon": params["reconstruction"]}


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "scan_001.h5"
    scan.write_bytes(b"x")
    endpoint = load_response(globus_sdk.ComputeClientV3.submit).metadata["endpoint_id"]
    config = tmp_path / "ptychoflow.toml"
    config.write_text(f"""
[ioc]
data_root = "{data}"
work_root = "{tmp_path / 'work'}"
[transfer.globus]
native_client_id = "{NATIVE_ID}"
token_dir = "{tmp_path / 'tokens'}"
source_collection = "{SRC}"
source_path = "/beamline"
compute_collection = "{CMP}"
compute_path = "/~/ptycho"
compute_local_path = "/home/u/ptycho"
edge_collection = "{EDGE}"
edge_path = "/models"
[compute.globus_compute]
endpoint_id = "{endpoint}"
""")
    return config, scan


def flows_api(*statuses: tuple[str, dict[str, Any]]) -> None:
    RegisteredResponse(service="flows", method="POST", path="/flows",
                       json={"id": FLOW, "title": "t"}).add()
    RegisteredResponse(service="flows", method="PUT", path=f"/flows/{FLOW}",
                       json={"id": FLOW, "title": "t"}).add()
    RegisteredResponse(service="flows", method="POST", path=f"/flows/{FLOW}/run",
                       json={"run_id": RUN, "flow_id": FLOW, "status": "ACTIVE"}).add()
    for status, extra in statuses:
        RegisteredResponse(service="flows", path=f"/runs/{RUN}",
                           json={"run_id": RUN, "status": status, **extra}).add()


def logged_in(tmp_path: Path) -> None:
    store_tokens(tmp_path / "tokens", {**SCOPES, FLOW: str(SpecificFlowScopes(FLOW).user)})


def test_flow_export_prints_the_four_steps_and_an_input_schema_as_one_json_object(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", "export"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc) == ["definition", "input_schema"]
    states, order, name = doc["definition"]["States"], [], doc["definition"]["StartAt"]
    while name:
        order.append(name)
        name = states[name].get("Next")
    assert order == ["TransferScan", "Reconstruct", "TrainExport", "ModelToEdge"]
    assert [states[s]["ActionUrl"] for s in order] == [TRANSFER_URL, COMPUTE_URL, COMPUTE_URL,
                                                       TRANSFER_URL]
    assert states["ModelToEdge"]["End"] is True
    assert states["TransferScan"]["Parameters"]["sync_level"] == "checksum"
    assert doc["input_schema"]["type"] == "object"
    assert "scan_source_path" in doc["input_schema"]["required"]


def test_every_path_the_flow_reads_is_its_input_or_an_earlier_steps_result() -> None:
    text = json.dumps(definition())
    roots = set(re.findall(r'"\$\.(\w+)', text))
    results = {"TransferScan", "Reconstruct", "TrainExport", "ModelToEdge"}
    assert roots - results == set(input_schema()["properties"])  # all input used, none unknown


def test_flow_stage_runs_named_stages_in_order_and_names_the_files_for_the_edge(
        tmp_path: Path) -> None:
    work = tmp_path / "run"
    mod = __name__
    first = flow_stage([f"{mod}:fake_recon"], "/s.h5", str(work), {"path": "/p.h5"})
    assert first == {"reconstruction": f"{work}/r.h5", "seen_path": "/p.h5"}
    paths = {"compute_path": "/~/ptycho", "compute_local_path": str(tmp_path),
             "edge_path": "/models"}
    second = flow_stage([f"{mod}:fake_export"], "/s.h5", str(work), {"v": 4}, first, paths)
    assert second["from_recon"] == f"{work}/r.h5"
    assert second["to_edge"] == [
        {"source_path": "/~/ptycho/run/models/model-v4.onnx",
         "destination_path": "/models/model-v4.onnx"},
        {"source_path": "/~/ptycho/run/models/model-v4.json",
         "destination_path": "/models/model-v4.json"}]


def test_flow_run_creates_the_flow_then_updates_it_and_follows_runs_to_success(
        site: Any, tmp_path: Path, offline: responses.RequestsMock,
        capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    config, scan = site
    logged_in(tmp_path)
    load_response(globus_sdk.ComputeClientV3.register_function)
    flows_api(("ACTIVE", {}), ("ACTIVE", {"display_status": "Reconstruct"}),
              ("ACTIVE", {"display_status": "Reconstruct"}), ("SUCCEEDED", {}))
    argv = ["--config", str(config), "flow", "run", str(scan), "--poll-s", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"flow {FLOW} created", f"run {RUN} of flow {FLOW} started", f"run {RUN}: ACTIVE",
        f"run {RUN}: ACTIVE (Reconstruct)", f"run {RUN}: SUCCEEDED"]
    assert json.loads((tmp_path / "work" / FLOW_FILE).read_text()) == {"flow_id": FLOW}
    body = json.loads(requests_to(offline, "POST", f"/flows/{FLOW}/run")[0].body)["body"]
    jsonschema.validate(body, input_schema())
    assert (body["scan_source_path"], body["scan_compute_path"]) == (
        "/beamline/scan_001.h5", f"/~/ptycho/{body['workdir'][15:]}/transfer/scan_001.h5")
    assert body["workdir"].startswith("/home/u/ptycho/runs/flow-")
    assert (body["params"]["model_dir"], body["params"]["train_dir"]) == (
        "/home/u/ptycho/models", "/home/u/ptycho/training")  # one lineage across runs

    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"flow {FLOW} updated"
    assert len(requests_to(offline, "POST", "/flows")) == 1
    assert len(requests_to(offline, "PUT", f"/flows/{FLOW}")) == 1
    assert len(requests_to(offline, "POST", "/v3/functions")) == 1  # flow_stage registered once


def test_flow_run_reports_a_failed_run_and_exits_nonzero(
        site: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, scan = site
    logged_in(tmp_path)
    load_response(globus_sdk.ComputeClientV3.register_function)
    flows_api(("FAILED", {"details": {"code": "FlowFailed", "details": {
        "cause": "TrainExport: StageError: no checkpoint"}}}))
    assert main(["--config", str(config), "flow", "run", str(scan), "--poll-s", "0"]) == 1
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"run {RUN}: FAILED", f"run {RUN} FAILED: TrainExport: StageError: no checkpoint"]


def test_flow_run_without_a_login_says_run_ptychoflow_login(
        site: Any, offline: responses.RequestsMock, capsys: pytest.CaptureFixture[str]) -> None:
    config, scan = site
    assert main(["--config", str(config), "flow", "run", str(scan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptychoflow flow: Globus Compute (registering flow_stage): ")
    assert "run `ptychoflow login`" in err
    assert len(offline.calls) == 0
