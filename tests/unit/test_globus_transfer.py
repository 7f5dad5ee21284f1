"""Globus Transfer back end: what a beamline sees when scans and models cross sites.

Offline: the Transfer API is answered by ``responses`` through globus-sdk's
testing tools (``load_response``, ``RegisteredResponse``, ``get_last_request``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request, load_response

from ptychoflow.config import ConfigError
from ptychoflow.ioc.compute.base import BackendNotConfigured
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.transfer.base import TransferError
from ptychoflow.ioc.transfer.globus import GlobusTransfer
from ptychoflow.stages import Cancelled, Reporter
from tests.unit.globus_offline import requests_to
from tests.unit.test_globus_auth import NATIVE_ID, store_tokens

SRC = "11111111-1111-4111-8111-111111111111"
CMP = "22222222-2222-4222-8222-222222222222"
EDGE = "33333333-3333-4333-8333-333333333333"
T1 = "aaaaaaaa-0000-4000-8000-000000000001"
T2 = "aaaaaaaa-0000-4000-8000-000000000002"
SIZE = 1_000_000

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def site(tmp_path: Path) -> tuple[IocSettings, dict[str, Any], Path]:
    data = tmp_path / "data"
    (data / "2024").mkdir(parents=True)
    scan = data / "2024" / "scan_001.h5"
    scan.write_bytes(b"\0" * SIZE)
    store_tokens(tmp_path / "tokens")
    table = {"native_client_id": NATIVE_ID, "token_dir": str(tmp_path / "tokens"),
             "source_collection": SRC, "source_path": "/beamline/data",
             "compute_collection": CMP, "compute_path": "/~/ptycho",
             "compute_local_path": "/home/u/ptycho",
             "edge_collection": EDGE, "edge_path": "/models", "edge_local_path": "/opt/edge/models",
             "poll_s": 0, "backoff_s": 0, "retries": 1, "max_faults": 2}
    return IocSettings(data_root=str(data), work_root=str(tmp_path / "work")), table, scan


class Recorder:
    """The Reporter's queue: keeps every report; raises Abort after ``abort_after`` of them."""

    def __init__(self, cancel: threading.Event, abort_after: int = 0) -> None:
        self.items: list[dict[str, Any]] = []
        self.cancel, self.abort_after = cancel, abort_after

    def put(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        if self.abort_after and len(self.items) >= self.abort_after:
            self.cancel.set()


def reporter(abort_after: int = 0) -> tuple[Reporter, Recorder]:
    cancel = threading.Event()
    rec = Recorder(cancel, abort_after)
    return Reporter("transfer", rec, cancel), rec


def collections(*cids: str) -> None:
    for cid in cids:
        collection(cid)


def collection(cid: str, **fields: Any) -> None:
    RegisteredResponse(service="transfer", path=f"/v0.10/endpoint/{cid}",
                       json={"DATA_TYPE": "endpoint", "id": cid, "display_name": f"c-{cid[:2]}",
                             "is_globus_connect": False, "gcp_connected": None,
                             "gcp_paused": None, "non_functional": False, **fields}).add()


def submitted(*task_ids: str) -> None:
    load_response("transfer.get_submission_id")
    for tid in task_ids:
        RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer",
                           json={"DATA_TYPE": "transfer_result", "code": "Accepted",
                                 "task_id": tid, "submission_id": "s"}).add()


def task(tid: str, status: str, **fields: Any) -> None:
    RegisteredResponse(service="transfer", path=f"/v0.10/task/{tid}",
                       json={"DATA_TYPE": "task", "task_id": tid, "status": status,
                             "bytes_transferred": 0, "effective_bytes_per_second": 0,
                             "faults": 0, "files": 1, "files_skipped": 0, "nice_status": "OK",
                             "subtasks_total": 1, "subtasks_succeeded": 0, **fields}).add()


def error_event(tid: str, code: str, description: str) -> None:
    RegisteredResponse(service="transfer", path=f"/v0.10/task/{tid}/event_list",
                       json={"DATA_TYPE": "event_list", "DATA": [
                           {"DATA_TYPE": "event", "code": code, "is_error": True,
                            "description": description, "details": "", "time": "t"}]}).add()


def test_scan_goes_to_the_run_folder_with_checksums_and_reports_progress(
        site: Any, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1)
    task(T1, "ACTIVE", bytes_transferred=SIZE // 2, effective_bytes_per_second=2_500_000)
    task(T1, "SUCCEEDED", bytes_transferred=SIZE, effective_bytes_per_second=4_000_000)
    progress, rec = reporter()
    moved = GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", progress)
    assert (moved.path, moved.bytes, moved.skipped) == (
        "/home/u/ptycho/runs/run-7/transfer/scan_001.h5", SIZE, False)
    body = json.loads(requests_to(offline, "POST", "/v0.10/transfer")[0].body)
    assert (body["source_endpoint"], body["destination_endpoint"]) == (SRC, CMP)
    assert (body["sync_level"], body["verify_checksum"]) == (3, True)  # 3: "checksum"
    assert body["label"] == "ptychoflow scan scan_001.h5 run run-7"
    assert [(d["source_path"], d["destination_path"]) for d in body["DATA"]] == [
        ("/beamline/data/2024/scan_001.h5", "/~/ptycho/runs/run-7/transfer/scan_001.h5")]
    assert "deadline" in body
    assert [(r["fraction"], r["rate_mb_s"]) for r in rec.items] == [(0.5, 2.5), (1.0, 4.0)]
    assert rec.items[0]["message"] == f"task {T1} ACTIVE, 0.5 MB"


def test_a_fault_is_shown_with_its_cause_while_globus_retries_it(site: Any) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1)
    task(T1, "ACTIVE", faults=1, nice_status="CONNECTION_FAILED",
         nice_status_short_description="Connection failed")
    error_event(T1, "CONNECTION_FAILED", "the remote server closed the connection")
    task(T1, "SUCCEEDED", bytes_transferred=SIZE, faults=1)
    progress, rec = reporter()
    GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", progress)
    assert rec.items[0]["message"] == (
        f"task {T1} ACTIVE, 0.0 MB, CONNECTION_FAILED: Connection failed, 1 fault(s), last "
        "CONNECTION_FAILED: the remote server closed the connection")


def test_a_failed_task_is_submitted_again_and_the_retry_succeeds(
        site: Any, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1, T2)
    task(T1, "FAILED", fatal_error={"code": "PERMISSION_DENIED",
                                    "description": "quota exceeded on /~/ptycho"})
    task(T2, "SUCCEEDED", bytes_transferred=SIZE)
    progress, rec = reporter()
    moved = GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", progress)
    assert moved.path == "/home/u/ptycho/runs/run-7/transfer/scan_001.h5"
    assert len(requests_to(offline, "POST", "/v0.10/transfer")) == 2
    assert rec.items[0]["message"] == (f"task {T1}: FAILED: quota exceeded on /~/ptycho; "
                                       "retrying in 0 s (attempt 2 of 2)")


def test_a_task_that_fails_for_good_names_every_task_tried(site: Any) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1, T2)
    task(T1, "FAILED", fatal_error={"code": "NOT_FOUND", "description": "no such file"})
    task(T2, "FAILED", fatal_error={"code": "NOT_FOUND", "description": "no such file"})
    with pytest.raises(TransferError) as info:
        GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", reporter()[0])
    assert str(info.value) == (
        f"Globus transfer of scan scan_001.h5 run run-7 failed after 2 attempt(s) "
        f"(tasks {T1}, {T2}): task {T2}: FAILED: no such file")


def test_a_task_with_too_many_faults_is_cancelled_and_counted_failed(
        site: Any, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1)
    task(T1, "ACTIVE", faults=3)
    error_event(T1, "ENDPOINT_ERROR", "disk full")
    RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{T1}/cancel",
                       json={"code": "Canceled"}).add()
    with pytest.raises(TransferError, match=f"task {T1}: 3 faults, more than max_faults = 2; "
                                            "cancelled. Last: ENDPOINT_ERROR: disk full"):
        GlobusTransfer(settings, {**table, "retries": 0}).scan_to_compute(
            scan, "run-7", reporter()[0])
    assert len(requests_to(offline, "POST", f"/v0.10/task/{T1}/cancel")) == 1


def test_abort_cancels_the_globus_task(site: Any, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1)
    task(T1, "ACTIVE", bytes_transferred=10)
    RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{T1}/cancel",
                       json={"code": "Canceled"}).add()
    progress, rec = reporter(abort_after=1)
    with pytest.raises(Cancelled):
        GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", progress)
    last = get_last_request()
    assert last is not None and str(last.url).endswith(f"/v0.10/task/{T1}/cancel")
    assert len(requests_to(offline, "POST", "/v0.10/transfer")) == 1  # not submitted again


def test_an_offline_collection_is_reported_by_check_and_before_a_send(
        site: Any, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collection(SRC)
    collection(CMP, is_globus_connect=True, gcp_connected=False, display_name="hpc-gcp")
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{SRC}/ls",
                       json={"DATA_TYPE": "file_list", "DATA": []}).add()
    expected = (f"the compute collection hpc-gcp ({CMP}, compute_collection in "
                "[transfer.globus]) is offline: its Globus Connect Personal is not running")
    transfer = GlobusTransfer(settings, table)
    with pytest.raises(TransferError) as info:
        transfer.check()
    assert str(info.value) == expected
    with pytest.raises(TransferError) as info:
        transfer.scan_to_compute(scan, "run-7", reporter()[0])
    assert str(info.value) == expected
    assert requests_to(offline, "POST", "/v0.10/transfer") == []


def test_a_folder_the_collection_cannot_list_fails_check_with_the_key_to_fix(site: Any) -> None:
    settings, table, _ = site
    collection(SRC)
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{SRC}/ls",
                       status=404, json={"code": "ClientError.NotFound",
                                         "message": "Directory '/beamline/data' not found"}).add()
    with pytest.raises(TransferError) as info:
        GlobusTransfer(settings, table).check()
    assert str(info.value) == (
        "Globus Transfer refused a listing of /beamline/data on the beamline collection: 404 "
        "ClientError.NotFound: Directory '/beamline/data' not found (is the beamline collection "
        "online, and does /beamline/data exist in it? check source_collection in "
        "[transfer.globus])")


def test_without_a_login_the_transfer_fails_saying_run_ptychoflow_login(
        site: Any, tmp_path: Path, offline: responses.RequestsMock) -> None:
    settings, table, scan = site
    collection(SRC)
    empty = {**table, "token_dir": str(tmp_path / "no-tokens")}
    with pytest.raises(TransferError, match="run `ptychoflow login`"):
        GlobusTransfer(settings, empty).check()
    with pytest.raises(TransferError, match="run `ptychoflow login`"):
        GlobusTransfer(settings, empty).scan_to_compute(scan, "run-7", reporter()[0])
    assert len(offline.calls) == 0


def test_model_and_card_go_to_the_edge_folder_as_the_edge_sees_it(
        site: Any, offline: responses.RequestsMock) -> None:
    settings, table, _ = site
    collections(CMP, EDGE)
    submitted(T1)
    task(T1, "SUCCEEDED", bytes_transferred=4608, subtasks_total=2, subtasks_succeeded=2)
    for size in (4096, 512):
        RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{EDGE}/stat",
                           json={"DATA_TYPE": "file", "type": "file", "size": size}).add()
    files = ["/home/u/ptycho/models/model-v3.onnx", "/home/u/ptycho/models/model-v3.json"]
    moved = GlobusTransfer(settings, table).model_to_edge(files, reporter()[0])
    assert [(m.path, m.bytes) for m in moved] == [("/opt/edge/models/model-v3.onnx", 4096),
                                                  ("/opt/edge/models/model-v3.json", 512)]
    body = json.loads(requests_to(offline, "POST", "/v0.10/transfer")[0].body)
    assert (body["source_endpoint"], body["destination_endpoint"]) == (CMP, EDGE)
    assert [(d["source_path"], d["destination_path"]) for d in body["DATA"]] == [
        ("/~/ptycho/models/model-v3.onnx", "/models/model-v3.onnx"),
        ("/~/ptycho/models/model-v3.json", "/models/model-v3.json")]


def test_an_identical_scan_already_there_is_skipped(site: Any) -> None:
    settings, table, scan = site
    collections(SRC, CMP)
    submitted(T1)
    task(T1, "SUCCEEDED", files_skipped=1)
    moved = GlobusTransfer(settings, table).scan_to_compute(scan, "run-7", reporter()[0])
    assert moved.skipped is True and moved.rate_mb_s == 0.0


def test_unconfigured_globus_names_the_section_to_fill(site: Any) -> None:
    settings, table, _ = site
    with pytest.raises(BackendNotConfigured) as info:
        GlobusTransfer(settings, None).check()
    assert "Globus is not configured" in str(info.value)
    assert "[transfer.globus]" in str(info.value)
    with pytest.raises(BackendNotConfigured, match="set compute_path in \\[transfer.globus\\]"):
        GlobusTransfer(settings, {k: v for k, v in table.items() if k != "compute_path"}).check()


def test_bad_keys_and_values_are_refused_at_construction(site: Any) -> None:
    settings, table, _ = site
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sorce_path'\] in "
                                          r"\[transfer.globus\]"):
        GlobusTransfer(settings, {**table, "sorce_path": "/x"})
    with pytest.raises(ConfigError, match="edge_path = 'models' in \\[transfer.globus\\] must be "
                                          "an absolute collection path"):
        GlobusTransfer(settings, {**table, "edge_path": "models"})


def test_a_scan_outside_the_data_root_is_refused(site: Any, tmp_path: Path) -> None:
    settings, table, _ = site
    stray = tmp_path / "elsewhere.h5"
    stray.write_bytes(b"x")
    with pytest.raises(TransferError, match="is outside the data root"):
        GlobusTransfer(settings, table).scan_to_compute(stray, "run-7", reporter()[0])

