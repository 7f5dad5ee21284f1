"""Stages on a Globus Compute endpoint (the successor of funcX), driven through its HTTP API.

Built on ``globus_compute_sdk.Client`` rather than its ``Executor``: the
Executor learns results over an AMQP channel, which can neither be reached from
behind some beamline firewalls nor exercised offline, while the Client does all
of it over HTTPS — register a function, submit a batch, read a task's state —
so the tests drive exactly the calls that run in production. The price is
polling: one ``get_task`` per running stage every ``poll_s``, which for a
handful of stages that each run for minutes is nothing.

``ptychoflow.stages.run_stage`` is registered once per SDK and Python version
(the id is cached in ``<work>/globus_compute_functions.json`` and in memory)
and every stage is a call of it with the stage function as an argument, so a
new stage needs no new registration. The endpoint must have ptychoflow
installed, because functions travel by reference.

Globus Compute offers no way to stop a task once it runs: an aborted stage runs
to its end on the endpoint and its result is dropped. Stages get no Reporter
(``shares_files = False``); the orchestrator shows progress per stage.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptychoflow.config import ConfigError, resolve, setting
from ptychoflow.ioc.compute.base import BackendNotConfigured, WorkerLost
from ptychoflow.ioc.globus_auth import AuthSettings, CredentialsError, credentials_needed
from ptychoflow.pvnames import CONTROL
from ptychoflow.stages import Reporter, StageFn, run_stage

if TYPE_CHECKING:
    from globus_compute_sdk import Client

log = logging.getLogger(__name__)
SECTION = "compute.globus_compute"
FUNCTION_CACHE = "globus_compute_functions.json"


@dataclass
class GlobusComputeSettings(AuthSettings):
    """The ``[compute.globus_compute]`` table."""

    endpoint_id: str = setting("", "id of the Globus Compute endpoint the stages run on")
    workers: int = setting(1, "how many stages may run at once on the endpoint")
    poll_s: float = setting(2.0, "how often the state of running tasks (with via_flows: of "
                                 "the flow run) is read (s)")
    max_poll_errors: int = setting(30, "reads of a task's state that may fail in a row before "
                                       "its stage is given up")
    user_endpoint_config: dict[str, Any] = setting({}, "values for a multi-user endpoint's "
                                                       "template (account, partition, ...)")
    resource_specification: dict[str, Any] = setting({}, "resources of each task (MPI "
                                                         "endpoints: num_nodes, ...)")
    via_flows: bool = setting(False, "hand each run to Globus Flows (the loop of `ptychoflow "
                                     "flow export`) instead of driving its stages from the IOC; "
                                     f"needs {CONTROL.transfer_backend.suffix} Globus with "
                                     "edge_collection and edge_path in [transfer.globus]")

    def __post_init__(self) -> None:
        if self.workers < 1 or self.poll_s < 0 or self.max_poll_errors < 0:
            raise ConfigError(f"workers must be >= 1, poll_s and max_poll_errors >= 0 in "
                              f"[{SECTION}]")

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> GlobusComputeSettings:
        """Settings from the TOML table; unknown keys and bad values raise :class:`ConfigError`."""
        return resolve(cls, SECTION, None, {SECTION: table})


def function_key(fn: Callable[..., Any]) -> str:
    """What a registration depends on: the function's name, the SDK and Python versions."""
    from globus_compute_sdk import __version__

    py = ".".join(platform.python_version_tuple()[:2])
    return f"{fn.__module__}.{fn.__qualname__} sdk={__version__} py={py}"


def register_once(client: Client, fn: Callable[..., Any], cache: Path | None) -> str:
    """The function id of ``fn``: from ``cache`` (a JSON file) if there, else registered now."""
    key = function_key(fn)
    known: dict[str, str] = {}
    if cache is not None and cache.exists():
        try:
            known = dict(json.loads(cache.read_text()))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable function cache %s", cache)
    if key in known:
        return known[key]
    with credentials_needed(f"Globus Compute (registering {fn.__qualname__})"):
        function_id = str(client.register_function(fn))
    log.info("registered %s on Globus Compute as %s", key, function_id)
    if cache is not None:
        known[key] = function_id
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".part")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
    return function_id


class GlobusCompute:
    """Stages as tasks of ``run_stage`` on one Globus Compute endpoint."""

    name = "GlobusCompute"
    section = SECTION
    shares_files = False

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None:
        self.settings = settings
        self.cfg = None if table is None else GlobusComputeSettings.from_table(table)
        self.workers = self.cfg.workers if self.cfg is not None else 1
        self.via_flows = bool(self.cfg is not None and self.cfg.via_flows)
        """Runs on this back end go to :class:`~ptychoflow.ioc.flowrun.FlowRunner` whole."""
        self._client: Client | None = None
        self._function_id: str | None = None
        self._tasks: dict[str, cf.Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _configured(self) -> GlobusComputeSettings:
        if self.cfg is None or not self.cfg.endpoint_id:
            raise BackendNotConfigured(
                f"GlobusCompute is not configured: add a [{SECTION}] table with endpoint_id "
                "(the id `globus-compute-endpoint list` shows on the compute site) to the "
                f"configuration, or choose {CONTROL.compute_backend.suffix} Local")
        return self.cfg

    def _gc(self) -> Client:
        if self._client is None:
            from globus_compute_sdk import Client

            from ptychoflow.ioc.globus_auth import compute_app

            cfg = self._configured()
            with credentials_needed("Globus Compute"):
                self._client = Client(app=compute_app(cfg), do_version_check=False)
        return self._client

    def check(self) -> None:
        """The endpoint is known, reachable with our credentials, and online."""
        from globus_sdk import GlobusAPIError

        cfg = self._configured()
        try:
            with credentials_needed("Globus Compute (endpoint status)"):
                state = self._gc().get_endpoint_status(cfg.endpoint_id).get("status")
        except CredentialsError as exc:
            raise BackendNotConfigured(str(exc)) from exc
        except GlobusAPIError as exc:
            raise BackendNotConfigured(
                f"Globus Compute endpoint {cfg.endpoint_id}: {exc.http_status} {exc.code}: "
                f"{exc.message}; check endpoint_id in [{SECTION}]") from exc
        if state != "online":
            raise BackendNotConfigured(
                f"Globus Compute endpoint {cfg.endpoint_id} is {state}: start it on the compute "
                "site (`globus-compute-endpoint start <name>`), or choose "
                f"{CONTROL.compute_backend.suffix} Local")

    def start(self) -> None:
        """Register ``run_stage`` (once) and start the thread that reads task states."""
        with self._lock:
            if self._function_id is None:
                cache = Path(self.settings.work_path) / FUNCTION_CACHE
                try:
                    self._function_id = register_once(self._gc(), run_stage, cache)
                except CredentialsError as exc:
                    raise BackendNotConfigured(str(exc)) from exc
            if self._poller is None:
                self._stop.clear()
                self._poller = threading.Thread(target=self._poll, name="globus-compute-poll",
                                                daemon=True)
                self._poller.start()

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter | None) -> cf.Future[dict[str, Any]]:
        """Submit ``run_stage(fn, ...)`` as a task; the future resolves when a poll sees it end."""
        from globus_sdk import GlobusAPIError

        self.start()
        cfg = self._configured()
        gc = self._gc()
        batch = gc.create_batch(user_endpoint_config=cfg.user_endpoint_config or None,
                                resource_specification=cfg.resource_specification or None)
        batch.add(self._function_id or "", args=(fn, scan_path, workdir, params, None))
        try:
            with credentials_needed("Globus Compute (submitting a task)"):
                reply = gc.batch_run(cfg.endpoint_id, batch)
        except GlobusAPIError as exc:
            hint = (f"; if function {self._function_id} was deleted, remove "
                    f"{Path(self.settings.work_path) / FUNCTION_CACHE}" if exc.http_status in
                    (403, 404) else "")
            raise RuntimeError(f"Globus Compute refused the task: {exc.http_status} {exc.code}: "
                               f"{exc.message}{hint}") from exc
        tasks = reply["tasks"]
        assert isinstance(tasks, dict)
        task_id = str(tasks[self._function_id][0])
        future: cf.Future[dict[str, Any]] = cf.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._tasks[task_id] = future
        log.info("stage %s submitted to Globus Compute as task %s",
                 getattr(fn, "__name__", fn), task_id)
        self._wake.set()
        return future

    def is_worker_lost(self, exc: BaseException) -> bool:
        """A lost worker or manager on the endpoint (the SDK reports Parsl's WorkerLost)."""
        if isinstance(exc, WorkerLost):
            return True
        from globus_compute_sdk.errors import TaskExecutionFailed

        if isinstance(exc, TaskExecutionFailed):
            text = exc.remote_data
            return bool(TaskExecutionFailed.WORKER_LOST_REGEX.search(text)) or \
                "ManagerLost" in text
        return False

    def shutdown(self) -> None:
        """Stop polling; stages still running on the endpoint are left to finish unheard."""
        self._stop.set()
        self._wake.set()
        if self._poller is not None:
            self._poller.join(5)
            self._poller = None
        with self._lock:
            left, self._tasks = self._tasks, {}
        for task_id, future in left.items():
            future.set_exception(RuntimeError(
                f"the IOC stopped while Globus Compute task {task_id} ran; its result is "
                "not collected"))
        client, self._client = self._client, None
        app = getattr(client, "app", None)
        if app is not None:
            app.close()

    # -- the poller -----------------------------------------------------------------------

    def _poll(self) -> None:
        cfg = self._configured()
        errors: dict[str, int] = {}
        while not self._stop.is_set():
            self._wake.wait(cfg.poll_s)
            self._wake.clear()
            with self._lock:
                ids = list(self._tasks)
            for task_id in ids:
                if self._stop.is_set():
                    return
                try:
                    outcome = self._outcome(task_id)
                except CredentialsError as exc:
                    outcome = exc
                except Exception as exc:  # the service or the network; try again next poll
                    errors[task_id] = errors.get(task_id, 0) + 1
                    log.warning("reading Globus Compute task %s failed (%d in a row): %s",
                                task_id, errors[task_id], exc)
                    if errors[task_id] <= cfg.max_poll_errors:
                        continue
                    outcome = RuntimeError(f"Globus Compute task {task_id}: its state could "
                                           f"not be read {errors[task_id]} times: {exc}")
                if outcome is None:
                    continue
                errors.pop(task_id, None)
                with self._lock:
                    future = self._tasks.pop(task_id, None)
                if future is None:
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _outcome(self, task_id: str) -> dict[str, Any] | BaseException | None:
        """A finished task's result or error; ``None`` while it is pending."""
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            with credentials_needed(f"Globus Compute (task {task_id})"):
                info = self._gc().get_task(task_id)
        except TaskExecutionFailed as exc:
            return exc
        if info.get("pending", True):
            return None
        if "result" in info:
            result = info["result"]
            if isinstance(result, dict):
                return result
            return TypeError(f"Globus Compute task {task_id} returned "
                             f"{type(result).__name__}, not a dict")
        reason = str(info.get("reason") or info.get("status") or "unknown")
        if "lost" in reason.lower():
            return WorkerLost(f"Globus Compute task {task_id}: {reason}")
        return RuntimeError(f"Globus Compute task {task_id} failed: {reason}")
