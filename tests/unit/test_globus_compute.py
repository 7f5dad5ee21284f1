"""Globus Compute back end: stages submitted over HTTPS and their results read back by polling.

Offline: the Compute API is answered by ``responses`` through globus-sdk's
testing fixtures (``load_response``) and ``RegisteredResponse``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.serialize import ComputeSerializer
from globus_sdk.testing import RegisteredResponse, load_response

from ptychoflow.ioc.compute.base import BackendNotConfigured
from ptychoflow.ioc.compute.globus import FUNCTION_CACHE, GlobusCompute, function_key
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.stages import run_stage
from tests.unit.globus_offline import requests_to
from tests.unit.test_globus_auth import NATIVE_ID, store_tokens

LOST = ("Traceback (most recent call last):\n  ...\n"
        "parsl.executors.high_throughput.errors.WorkerLost: Task failure due to loss of "
        "worker 3 on host nid0042")

pytestmark = pytest.mark.usefixtures("offline")


def reconstruct(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    """A stage, as the endpoint would run it (never run here: the endpoint is mocked)."""
    return {"reconstruction": f"{workdir}/scan-recon.h5"}


@pytest.fixture
def backend(tmp_path: Path) -> Any:
    store_tokens(tmp_path / "tokens")
    endpoint = load_response(globus_sdk.ComputeClientV2.get_endpoint_status).metadata[
        "endpoint_id"]
    table = {"native_client_id": NATIVE_ID, "token_dir": str(tmp_path / "tokens"),
             "endpoint_id": endpoint, "poll_s": 0.01, "workers": 2}
    settings = IocSettings(work_root=str(tmp_path / "work"))
    made: list[GlobusCompute] = []

    def make(**extra: Any) -> GlobusCompute:
        made.append(GlobusCompute(settings, {**table, **extra}))
        return made[-1]

    yield make
    for gc in made:
        gc.shutdown()


def task_reply(task_id: str, status: str, **fields: Any) -> None:
    RegisteredResponse(service="compute", path=f"/v2/tasks/{task_id}",
                       json={"task_id": task_id, "status": status, **fields}).add()


def test_online_endpoint_passes_check_and_workers_come_from_config(backend: Any) -> None:
    gc = backend()
    gc.check()
    assert (gc.workers, gc.shares_files, gc.name) == (2, False, "GlobusCompute")


def test_an_offline_endpoint_is_reported_with_how_to_start_it(backend: Any) -> None:
    endpoint = "0dd0dd00-0000-4000-8000-000000000001"
    RegisteredResponse(service="compute", path=f"/v2/endpoints/{endpoint}/status",
                       json={"status": "offline", "details": {}}).add()
    with pytest.raises(BackendNotConfigured) as info:
        backend(endpoint_id=endpoint).check()
    assert str(info.value) == (
        f"Globus Compute endpoint {endpoint} is offline: start it on the compute site "
        "(`globus-compute-endpoint start <name>`), or choose Compute:Backend Local")


def test_run_stage_is_registered_once_and_the_id_reused(
        backend: Any, offline: responses.RequestsMock, tmp_path: Path) -> None:
    function_id = load_response(globus_sdk.ComputeClientV3.register_function).metadata[
        "function_id"]
    first = backend()
    first.start()
    first.start()
    backend().start()  # a restarted IOC finds the id in the work folder
    assert len(requests_to(offline, "POST", "/v3/functions")) == 1
    cache = json.loads((tmp_path / "work" / FUNCTION_CACHE).read_text())
    assert cache == {function_key(run_stage): function_id}


def test_a_submitted_stage_comes_back_with_its_result_by_polling(
        backend: Any, offline: responses.RequestsMock) -> None:
    load_response(globus_sdk.ComputeClientV3.register_function)
    meta = load_response(globus_sdk.ComputeClientV3.submit).metadata
    result = {"reconstruction": "/scratch/run-7/scan-recon.h5", "epochs": 20}
    task_reply(meta["task_id"], "waiting-for-ep")
    task_reply(meta["task_id"], "running")
    task_reply(meta["task_id"], "success", result=ComputeSerializer().serialize(result),
               completion_t="1700000000.0")
    gc = backend()
    future = gc.submit(reconstruct, "/scratch/run-7/scan.h5", "/scratch/run-7", {"a": 1}, None)
    assert future.result(timeout=10) == result
    assert len(requests_to(offline, "GET", f"/v2/tasks/{meta['task_id']}")) == 3
    body = json.loads(requests_to(offline, "POST", f"/v3/endpoints/{meta['endpoint_id']}/submit")[0]
                      .body)
    assert list(body["tasks"]) == [meta["function_id"]]
    serde = ComputeSerializer()
    args, kwargs = serde.unpack_buffers(body["tasks"][meta["function_id"]][0])
    assert serde.deserialize(args) == (reconstruct, "/scratch/run-7/scan.h5", "/scratch/run-7",
                                       {"a": 1}, None)
    assert serde.deserialize(kwargs) == {}


def test_a_lost_worker_is_recognised_so_the_stage_may_be_retried(backend: Any) -> None:
    load_response(globus_sdk.ComputeClientV3.register_function)
    meta = load_response(globus_sdk.ComputeClientV3.submit).metadata
    task_reply(meta["task_id"], "failed", exception=LOST, completion_t="1700000000.0")
    gc = backend()
    exc = gc.submit(reconstruct, "/s.h5", "/w", {}, None).exception(timeout=10)
    assert isinstance(exc, TaskExecutionFailed)
    assert gc.is_worker_lost(exc) is True
    assert gc.is_worker_lost(TaskExecutionFailed("ValueError: bad epochs")) is False
    assert gc.is_worker_lost(ValueError("x")) is False


def test_unconfigured_globus_compute_names_the_section_to_fill(tmp_path: Path) -> None:
    with pytest.raises(BackendNotConfigured) as info:
        GlobusCompute(IocSettings(work_root=str(tmp_path)), None).check()
    assert "GlobusCompute is not configured" in str(info.value)
    assert "[compute.globus_compute]" in str(info.value)


def test_without_a_login_check_says_run_ptychoflow_login(
        backend: Any, tmp_path: Path, offline: responses.RequestsMock) -> None:
    with pytest.raises(BackendNotConfigured, match="run `ptychoflow login`"):
        backend(token_dir=str(tmp_path / "none")).check()
    assert len(offline.calls) == 0
