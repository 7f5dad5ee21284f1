"""The control IOC process: records, put rules, autosave, access security, auto mode.

Client puts are decided synchronously in the records' ``validate`` callbacks
(so a refusal is a put error to that client and the old value stays); accepted
puts reach the asyncio loop through softioc's dispatcher, where the
orchestrator runs the workflow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from ptychoflow.geometry import Geometry
from ptychoflow.ioc import access
from ptychoflow.ioc.autosave import Autosave, AutosaveError
from ptychoflow.ioc.compute import COMPUTES, Compute, table_of
from ptychoflow.ioc.edgeconsistency import DriftWatch
from ptychoflow.ioc.edgerecorder import SAMPLES_FILE, EdgeRecorder
from ptychoflow.ioc.flowrun import FlowRunner
from ptychoflow.ioc.orchestrator import Orchestrator
from ptychoflow.ioc.puts import PutRegistry
from ptychoflow.ioc.qualitygate import QualityGate
from ptychoflow.ioc.recovery import recover
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.report import ReportWriter
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.statemachine import FAILED
from ptychoflow.ioc.transfer import TRANSFERS, Transfer
from ptychoflow.ioc.validate import check_scan_path, check_value, resolve_scan_path
from ptychoflow.ioc.watcher import ScanWatcher
from ptychoflow.pvnames import (
    ALGORITHMS,
    COMPUTE_BACKENDS,
    CONTROL,
    MESSAGE_LENGTH,
    STATES,
    TRANSFER_BACKENDS,
    PVSpec,
)

log = logging.getLogger("ptychoflow.ioc")

# the put rules and handlers of the control PVs, each declared on its method below
PUTS = PutRegistry()


class ControlIoc:
    """One control IOC: build with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, settings: IocSettings, tables: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.work = settings.work_path
        self.work.mkdir(parents=True, exist_ok=True)
        for sub in ("runs", "models", "training"):
            (self.work / sub).mkdir(exist_ok=True)
        self.registry = Registry(self.work / "registry.sqlite")
        self.autosave = Autosave(self.work / "autosave.json")
        self.watcher = ScanWatcher(settings.data_path)
        self.records: dict[str, Any] = {}
        self._msg_lock = threading.Lock()
        tables = tables or {}
        # one instance of every back end; each run picks one of each by its PVs
        self.computes: dict[str, Compute] = {
            name: cls(settings, table_of(tables, *cls.section.split(".")))
            for name, cls in COMPUTES.items()}
        self.transfers: dict[str, Transfer] = {
            name: cls(settings, table_of(tables, *cls.section.split(".")))
            for name, cls in TRANSFERS.items()}
        self._configured = [name for name, cls in COMPUTES.items()
                            if name == "Local" or table_of(tables, *cls.section.split("."))]
        self.gate = QualityGate(0.0, settings.quality_runs)
        self.flows = FlowRunner(settings, tables)  # runs of a back end with via_flows = true
        # the edge's speed, sampled for the run reports (only where there is an edge)
        self.edge_samples = (EdgeRecorder(settings.edge_prefix, self.work / SAMPLES_FILE)
                             if settings.edge_prefix else None)
        # the edge's physics check: Auto retrains when its misfit drifts (ioc/consistency.py)
        self.drift = (DriftWatch(settings.edge_prefix, self.registry, self.rec,
                                 self.watcher.newest, self._retrain, self.message)
                      if settings.edge_prefix else None)
        self.reports = ReportWriter(self.registry, self,
                                    self.edge_samples.log if self.edge_samples else None,
                                    self.edge_samples.flush if self.edge_samples else None)
        self.orch = Orchestrator(settings, self.registry, self, self.computes, self.transfers,
                                 self.gate, self.flows, self.reports)
        self._auto_on = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._auto_task: concurrent.futures.Future[None] | None = None
        self._wake = threading.Event()

    # -- Sink for the orchestrator ------------------------------------------------------
    def post(self, values: dict[str, Any]) -> None:
        """Set read-back PVs."""
        for suffix, value in values.items():
            self.records[suffix].set(value)

    def rec(self, spec: PVSpec) -> Any:
        """The softioc record of ``spec``."""
        return self.records[spec.suffix]

    def message(self, text: str) -> None:
        """Show ``text`` in Message_RBV and the log."""
        log.info("%s", text)
        with self._msg_lock:
            self.rec(CONTROL.workflow_message).set(text[:MESSAGE_LENGTH])

    def finished(self) -> None:
        """After a run: momentary PVs back to 0, then look for queued scans."""
        # processed (not process=False) so that monitors see the reset too; a Start that a
        # client put in the meantime already belongs to the next run and stays
        if not self.orch.busy:
            self.rec(CONTROL.workflow_start).set(0)
        self.rec(CONTROL.workflow_abort).set(0)
        self._wake.set()

    # -- put rules (CA/PVA server threads) ----------------------------------------------
    def _validate(self, spec: PVSpec, value: Any) -> bool:
        problem = check_value(spec, value) or PUTS.check(self, spec, value)
        if problem:
            self.message(f"Refused: {problem}")
            return False
        return True

    @PUTS.rule(CONTROL.scan_path)
    def _may_set_scan_path(self, value: str) -> str | None:
        return check_scan_path(value, self.settings.data_path)

    @PUTS.rule(CONTROL.workflow_start)
    def _may_start(self, value: int) -> str | None:
        start, abort = CONTROL.workflow_start.suffix, CONTROL.workflow_abort.suffix
        if value == 0:
            return (f"{start} cannot be cleared while a run is active; use {abort}"
                    if self.orch.busy else None)
        if self.orch.busy:
            return f"{start}: {self.orch.describe()}; wait for it to finish or use {abort}"
        path = self.rec(CONTROL.scan_path).get()
        if not path:
            return f"{start}: {CONTROL.scan_path.suffix} is empty; set it to a scan file first"
        problem = check_scan_path(path, self.settings.data_path)
        if problem:
            return f"{start}: {problem}"
        if not self.orch.reserve():
            return f"{start}: a run is starting"
        self.rec(CONTROL.workflow_busy).set(1)  # busy from the accepted put on
        return None

    @PUTS.rule(CONTROL.model_deploy)
    def _may_deploy(self, value: int) -> str | None:
        if value == 0:
            return None
        deploy = CONTROL.model_deploy.suffix
        if self.registry.model(int(value)) is None:
            known = [m["version"] for m in self.registry.models()]
            return f"{deploy}: version {value} is not registered (registered: {known})"
        if not self.settings.edge_prefix:
            return f"{deploy}: no edge to deploy to; set edge_prefix in [ioc]"
        return None

    # -- accepted puts (asyncio loop) ---------------------------------------------------
    def _params(self) -> dict[str, Any]:
        def get(spec: PVSpec) -> Any:
            return self.rec(spec).get()
        return {
            "algorithm": ALGORITHMS[get(CONTROL.recon_algorithm)],
            "recon_epochs": int(get(CONTROL.recon_epochs)),
            "train_epochs": int(get(CONTROL.train_epochs)),
            "val_fraction": float(get(CONTROL.train_val_fraction)),
            "transfer_backend": TRANSFER_BACKENDS[get(CONTROL.transfer_backend)],
            "compute_backend": COMPUTE_BACKENDS[get(CONTROL.compute_backend)],
            "data_root": str(self.settings.data_path),
            "model_dir": str(self.work / "models"),
            "train_dir": str(self.work / "training"),
            "int8": bool(self.settings.int8_models),
            "geometry": Geometry.parse(self.settings.geometry).to_dict(),
        }

    def _launch(self, path: str) -> None:
        self.orch.launch(resolve_scan_path(path, self.settings.data_path), self._params())

    @PUTS.on_put(CONTROL.workflow_start, every_put=True)
    async def _on_start(self, value: int) -> None:
        if value == 1:
            self._launch(self.rec(CONTROL.scan_path).get())

    @PUTS.on_put(CONTROL.workflow_abort, every_put=True)
    async def _on_abort(self, value: int) -> None:
        if value != 1:
            return
        if not await self.orch.abort():
            self.message("Abort: no run is active")
            self.rec(CONTROL.workflow_abort).set(0)

    # a put of On while on reopens the quality gate, so every put of it is processed
    @PUTS.on_put(CONTROL.workflow_auto, every_put=True)
    async def _on_auto(self, value: int) -> None:
        self._save(CONTROL.workflow_auto.suffix, value)
        was_on, self._auto_on = self._auto_on, bool(value)
        if value and self.gate.closed:
            self.gate.reopen()
            self.post({CONTROL.model_target_met.suffix: 0})
            self.message("Auto: resumed sending scans to remote compute")
        elif value and not was_on:
            self.watcher.snapshot()
            self.message(f"Auto on: watching {self.watcher.root} for new *.h5 scans")
        elif not value:
            dropped = len(self.watcher.pending)
            self.watcher.pending.clear()
            self.post({CONTROL.workflow_queued_scans.suffix: 0})
            self.message("Auto off" + (f"; {dropped} queued scan(s) dropped" if dropped else ""))
        self._wake.set()

    @PUTS.on_put(CONTROL.model_quality_target)
    async def _on_quality_target(self, value: float) -> None:
        self._save(CONTROL.model_quality_target.suffix, value)
        if self.gate.set_target(float(value)):
            self.post({CONTROL.model_target_met.suffix: 0})
            self.message(f"Auto: quality target lowered to {value:.3f}; resumed sending scans")
            self._wake.set()

    @PUTS.on_put(CONTROL.model_deploy, every_put=True)
    async def _on_deploy(self, value: int) -> None:
        if value == 0:
            return
        # the model (and its card) go to the edge the way new models do: the transfer back end
        transfer = self.transfers[TRANSFER_BACKENDS[self.rec(CONTROL.transfer_backend).get()]]
        await self.orch.keeper.redeploy(int(value), transfer, self.work)
        self.rec(CONTROL.model_deploy).set(0)

    def _saver(self, suffix: str) -> Any:
        async def save(value: Any) -> None:
            self._save(suffix, value)
        return save

    def _save(self, suffix: str, value: Any) -> None:
        """Autosave one setting; a full disk is said on Message_RBV, the setting applies."""
        try:
            self.autosave.save(suffix, value)
        except AutosaveError as exc:
            self.message(str(exc))

    async def _auto_loop(self) -> None:
        """Queue new scans while Auto is on; start runs while the back end has room."""
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self._wake.wait, self.settings.poll_s)
            self._wake.clear()
            if not self.rec(CONTROL.workflow_auto).get():
                continue
            self.watcher.streaming = bool(self.rec(CONTROL.recon_streaming).get())
            await loop.run_in_executor(None, self.watcher.poll)
            if not self.gate.closed:
                self._admit_queued()
            self.post({CONTROL.workflow_queued_scans.suffix: len(self.watcher.pending)})

    def _admit_queued(self) -> None:
        compute = COMPUTE_BACKENDS[self.rec(CONTROL.compute_backend).get()]
        while self.watcher.pending and self.orch.admit(compute):
            nxt = self.watcher.next()
            if nxt is None:
                self.orch.release()
                return
            problem = check_scan_path(str(nxt), self.settings.data_path)
            if problem:  # e.g. a symlink that points out of the data root
                self.orch.release()
                self.message(f"Auto: skipped {nxt.name}: {problem}")
                continue
            self.rec(CONTROL.scan_path).set(str(nxt))
            self.orch.launch(nxt, self._params())

    def _retrain(self, scan: Path, reason: str) -> bool:
        """Auto, on the edge's drift: a run on ``scan`` even if the quality gate is closed."""
        if not self.orch.admit(COMPUTE_BACKENDS[self.rec(CONTROL.compute_backend).get()]):
            return False
        self.rec(CONTROL.scan_path).set(str(scan))
        self.orch.launch(scan, {**self._params(), "retrain_reason": reason})
        return True

    # -- life cycle -----------------------------------------------------------------------
    def _initial(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.autosave.restore())
        recovered = recover(self.registry, self.work)
        last = self.registry.last_run()
        values[CONTROL.model_version.suffix] = self.registry.latest_version()
        values[CONTROL.model_deployed.suffix] = self.registry.deployed_version()
        self.gate.set_target(float(values.get(CONTROL.model_quality_target.suffix, 0.0)))
        self._auto_on = bool(values.get(CONTROL.workflow_auto.suffix, 0))
        if last is not None:
            values[CONTROL.workflow_run_id.suffix] = last["id"]
        if recovered.runs:
            values[CONTROL.workflow_state.suffix] = STATES.index(FAILED)
            values[CONTROL.workflow_message.suffix] = (
                f"run(s) {list(recovered.runs)} interrupted: the IOC stopped while they were "
                f"active ({recovered.summary()})")[:MESSAGE_LENGTH]
        return values

    def start(self) -> None:
        """Create the records, load the ACF, iocInit; serves CA and PVA from here on."""
        from softioc import asyncio_dispatcher, builder, softioc

        dispatcher = asyncio_dispatcher.AsyncioDispatcher()
        self.loop = dispatcher.loop
        updates = PUTS.handlers_of(self)
        for spec in CONTROL:
            if spec.autosave and spec.suffix not in updates:
                updates[spec.suffix] = self._saver(spec.suffix)
        self.records = self.__build(updates)
        acf = access.write_acf(self.work / "ptychoflow.acf", self.settings.writers,
                               self.settings.writer_hosts)
        access.install_acf(acf)
        builder.LoadDatabase()
        softioc.iocInit(dispatcher)
        if self.edge_samples is not None:
            try:
                self.edge_samples.start()
            except Exception as exc:  # reports then lack the edge figure; the IOC serves on
                self.message(f"Not recording the edge's speed for reports: {exc}")
        if self.drift is not None:
            self.drift.start(self.loop)
        if self.rec(CONTROL.workflow_auto).get():
            self.watcher.snapshot()
        self._auto_task = asyncio.run_coroutine_threadsafe(self._auto_loop(), self.loop)
        self.loop.call_soon_threadsafe(self._warm)

    def __build(self, updates: dict[str, Any]) -> dict[str, Any]:
        from ptychoflow.ioc.records import create_records

        return create_records(self.settings.prefix, self._initial(), self._validate, updates,
                              always_update=frozenset(PUTS.every_put))

    def _warm(self) -> None:
        """Start the configured compute back ends now, so the first run starts quickly."""
        assert self.loop is not None
        for name in self._configured:
            self.loop.run_in_executor(None, self._start_compute, self.computes[name])

    def _start_compute(self, compute: Compute) -> None:
        try:
            compute.check()
            compute.start()
        except Exception as exc:  # reported now; a run on it fails at Start with the cause
            self.message(f"Compute back end {compute.name} did not start: {exc}")

    def stop(self, timeout: float = 15.0) -> None:
        """Abort an active run (recorded as Aborted), stop workers, close the registry."""
        if self.loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                fut.result(timeout)
            except Exception:
                log.exception("clean shutdown failed")
        self.orch.close()
        self.reports.close()
        if self.edge_samples is not None:
            self.edge_samples.close()
        if self.drift is not None:
            self.drift.close()
        self.flows.close()
        for backend in [*self.computes.values(), *self.transfers.values()]:
            try:
                backend.shutdown() if hasattr(backend, "shutdown") else backend.close()
            except Exception:
                log.exception("stopping back end %s", backend.name)
        self.registry.close()

    async def _shutdown(self) -> None:
        if self._auto_task is not None:
            self._auto_task.cancel()
        tasks = list(self.orch.tasks)
        if tasks:
            self.message("IOC stopping: aborting the active run(s)")
            await self.orch.abort()
            await asyncio.wait(tasks, timeout=10)


def serve(settings: IocSettings, tables: dict[str, Any] | None = None) -> int:
    """Run the IOC until SIGINT or SIGTERM; returns the exit status."""
    # CA/PVA server threads (put validation), the asyncio loop and the progress pump all
    # need the GIL; handing it over every 1 ms instead of 5 ms keeps put-to-monitor tails short
    sys.setswitchinterval(0.001)
    ioc = ControlIoc(settings, tables)
    ioc.start()
    log.info("control IOC %s serving CA and PVA; data root %s, work root %s; writers %s",
             settings.prefix, settings.data_path, settings.work_path, settings.acl_summary())
    print(f"ptychoflow ioc: serving {len(CONTROL)} PVs under {settings.prefix}", flush=True)
    stop = threading.Event()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    ioc.stop()
    return 0
