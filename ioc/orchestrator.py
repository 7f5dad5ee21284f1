"""Runs the workflow: runs overlap in Auto mode, stages go to the chosen back ends.

The orchestrator lives on the IOC's asyncio loop. It knows nothing about
records: it reports through a :class:`Sink` (the server maps that onto PVs),
records every transition in the :class:`~ptychoflow.ioc.registry.Registry`, does
transfers itself through the transfer back end and submits the compute stages
to the compute back end, both chosen once per run from their registries.

Overlap, as in the original system: while run N trains, run N+1's scan is
transferred and reconstructed, as far as ``max_concurrent_stages`` compute
slots allow. Training and export (the ``lineage`` stages of the stage table)
happen one run at a time in run order, so model versions increase in order and
each round warm-starts from the one before.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ptychoflow.chunks import is_stream_folder
from ptychoflow.ioc.compute import BackendNotConfigured, Compute
from ptychoflow.ioc.deploy import ModelKeeper
from ptychoflow.ioc.flowrun import FlowRunner
from ptychoflow.ioc.qualitygate import QualityGate
from ptychoflow.ioc.recovery import no_space, run_dir
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.report import ReportWriter
from ptychoflow.ioc.runstate import ActiveRun, CallbackQueue, merged, until
from ptychoflow.ioc.settings import IocSettings, load_stage
from ptychoflow.ioc.sitecheck import check_site, refusal
from ptychoflow.ioc.stagerun import StageRunner
from ptychoflow.ioc.stagetable import (
    ABORTED,
    COMPUTE_STAGES,
    DONE,
    FAILED,
    RESET_ON_START,
    STAGES,
    progress_values,
)
from ptychoflow.ioc.streamship import Shipment
from ptychoflow.ioc.transfer import Transfer
from ptychoflow.pvnames import CONTROL
from ptychoflow.stages import Cancelled, Reporter

log = logging.getLogger(__name__)
LAST_LINEAGE = [s.name for s in STAGES if s.lineage][-1]


class Sink(Protocol):
    """Where the orchestrator's news goes (the IOC's records)."""

    def post(self, values: dict[str, Any]) -> None:
        """Set read-back PVs by suffix."""

    def message(self, text: str) -> None:
        """Set Message_RBV (and log it)."""

    def finished(self) -> None:
        """A run ended (reset Start/Abort, start the next queued scan)."""


class Orchestrator:
    """Drives runs through the stage table on the selected back ends."""

    def __init__(self, settings: IocSettings, registry: Registry, sink: Sink,
                 computes: Mapping[str, Compute], transfers: Mapping[str, Transfer],
                 gate: QualityGate | None = None, flows: FlowRunner | None = None,
                 reports: ReportWriter | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.computes = computes
        self.transfers = transfers
        self.gate = gate or QualityGate()
        self.flows = flows
        self.reports = reports  # a report of every run that ends, written off the loop
        self.keeper = ModelKeeper(settings, registry, sink, self.gate)
        self.stages = StageRunner(settings, sink, self.capacity, self._drain)
        self.active: dict[int, ActiveRun] = {}
        self.run_id = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._reserved = 0
        self._lock = threading.Lock()
        self._lineage: list[int] = []
        self._sites_checked: set[str] = set()
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._pump_progress, name="progress-pump",
                                      daemon=True)
        self._pump.start()

    # -- admission --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A run is active or about to start."""
        with self._lock:
            return bool(self.active) or self._reserved > 0

    def describe(self) -> str:
        """The active runs in words, for refusals ("run 3 is active (Training)")."""
        with self._lock:
            runs = [f"run {r.id} is active ({r.sm.state})" for r in self.active.values()]
            starting = self._reserved
        return "; ".join(runs) or f"{starting} run(s) are starting"

    def capacity(self, compute: str) -> int:
        """Stages at once on ``compute`` (also the most runs Auto keeps in flight)."""
        backend = self.computes.get(compute)
        return self.settings.max_concurrent_stages or (backend.workers if backend else 1)

    def reserve(self) -> bool:
        """Claim a start while no run is active (a client's Start); ``False`` if busy."""
        with self._lock:
            if self.active or self._reserved:
                return False
            self._reserved += 1
            return True

    def admit(self, compute: str) -> bool:
        """Claim a start for Auto mode while fewer runs than the capacity are in flight."""
        with self._lock:
            if len(self.active) + self._reserved >= self.capacity(compute):
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """Give a claimed start back without running."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def launch(self, scan: Path, params: dict[str, Any]) -> None:
        """Start a claimed run on the running loop."""
        task = asyncio.get_running_loop().create_task(self.run(scan, params))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- progress ---------------------------------------------------------------------
    def _focus(self, run: ActiveRun) -> bool:
        """Whether ``run`` is the one Workflow:State/Progress show (the newest active)."""
        with self._lock:
            others = [i for i in self.active if i != run.id]
        return not others or run.id > max(others)

    def _progress(self, run: ActiveRun, item: dict[str, Any]) -> None:
        if "pid" in item and "host" in item:
            run.worker = (str(item["host"]), int(item["pid"]))
            return
        if run.aborting:
            return
        values = progress_values(item)
        if not self._focus(run):
            values.pop(CONTROL.workflow_progress.suffix, None)
        if values:
            self.sink.post(values)
        if item.get("message"):
            self.sink.message(f"{run.sm.state}: {item['message']}")

    def _pump_progress(self) -> None:
        """Read every active stage's progress file (several times a second)."""
        while not self._stop.wait(0.25):
            with self._lock:
                runs = list(self.active.values())
            for run in runs:
                self._drain(run)

    def _drain(self, run: ActiveRun) -> None:
        """Post what the stage reported since the last read, as one update (see merged)."""
        with run.lock:
            items = run.tail.read() if run.tail is not None else []
        worker, report = merged(items)
        run.worker = worker or run.worker
        if report:
            try:
                self._progress(run, report)
            except Exception:  # a bad progress record must not stop the pump
                log.exception("progress record %r", report)

    def close(self) -> None:
        """Stop the progress pump."""
        self._stop.set()
        self._pump.join(2)

    # -- abort ------------------------------------------------------------------------
    async def abort(self) -> bool:
        """Stop every active run: cancel, then terminate workers after the grace time."""
        with self._lock:
            runs = list(self.active.values())
        if not runs:
            return False
        await asyncio.gather(*(self._abort(run) for run in runs))
        return True

    async def _abort(self, run: ActiveRun) -> None:
        run.aborting = True
        run.abort_event.set()
        self.sink.message(f"Aborting run {run.id} ({run.sm.state})")
        await self.stages.stop(run)

    # -- one run ----------------------------------------------------------------------
    def _transition(self, run: ActiveRun, state: str, message: str) -> None:
        run.sm.go(state)
        self.registry.set_state(run.id, state, message)
        if self._focus(run):
            self.sink.post({CONTROL.workflow_state.suffix: run.sm.index()})
        self.sink.message(message)

    def _enter(self, run: ActiveRun, state: str, message: str) -> None:
        """A stage's state: the state first (that is what clients wait for), then the figures."""
        self._transition(run, state, message)
        self.sink.post(RESET_ON_START if state == STAGES[0].state
                       else {CONTROL.workflow_progress.suffix: 0.0})

    def _counts(self) -> None:
        with self._lock:
            n = len(self.active)
        self.sink.post({CONTROL.workflow_active_runs.suffix: n,
                        CONTROL.workflow_busy.suffix: int(n > 0)})

    async def run(self, scan: Path, params: dict[str, Any]) -> None:
        """One run of the whole stage table on ``scan`` (a start must have been claimed)."""
        run_id = self.registry.new_run(str(scan), params)
        run = ActiveRun(run_id, scan, {**params, "run_id": run_id},
                        run_dir(self.settings.work_path, run_id))
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self.active[run_id] = run
            self._lineage.append(run_id)
            self.run_id = max(self.run_id, run_id)
        self.sink.post({CONTROL.workflow_run_id.suffix: self.run_id})
        self._counts()
        stage_dir: Path | None = None
        results: dict[str, Any] = {}
        note = ""
        try:
            compute, transfer = await self._select(run.params)
            if getattr(compute, "via_flows", False):  # Globus Flows runs every stage
                note = await self._flow(run, transfer)
                self._transition(run, DONE, f"Done: run {run.id}{note}")
                return
            site = PurePosixPath(transfer.compute_work)
            if not compute.shares_files:  # stages see the compute site's copy of the work folder
                run.params.update(model_dir=str(site / "models"), train_dir=str(site / "training"))
            fns = {name: load_stage(self.settings.stages[name]) for name in COMPUTE_STAGES}
            scan_path = str(scan)
            for stage in STAGES:
                if run.aborting:
                    raise Cancelled(f"{stage.name} aborted")
                if stage.lineage:
                    await self._lineage_turn(run)
                run.stage = stage.name
                self._enter(run, stage.state, f"{stage.state}: run {run.id}, {scan.name}")
                stage_dir = run.run_dir / stage.name
                stage_dir.mkdir(parents=True, exist_ok=True)
                workdir = (str(stage_dir) if compute.shares_files
                           else str(site / "runs" / run.name / stage.name))
                if stage.runs_on == "transfer":
                    result = await self._transfer(run, transfer, scan)
                else:
                    if stage.makes_model:
                        run.params["version"] = self.registry.latest_version() + 1
                    result = await self.stages.run(run, compute, stage, fns[stage.name],
                                                   scan_path, stage_dir, workdir)
                    if run.shipment is not None:  # its chunks all arrived (or it failed)
                        result = {**result, **await run.shipment.finish()}  # whole transfer
                stage_dir = None
                results.update(result)
                run.params.update(result)
                scan_path = str(result.get("scan_path") or scan_path)
                self.registry.set_results(run.id, results)
                final = progress_values({**result, "stage": stage.name, "fraction": 1.0})
                if not self._focus(run):
                    final.pop(CONTROL.workflow_progress.suffix, None)
                self.sink.post(final)
                if stage.makes_model:
                    note = await self.keeper.keep(run, result, transfer,
                                                  local=compute.shares_files)
                if stage.name == LAST_LINEAGE:
                    self._leave_lineage(run)
            self._transition(run, DONE, f"Done: run {run.id}{note}")
        except BaseException as exc:
            if stage_dir is not None:
                shutil.rmtree(stage_dir, ignore_errors=True)
            self._fail(run, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if run.shipment is not None:
                run.shipment.cancel.set()
            self._leave_lineage(run)
            with self._lock:
                self.active.pop(run.id, None)
            if self.reports is not None:
                self.reports.submit(run.id, run.run_dir)
            self._counts()
            self.sink.finished()

    def _fail(self, run: ActiveRun, exc: BaseException) -> None:
        if run.aborting or isinstance(exc, Cancelled | asyncio.CancelledError):
            self._transition(run, ABORTED, f"Aborted: run {run.id} stopped during "
                                           f"{run.sm.state}; its partial outputs were removed")
            return
        where = run.sm.state if run.sm.busy else "start"
        full = no_space(exc, self.settings.work_path)
        if full:
            self._transition(run, FAILED, f"Failed in {where}: {full}, then start again "
                                          "(nothing half-written was kept)")
            return
        expected = isinstance(exc, RuntimeError)
        if not expected:
            log.error("run %d failed in %s", run.id, where, exc_info=exc)
        cause = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        self._transition(run, FAILED, f"Failed in {where}: {cause}")

    async def _select(self, params: dict[str, Any]) -> tuple[Compute, Transfer]:
        """The run's back ends, checked (and the compute one started) before any stage."""
        name_t, name_c = str(params["transfer_backend"]), str(params["compute_backend"])
        transfer, compute = self.transfers.get(name_t), self.computes.get(name_c)
        if transfer is None:
            raise BackendNotConfigured(f"no transfer back end {name_t}; known: "
                                       f"{', '.join(self.transfers)}")
        if compute is None:
            raise BackendNotConfigured(f"no compute back end {name_c}; known: "
                                       f"{', '.join(self.computes)}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, transfer.check)
        await loop.run_in_executor(None, compute.check)
        await loop.run_in_executor(None, compute.start)
        if compute.name not in self._sites_checked and compute.name != "Local":
            self.sink.message(f"Checking the {compute.name} compute site's Python and packages")
            _, diffs = await loop.run_in_executor(None, check_site, compute)
            problem = refusal(compute.name, diffs)
            if problem:
                raise BackendNotConfigured(problem)
            self._sites_checked.add(compute.name)
        return compute, transfer

    async def _flow(self, run: ActiveRun, transfer: Transfer) -> str:
        """The whole run as one Globus Flow run, in turn (one lineage); the Done note."""
        if self.flows is None:
            raise BackendNotConfigured("via_flows = true, but this orchestrator has no "
                                       "FlowRunner: pass flows=FlowRunner(settings, tables)")
        await self._lineage_turn(run)
        run.params["version"] = self.registry.latest_version() + 1
        results = await self.flows.run(run, lambda state, msg: self._enter(run, state, msg),
                                       self.sink.message)
        self.registry.set_results(run.id, results)
        self.sink.post(progress_values({**results, "stage": "train", "fraction": 1.0}))
        return await self.keeper.keep(run, results, transfer, local=False,
                                      edge_path=results.get("edge_model"))

    async def _lineage_turn(self, run: ActiveRun) -> None:
        """Wait until every earlier run has trained and exported (or ended)."""
        waited = False
        while True:
            with self._lock:
                first = self._lineage[0] if self._lineage else run.id
            if first == run.id:
                return
            if not waited:
                self.sink.message(f"run {run.id} waits for run {first} to finish training")
                waited = True
            await until(run, asyncio.sleep(0.05))

    def _leave_lineage(self, run: ActiveRun) -> None:
        with self._lock:
            if run.id in self._lineage:
                self._lineage.remove(run.id)

    async def _transfer(self, run: ActiveRun, transfer: Transfer, scan: Path) -> dict[str, Any]:
        """The scan to the compute site, done here on the beamline host."""
        if is_stream_folder(scan):  # being acquired: chunks follow while it is reconstructed
            run.shipment = Shipment(run, transfer, scan, float(run.params.get("stream_idle_s",
                                                                               300.0)))
            return await run.shipment.start()
        run.reporter = Reporter("transfer", CallbackQueue(lambda i: self._progress(run, i)),
                                threading.Event())
        loop = asyncio.get_running_loop()
        try:
            moved = await loop.run_in_executor(None, transfer.scan_to_compute, scan, run.name,
                                               run.reporter)
        finally:
            run.reporter = None
        return {"path": moved.path, "scan_path": moved.path, "bytes": moved.bytes,
                "seconds": moved.seconds, "sha256": moved.sha256, "skipped": moved.skipped,
                "rate_mb_s": moved.rate_mb_s, "transfer_backend": transfer.name}
