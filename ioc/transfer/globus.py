"""Globus Transfer: scans from the beamline collection to the compute site's, models to the edge's.

Every transfer is one Globus task with ``sync_level="checksum"`` and
``verify_checksum=True`` (an identical file already there is skipped; a
corrupted one is sent again), and a deadline of ``timeout_s``. The task is
followed with ``get_task`` rather than ``task_wait``, so its bytes, rate and
faults reach the Reporter (``Transfer:Rate_RBV``, ``Workflow:Message_RBV``) and
Abort cancels it (``cancel_task``). A task that FAILS, or that piles up more
than ``max_faults`` faults (Globus retries faults by itself, for ever if let),
is counted failed and submitted anew after ``backoff_s``, doubling, up to
``retries`` times; then :class:`TransferError` names the task ids.

Offline collections: the Transfer API tells only a Globus Connect Personal
collection's state (``gcp_connected`` / ``gcp_paused`` of ``get_endpoint``); a
Globus Connect Server collection that is down shows as a failing
``operation_ls``. So ``check()`` reads both for every configured collection, and
each send reads ``get_endpoint`` of its two collections first, so a task is never
left waiting on a collection that is not there. A task that waits anyway reports
the task's ``nice_status`` (``GC_NOT_CONNECTED``, ``PAUSED``...) in its message.

Globus writes in place, so a cancelled model transfer may leave part of a file
in the edge's folder; the edge never loads it, because it checks every model
against the sha256 of its card.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ptychoflow.config import ConfigError, resolve, setting
from ptychoflow.ioc.compute.base import BackendNotConfigured
from ptychoflow.ioc.globus_auth import AuthSettings, CredentialsError, credentials_needed
from ptychoflow.ioc.transfer.base import Moved, TransferError
from ptychoflow.pvnames import CONTROL
from ptychoflow.stages import Cancelled, Reporter

if TYPE_CHECKING:
    from globus_sdk import TransferClient

SECTION = "transfer.globus"
log = logging.getLogger(__name__)
REQUIRED = ("source_collection", "source_path", "compute_collection", "compute_path")


@dataclass
class GlobusTransferSettings(AuthSettings):
    """The ``[transfer.globus]`` table: the three collections and where our folders are in them."""

    source_collection: str = setting("", "id of the beamline's collection holding data_root")
    source_path: str = setting("", "data_root's path inside source_collection, e.g. /data")
    compute_collection: str = setting("", "id of the compute site's collection")
    compute_path: str = setting("", "the work folder's path inside compute_collection; a run's "
                                    "scan goes to <compute_path>/runs/<run>/transfer/")
    compute_local_path: str = setting("", "the same folder as compute workers open it "
                                          "(default: compute_path)")
    edge_collection: str = setting("", "id of the edge device's collection")
    edge_path: str = setting("", "the edge's model folder inside edge_collection")
    edge_local_path: str = setting("", "the same folder as the edge opens it "
                                       "(default: edge_path)")
    data_access: list[str] = setting([], "collections (GCS v5 mapped collections) that need "
                                         "a data_access consent; `ptychoflow login` asks for it")
    poll_s: float = setting(2.0, "how often a task's progress is read (s)")
    timeout_s: float = setting(3600.0, "deadline of each transfer task (s)")
    retries: int = setting(2, "how many times a failed task is submitted again")
    backoff_s: float = setting(10.0, "wait before the first retry (s); doubles each time")
    max_faults: int = setting(10, "faults one task may have before it is cancelled and "
                                  "counted failed")
    label: str = setting("ptychoflow", "start of every task's label (shown in the Globus app)")

    def __post_init__(self) -> None:
        if self.poll_s < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ConfigError("poll_s and backoff_s must be >= 0 and timeout_s > 0")
        if self.retries < 0 or self.max_faults < 0:
            raise ConfigError("retries and max_faults must be >= 0")
        for name in ("source_path", "compute_path", "edge_path"):
            value = getattr(self, name)
            if value and not value.startswith("/"):
                raise ConfigError(f"{name} = {value!r} in [{SECTION}] must be an absolute "
                                  "collection path, e.g. /data or /~/ptychoflow")
        self.compute_local_path = self.compute_local_path or self.compute_path
        self.edge_local_path = self.edge_local_path or self.edge_path

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> GlobusTransferSettings:
        """Settings from the TOML table; unknown keys and bad values raise :class:`ConfigError`."""
        return resolve(cls, SECTION, None, {SECTION: table})

    def missing(self) -> list[str]:
        """Required keys left empty."""
        return [name for name in REQUIRED if not getattr(self, name)]


class _Failed(Exception):
    """One task that did not succeed; another attempt may."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(task_id, reason)  # both in args: it pickles, as every error here

    def __str__(self) -> str:
        return f"task {self.args[0]}: {self.args[1]}"


def _collection_problem(doc: Any) -> str | None:
    """Why a collection (a ``get_endpoint`` document) cannot move data now, if it cannot."""
    if doc.get("non_functional"):
        return "is a Globus Connect Server endpoint, not a collection; give a collection's id"
    if doc.get("is_globus_connect") and doc.get("gcp_connected") is False:
        return "is offline: its Globus Connect Personal is not running"
    if doc.get("gcp_paused"):
        return "is paused: resume its Globus Connect Personal"
    return None


class GlobusTransfer:
    """Transfers through globus-sdk's ``TransferClient``, on the stored credentials."""

    name = "Globus"
    section = SECTION

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None:
        self.settings = settings
        self.cfg = None if table is None else GlobusTransferSettings.from_table(table)
        self._client: TransferClient | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _configured(self) -> GlobusTransferSettings:
        if self.cfg is None:
            raise BackendNotConfigured(
                f"Globus is not configured: add a [{SECTION}] table to the configuration "
                f"with {', '.join(REQUIRED)} (see `ptychoflow ioc --help`), or choose "
                f"{CONTROL.transfer_backend.suffix} Local")
        if missing := self.cfg.missing():
            raise BackendNotConfigured(f"Globus is not configured: set {', '.join(missing)} "
                                       f"in [{SECTION}]")
        return self.cfg

    @contextmanager
    def _api(self, what: str) -> Iterator[TransferClient]:
        """The client, one call at a time (a GlobusApp is not thread safe), errors explained."""
        from globus_sdk import GlobusAPIError

        cfg = self._configured()
        try:
            with self._lock, credentials_needed(f"Globus Transfer ({what})"):
                if self._client is None:
                    from ptychoflow.ioc.globus_auth import transfer_client

                    self._client = transfer_client(cfg, cfg.data_access)
                yield self._client
        except CredentialsError as exc:
            raise TransferError(str(exc)) from exc
        except GlobusAPIError as exc:
            if exc.http_status >= 500 or exc.http_status == 429:
                raise  # the service's trouble: a later attempt may succeed
            raise TransferError(f"Globus Transfer refused {what}: {exc.http_status} "
                                f"{exc.code}: {exc.message}") from exc

    def _collection_ok(self, role: str, collection: str, key: str) -> None:
        with self._api(f"get_endpoint of the {role} collection") as tc:
            doc = tc.get_endpoint(collection)
        problem = _collection_problem(doc)
        if problem:
            name = doc.get("display_name") or doc.get("canonical_name") or collection
            raise TransferError(f"the {role} collection {name} ({collection}, {key} in "
                                f"[{SECTION}]) {problem}")

    def _collections(self) -> list[tuple[str, str, str, str]]:
        cfg = self._configured()
        out = [("beamline", cfg.source_collection, "source_collection", cfg.source_path),
               ("compute", cfg.compute_collection, "compute_collection", cfg.compute_path)]
        if cfg.edge_collection:
            out.append(("edge", cfg.edge_collection, "edge_collection", cfg.edge_path))
        return out

    # -- the protocol -----------------------------------------------------------------------

    @property
    def compute_work(self) -> str:
        """The work folder as compute workers open it (``compute_local_path``)."""
        return str(self.cfg.compute_local_path) if self.cfg else str(self.settings.work_path)

    def check(self) -> None:
        """Credentials work and every collection is up and shows its folder."""
        for role, collection, key, path in self._collections():
            self._collection_ok(role, collection, key)
            try:
                with self._api(f"a listing of {path} on the {role} collection") as tc:
                    tc.operation_ls(collection, path=path, limit=1)
            except TransferError as exc:
                raise TransferError(f"{exc} (is the {role} collection online, and does {path} "
                                    f"exist in it? check {key} in [{SECTION}])") from exc

    def scan_to_compute(self, scan: Path, run_name: str, progress: Reporter) -> Moved:
        """Send one scan to ``<compute_path>/runs/<run>/transfer/`` and wait for it."""
        cfg = self._configured()
        src = Path(scan).resolve()
        try:
            rel = src.relative_to(self.settings.data_path)
        except ValueError:
            raise TransferError(f"scan {src} is outside the data root "
                                f"{self.settings.data_path}; set data_root in [ioc]") from None
        tail = PurePosixPath("runs", run_name, "transfer", src.name)
        item = (str(PurePosixPath(cfg.source_path, *rel.parts)),
                str(PurePosixPath(cfg.compute_path) / tail))
        self._collection_ok("beamline", cfg.source_collection, "source_collection")
        self._collection_ok("compute", cfg.compute_collection, "compute_collection")
        size = src.stat().st_size
        t0 = time.monotonic()
        task = self._send(cfg.source_collection, cfg.compute_collection, [item],
                          f"scan {src.name} run {run_name}", progress, size)
        return Moved(str(PurePosixPath(cfg.compute_local_path) / tail), size,
                     time.monotonic() - t0, skipped=_skipped(task, 1))

    def model_to_edge(self, files: Sequence[str], progress: Reporter) -> list[Moved]:
        """Send a model and its card from the compute site to the edge's model folder."""
        cfg = self._configured()
        if not (cfg.edge_collection and cfg.edge_path):
            raise TransferError(f"models cannot reach the edge: set edge_collection and "
                                f"edge_path in [{SECTION}]")
        items = []
        for f in files:
            try:
                rel = PurePosixPath(f).relative_to(cfg.compute_local_path)
            except ValueError:
                raise TransferError(f"model file {f} is not under compute_local_path "
                                    f"{cfg.compute_local_path} of [{SECTION}]; models must be "
                                    "written inside the work folder") from None
            name = PurePosixPath(f).name
            items.append((str(PurePosixPath(cfg.compute_path) / rel),
                          str(PurePosixPath(cfg.edge_path) / name)))
        self._collection_ok("compute", cfg.compute_collection, "compute_collection")
        self._collection_ok("edge", cfg.edge_collection, "edge_collection")
        t0 = time.monotonic()
        task = self._send(cfg.compute_collection, cfg.edge_collection, items,
                          f"model {PurePosixPath(files[0]).name}", progress, None)
        seconds = time.monotonic() - t0
        skipped = _skipped(task, len(items))
        moved = []
        for _, dest in items:
            with self._api(f"a stat of {dest} on the edge collection") as tc:
                size = int(tc.operation_stat(cfg.edge_collection, dest).get("size") or 0)
            moved.append(Moved(str(PurePosixPath(cfg.edge_local_path) / PurePosixPath(dest).name),
                               size, seconds, skipped=skipped))
        return moved

    def close(self) -> None:
        """Drop the client (and its app's token storage)."""
        with self._lock:
            client, self._client = self._client, None
        app = getattr(client, "app", None) if client is not None else None
        if app is not None:
            app.close()

    # -- one transfer, with retries -----------------------------------------------------------

    def _send(self, source: str, dest: str, items: list[tuple[str, str]], what: str,
              progress: Reporter, size: int | None) -> Any:
        """Submit, follow and retry one transfer; the SUCCEEDED task document."""
        from globus_sdk import GlobusAPIError, NetworkError, TransferData

        cfg = self._configured()
        tried: list[str] = []
        last = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                delay = cfg.backoff_s * 2 ** (attempt - 1)
                progress(None, f"{last}; retrying in {delay:g} s "
                               f"(attempt {attempt + 1} of {cfg.retries + 1})")
                self._wait(delay, progress)
            data = TransferData(source, dest, label=_label(f"{cfg.label} {what}"),
                                sync_level="checksum", verify_checksum=True,
                                deadline=datetime.now(UTC) + timedelta(seconds=cfg.timeout_s))
            for src_path, dest_path in items:
                data.add_item(src_path, dest_path)
            try:
                with self._api(f"the transfer of {what}") as tc:
                    task_id = str(tc.submit_transfer(data)["task_id"])
            except (GlobusAPIError, NetworkError) as exc:
                last = f"submitting the transfer of {what} failed ({exc})"
                continue
            tried.append(task_id)
            try:
                return self._follow(task_id, progress, size)
            except _Failed as exc:
                last = str(exc)
        ids = ", ".join(tried) or "none submitted"
        raise TransferError(f"Globus transfer of {what} failed after {cfg.retries + 1} "
                            f"attempt(s) (tasks {ids}): {last}")

    def _follow(self, task_id: str, progress: Reporter, size: int | None) -> Any:
        from globus_sdk import GlobusAPIError, NetworkError

        cfg = self._configured()
        seen_faults = unreachable = 0
        fault_text = ""
        while True:
            try:
                progress.check()
                try:
                    with self._api(f"the status of task {task_id}") as tc:
                        task = tc.get_task(task_id)
                    unreachable = 0
                except (GlobusAPIError, NetworkError) as exc:
                    unreachable += 1
                    if unreachable > cfg.max_faults:
                        self._cancel(task_id)
                        raise _Failed(task_id, f"Globus Transfer unreachable ({exc})") from exc
                    progress(None, f"task {task_id}: Globus Transfer unreachable ({exc}); "
                                   "still waiting")
                    time.sleep(cfg.poll_s)
                    continue
                status = task["status"]
                if status == "SUCCEEDED":
                    progress(1.0, f"task {task_id} done",
                             rate_mb_s=float(task.get("effective_bytes_per_second") or 0) / 1e6)
                    return task
                if status == "FAILED":
                    fatal = task.get("fatal_error") or {}
                    reason = fatal.get("description") or fatal.get("code") or fault_text
                    raise _Failed(task_id, f"FAILED: {reason or task.get('nice_status')}")
                faults = int(task.get("faults") or 0)
                if faults > seen_faults:
                    seen_faults, fault_text = faults, self._last_error(task_id)
                if faults > cfg.max_faults:
                    self._cancel(task_id)
                    raise _Failed(task_id, f"{faults} faults, more than max_faults = "
                                           f"{cfg.max_faults}; cancelled. Last: {fault_text}")
                progress(_fraction(task, size), _message(task_id, task, fault_text),
                         rate_mb_s=float(task.get("effective_bytes_per_second") or 0) / 1e6)
            except Cancelled:
                self._cancel(task_id)
                raise
            time.sleep(cfg.poll_s)

    def _last_error(self, task_id: str) -> str:
        with self._api(f"the events of task {task_id}") as tc:
            events = list(tc.task_event_list(task_id, limit=1,
                                             query_params={"filter": "is_error:1"}))
        if not events:
            return ""
        ev = events[0]
        return f"{ev.get('code', '')}: {ev.get('description', '')} {ev.get('details', '')}".strip()

    def _cancel(self, task_id: str) -> None:
        """Cancel a task, best effort: one that just ended or is unreachable is left be."""
        from globus_sdk import GlobusAPIError, NetworkError

        try:
            with self._api(f"the cancel of task {task_id}") as tc:
                tc.cancel_task(task_id)
        except (TransferError, GlobusAPIError, NetworkError) as exc:
            log.warning("could not cancel Globus task %s: %s", task_id, exc)

    def _wait(self, seconds: float, progress: Reporter) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            progress.check()
            time.sleep(min(left, 0.5))
        progress.check()


def _label(text: str) -> str:
    """A label the Transfer API accepts: letters, digits, space and ``-_,.``, 128 at most."""
    return re.sub(r"[^\w ,.\-]", "_", text)[:128]


def _skipped(task: Any, n: int) -> bool:
    """Whether every file was already there, identical (``sync_level=checksum``)."""
    return int(task.get("files_skipped") or 0) >= n and not task.get("bytes_transferred")


def _fraction(task: Any, size: int | None) -> float | None:
    if size:
        return min(1.0, int(task.get("bytes_transferred") or 0) / size)
    total = int(task.get("subtasks_total") or 0)
    done = int(task.get("subtasks_succeeded") or 0) + int(task.get("subtasks_skipped") or 0)
    return done / total if total else None


def _message(task_id: str, task: Any, fault_text: str) -> str:
    parts = [f"task {task_id} {task['status']}",
             f"{int(task.get('bytes_transferred') or 0) / 1e6:.1f} MB"]
    nice = task.get("nice_status")
    if nice and nice not in ("OK", "Queued"):
        parts.append(f"{nice}: {task.get('nice_status_short_description') or ''}".rstrip(": "))
    if task.get("faults"):
        parts.append(f"{task['faults']} fault(s), last {fault_text}")
    return ", ".join(parts)

