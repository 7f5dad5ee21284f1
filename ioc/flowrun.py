"""A whole IOC run handed to Globus Flows, and followed in the same PVs as a run driven here.

With ``via_flows = true`` in ``[compute.globus_compute]``, a run on
Compute:Backend GlobusCompute is not driven stage by stage from this host: the
loop of :mod:`ptychoflow.remote.flow` runs as one Globus Flow run, which goes on
if the beamline host's network drops, and the IOC only starts it and watches it.
The IOC's state machine still shows where the run is: the run's log (its
``ActionStarted`` / ``ActionCompleted`` entries) names the flow step that runs,
and each step maps onto the workflow state of the same work
(:data:`STEPS`), entered in order, never skipped, however coarse the polls.

The run's files land where a run driven here puts them
(``<compute_local_path>/runs/run-NNNNN/``), so both kinds of run share one
layout and one training lineage. What is shared with ``ptychoflow flow run``
(the run's input document, deploying the flow, a failure's cause) lives here too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ptychoflow.config import ConfigError
from ptychoflow.ioc.compute.base import BackendNotConfigured, table_of
from ptychoflow.ioc.compute.globus import FUNCTION_CACHE, GlobusComputeSettings, register_once
from ptychoflow.ioc.globus_auth import auth_from, credentials_needed, credentials_problem
from ptychoflow.ioc.runstate import ActiveRun, until
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.stagetable import DEPLOYING, RECONSTRUCTING, TRAINING, TRANSFERRING
from ptychoflow.ioc.transfer.globus import GlobusTransferSettings
from ptychoflow.pvnames import CONTROL
from ptychoflow.stages import Cancelled

if TYPE_CHECKING:
    from globus_sdk import FlowsClient, SpecificFlowClient

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {"TransferScan": TRANSFERRING, "Reconstruct": RECONSTRUCTING,
                         "TrainExport": TRAINING, "ModelToEdge": DEPLOYING}
"""The flow's Action states (in flow order) and the workflow state each one is."""
STEP_NAMES = tuple(STEPS)
ENDED = ("SUCCEEDED", "FAILED", "ENDED")
CONSENT_HINT = ("a consent may be missing: run `ptychoflow login` and resume the run in the "
                "Globus web app")
LOG_PAGE = 50
"""Newest log entries read per poll: four Action states write about ten in all."""


# -- shared with `ptychoflow flow run` --------------------------------------------------------

def run_input(scan: Path, run_name: str, ioc: IocSettings, tcfg: GlobusTransferSettings,
              label: str = "", params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run's input document (see :func:`~ptychoflow.remote.flow.input_schema`).

    The run folder is ``runs/<run_name>`` of the work folder, as for a run the
    IOC drives, so the scan, stage folders and model land in the same places.
    ``params`` are the stage parameters; the site's paths replace any of this
    host's (``path``, ``model_dir``, ``train_dir``). ``compute_endpoint`` and
    ``function_id`` are left for the caller, who registers the function.
    """
    scan = Path(scan).resolve()
    if not scan.is_file() or scan.name.endswith(".part"):
        raise ConfigError(f"{scan} is not a complete scan file")
    try:
        rel = scan.relative_to(ioc.data_path)
    except ValueError:
        raise ConfigError(f"scan {scan} is outside the data root {ioc.data_path}; set "
                          "data_root in [ioc]") from None
    run_dir = PurePosixPath("runs", run_name)
    local = PurePosixPath(tcfg.compute_local_path)
    there = str(local / run_dir / "transfer" / scan.name)
    stages = ioc.stages
    return {
        "label": (label or f"ptychoflow {scan.name}")[:128],
        "source_collection": tcfg.source_collection,
        "compute_collection": tcfg.compute_collection,
        "edge_collection": tcfg.edge_collection,
        "scan_source_path": str(PurePosixPath(tcfg.source_path, *rel.parts)),
        "scan_compute_path": str(PurePosixPath(tcfg.compute_path) / run_dir / "transfer" /
                                 scan.name),
        "scan_path": there,
        "workdir": str(local / run_dir),
        "params": {**(params or {}), "path": there, "model_dir": str(local / "models"),
                   "train_dir": str(local / "training")},
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


def failure_detail(doc: Any) -> str:
    """Why a flow run failed or waits, from its ``details`` (the cause a step gave, if any)."""
    details = doc.get("details") or {}
    inner = details.get("details") if isinstance(details, dict) else None
    if isinstance(inner, dict):
        cause = inner.get("cause") or inner.get("error") or inner.get("description")
        if cause:
            return str(cause)
    code = details.get("code") if isinstance(details, dict) else None
    return str(code or details or "no details")


def furthest_step(entries: list[Any]) -> str | None:
    """The latest flow step a run's log shows started (or completed), if any."""
    seen = [STEP_NAMES.index(name) for e in entries
            if e.get("code") in ("ActionStarted", "ActionCompleted")
            and (name := (e.get("details") or {}).get("state_name")) in STEPS]
    return STEP_NAMES[max(seen)] if seen else None


def step_result(output: Mapping[str, Any], step: str) -> dict[str, Any] | None:
    """What a Compute step's function returned (``$.<step>.details.result[0]``)."""
    result = ((output.get(step) or {}).get("details") or {}).get("result")
    if isinstance(result, list) and result and isinstance(result[0], dict):
        return dict(result[0])
    return None


# -- the runner ------------------------------------------------------------------------------

class FlowRunner:
    """Starts an IOC run as a Globus Flow run and follows it into the workflow states.

    Blocking SDK calls run in the loop's executor, one at a time (a GlobusApp and
    its token storage are not thread safe); the states and messages are given
    back on the loop.
    """

    def __init__(self, settings: IocSettings, tables: dict[str, Any]) -> None:
        self.settings = settings
        t_table = table_of(tables, "transfer", "globus")
        c_table = table_of(tables, "compute", "globus_compute")
        self.tcfg = None if t_table is None else GlobusTransferSettings.from_table(t_table)
        self.ccfg = None if c_table is None else GlobusComputeSettings.from_table(c_table)
        self._tables = [t_table, c_table]
        self._lock = threading.Lock()
        self._fc: FlowsClient | None = None
        self._sfc: SpecificFlowClient | None = None
        self._function_id: str | None = None

    def _configured(self) -> tuple[GlobusTransferSettings, GlobusComputeSettings]:
        tcfg, ccfg = self.tcfg, self.ccfg
        missing = ["[transfer.globus]"] if tcfg is None else tcfg.missing() + [
            k for k in ("edge_collection", "edge_path") if not getattr(tcfg, k)]
        if ccfg is None or not ccfg.endpoint_id:
            missing.append("endpoint_id")
        if missing or tcfg is None or ccfg is None:
            raise BackendNotConfigured(
                f"a run through Globus Flows (via_flows = true) needs {', '.join(missing)} in "
                "[transfer.globus] / [compute.globus_compute]; set them, or via_flows = false")
        return tcfg, ccfg

    async def run(self, run: ActiveRun, step: Callable[[str, str], None],
                  message: Callable[[str], None]) -> dict[str, Any]:
        """Run ``run`` as a flow run; its merged stage results, with ``edge_model``.

        ``step(state, message)`` is called once per workflow state, in order;
        ``message`` gets the flow run's news. FAILED or ENDED raise
        :class:`RuntimeError` with the flow's cause; Abort cancels the flow run
        and raises :class:`~ptychoflow.stages.Cancelled`.
        """
        tcfg, ccfg = self._configured()
        if run.params.get("transfer_backend") != "Globus":
            backend = CONTROL.transfer_backend.suffix
            raise BackendNotConfigured(
                f"{backend} is {run.params.get('transfer_backend')}, but a Globus Flow "
                f"moves the scan and the model with Globus Transfer: set {backend} to "
                "Globus, or via_flows = false in [compute.globus_compute]")
        body = run_input(run.scan, run.name, self.settings, tcfg,
                         f"ptychoflow run {run.id} {run.scan.name}", run.params)
        body["compute_endpoint"] = ccfg.endpoint_id
        loop = asyncio.get_running_loop()
        run_id = await loop.run_in_executor(None, self._start, body, message)
        first = STEPS[STEP_NAMES[0]]  # the flow starts with it; its log may not show it yet
        step(first, f"{first}: run {run.id}, {run.scan.name} (Globus Flow run {run_id})")
        try:
            return await self._follow(run, run_id, step, message, ccfg)
        except Cancelled:
            await loop.run_in_executor(None, self._cancel, run_id)
            raise
        except asyncio.CancelledError:
            loop.run_in_executor(None, self._cancel, run_id)
            raise

    async def _follow(self, run: ActiveRun, run_id: str, step: Callable[[str, str], None],
                      message: Callable[[str], None], ccfg: GlobusComputeSettings
                      ) -> dict[str, Any]:
        from globus_sdk import GlobusAPIError, NetworkError

        loop = asyncio.get_running_loop()
        entered, errors, last = 1, 0, "ACTIVE"
        while True:
            if run.aborting:
                raise Cancelled(f"run {run.id} aborted")
            try:
                doc, furthest = await loop.run_in_executor(None, self._look, run_id)
                errors = 0
            except (GlobusAPIError, NetworkError) as exc:
                transient = isinstance(exc, NetworkError) or exc.http_status == 429 or \
                    exc.http_status >= 500
                errors += 1
                if not transient or errors > ccfg.max_poll_errors:
                    raise RuntimeError(f"Globus Flow run {run_id}: its state could not be "
                                       f"read ({errors} time(s)): {exc}") from exc
                log.warning("reading Globus Flow run %s failed (%d in a row): %s", run_id,
                            errors, exc)
                await until(run, asyncio.sleep(ccfg.poll_s))
                continue
            if run.aborting:
                raise Cancelled(f"run {run.id} aborted")
            status = str(doc.get("status"))
            reached = len(STEP_NAMES) if status == "SUCCEEDED" else (
                STEP_NAMES.index(furthest) + 1 if furthest else entered)
            for name in STEP_NAMES[entered:reached]:  # every state between, in order
                step(STEPS[name], f"{STEPS[name]}: run {run.id}, {run.scan.name} "
                                  f"(Globus Flow step {name})")
            entered = max(entered, reached)
            state = STEPS[STEP_NAMES[entered - 1]]
            shown = doc.get("display_status") or status
            line = status if shown == status else f"{status} ({shown})"
            if line != last:
                last = line
                message(f"{state}: Globus Flow run {run_id} waits: {failure_detail(doc)} "
                        f"({CONSENT_HINT})" if status == "INACTIVE" else
                        f"{state}: Globus Flow run {run_id} {line}")
            if status == "SUCCEEDED":
                return self._results(run_id, doc)
            if status in ENDED:
                raise RuntimeError(f"Globus Flow run {run_id} {status}: {failure_detail(doc)}")
            await until(run, asyncio.sleep(ccfg.poll_s))

    def _results(self, run_id: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        tcfg, _ = self._configured()
        output = (doc.get("details") or {}).get("output") or {}
        trained = step_result(output, "TrainExport")
        if not trained or not trained.get("model"):
            raise RuntimeError(f"Globus Flow run {run_id} SUCCEEDED but its output holds no "
                               f"model from TrainExport (steps in it: {sorted(output)}); check "
                               "the export stage named in [ioc.stages]")
        results = {**(step_result(output, "Reconstruct") or {}), **trained}
        results.pop("to_edge", None)  # the flow's own transfer items, already used
        results["edge_model"] = str(PurePosixPath(tcfg.edge_local_path) /
                                    PurePosixPath(str(results["model"])).name)
        results["flow_run_id"] = run_id
        return results

    # -- blocking SDK calls (executor threads) --------------------------------------------------

    def _start(self, body: dict[str, Any], message: Callable[[str], None]) -> str:
        """Register flow_stage (once), deploy the flow (once), start a run; its id."""
        from globus_compute_sdk import Client
        from globus_sdk import GlobusAPIError

        from ptychoflow.ioc.globus_auth import compute_app, flows_client, specific_flow_client
        from ptychoflow.remote.flow import flow_stage

        tcfg, _ = self._configured()
        auth = auth_from(self._tables)
        work = self.settings.work_path
        with self._lock:
            if self._function_id is None:
                with credentials_needed("Globus Compute (registering flow_stage)"):
                    app = compute_app(auth)
                    try:
                        self._function_id = register_once(
                            Client(app=app, do_version_check=False), flow_stage,
                            work / FUNCTION_CACHE)
                    finally:
                        app.close()
            body["function_id"] = self._function_id
            with credentials_needed("Globus Flows"):
                try:
                    if self._sfc is None:
                        self._fc = flows_client(auth)
                        flow_id = deploy(self._fc, work, message)
                        self._sfc = specific_flow_client(auth, flow_id)
                        if tcfg.data_access:  # mapped collections: the run needs their consent
                            self._sfc.add_app_transfer_data_access_scope(tcfg.data_access)
                    started = self._sfc.run_flow(body, label=body["label"],
                                                 tags=["ptychoflow"])
                except GlobusAPIError as exc:
                    if credentials_problem(exc) is not None:
                        raise  # credentials_needed names the fix
                    raise RuntimeError(f"Globus Flows refused the run: {exc.http_status} "
                                       f"{exc.code}: {exc.message}") from exc
        run_id = str(started["run_id"])
        log.info("Globus Flow run %s started", run_id)
        return run_id

    def _look(self, run_id: str) -> tuple[dict[str, Any], str | None]:
        """The run's document and the furthest step its log shows."""
        with self._lock, credentials_needed(f"Globus Flows (run {run_id})"):
            assert self._fc is not None
            doc = dict(self._fc.get_run(run_id).data or {})
            logs = self._fc.get_run_logs(run_id, limit=LOG_PAGE, reverse_order=True)
            entries = list(logs.get("entries") or [])
        return doc, furthest_step(entries)

    def _cancel(self, run_id: str) -> None:
        """Cancel a flow run, best effort: one that just ended is left be."""
        try:
            with self._lock, credentials_needed(f"Globus Flows (cancel run {run_id})"):
                assert self._fc is not None
                self._fc.cancel_run(run_id)
            log.info("Globus Flow run %s cancelled", run_id)
        except Exception as exc:  # the run ended meanwhile, or the service is unreachable
            log.warning("could not cancel Globus Flow run %s: %s", run_id, exc)

    def close(self) -> None:
        """Drop the clients (and their apps' token storage)."""
        with self._lock:
            clients, self._fc, self._sfc = [self._fc, self._sfc], None, None
        for client in clients:
            app = getattr(client, "app", None)
            if app is not None:
                app.close()
