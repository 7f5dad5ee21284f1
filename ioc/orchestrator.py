"""Runs the workflow: one run at a time, stage after stage, with abort and a registry.

The orchestrator lives on the IOC's asyncio loop. It knows nothing about
records: it reports through a :class:`Sink` (the server maps that onto PVs),
records every transition in the :class:`~ptychoflow.ioc.registry.Registry`,
and runs stages through a compute back end, so the same code drives a local
process pool today and Parsl or Globus Compute later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import importlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

from ptychoflow.ioc.backends import NOT_CONFIGURED, BackendNotConfigured, Compute
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.statemachine import ABORTED, DONE, FAILED, IDLE, PIPELINE, StateMachine
from ptychoflow.modelcard import sha256_file, version_of
from ptychoflow.stages import Cancelled, Reporter, StageFn

log = logging.getLogger(__name__)

RESET_ON_START = {"Workflow:Progress_RBV": 0.0, "Recon:Epoch_RBV": 0, "Recon:Error_RBV": 0.0,
                  "Train:Epoch_RBV": 0, "Train:Loss_RBV": 0.0, "Train:ValLoss_RBV": 0.0,
                  "Train:BestValLoss_RBV": 0.0, "Transfer:Rate_RBV": 0.0}
PROGRESS_FIELDS = {"reconstruct": {"epoch": "Recon:Epoch_RBV", "error": "Recon:Error_RBV"},
                   "train": {"epoch": "Train:Epoch_RBV", "loss": "Train:Loss_RBV",
                             "val_loss": "Train:ValLoss_RBV",
                             "best_val_loss": "Train:BestValLoss_RBV"},
                   "transfer": {"rate_mb_s": "Transfer:Rate_RBV"}}


class Sink(Protocol):
    """Where the orchestrator's news goes (the IOC's records)."""

    def post(self, values: dict[str, Any]) -> None:
        """Set read-back PVs by suffix."""

    def message(self, text: str) -> None:
        """Set Message_RBV (and log it)."""

    def finished(self) -> None:
        """A run ended (reset Start/Abort, start the next queued scan)."""


def load_stage(dotted: str) -> StageFn:
    """Import ``module:function``; the error says which setting names it."""
    module, _, name = dotted.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as exc:  # ImportError, AttributeError, or an error inside the module
        raise RuntimeError(f"cannot load stage {dotted!r} ({type(exc).__name__}: {exc}); "
                           f"check [ioc.stages] in the configuration") from exc
    if not callable(fn):
        raise RuntimeError(f"stage {dotted!r} is not a function; check [ioc.stages]")
    return fn  # type: ignore[no-any-return]


def progress_values(item: dict[str, Any]) -> dict[str, Any]:
    """Read-back PV values carried by one progress record from a stage."""
    out: dict[str, Any] = {}
    fraction = item.get("fraction")
    if isinstance(fraction, int | float):
        out["Workflow:Progress_RBV"] = max(0.0, min(100.0, 100.0 * float(fraction)))
    for key, suffix in PROGRESS_FIELDS.get(str(item.get("stage")), {}).items():
        v = item.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[suffix] = v
    return out


class Orchestrator:
    """The workflow's single run slot."""

    def __init__(self, settings: IocSettings, registry: Registry, sink: Sink,
                 compute: dict[str, Compute]) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.compute = compute
        self.sm = StateMachine(IDLE)
        self._lock = threading.Lock()
        self._reserved = False
        self._aborting = False
        self._reporter: Reporter | None = None
        self._future: cf.Future[dict[str, Any]] | None = None
        self.run_id = 0
        self._params: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """A run holds the slot (from the accepted Start until the final state)."""
        return self._reserved

    def reserve(self) -> bool:
        """Claim the run slot; ``False`` if a run is active (called from put validation)."""
        with self._lock:
            if self._reserved:
                return False
            self._reserved = True
            self._aborting = False
            return True

    def release(self) -> None:
        """Give the slot back without running (a reserved start that could not go ahead)."""
        with self._lock:
            self._reserved = False

    def on_progress(self, item: dict[str, Any]) -> None:
        """Apply one progress record from the running stage (called from the pump thread)."""
        if not self._reserved or self._aborting:
            return
        values = progress_values(item)
        if values:
            self.sink.post(values)
        if item.get("message"):
            self.sink.message(f"{self.sm.state}: {item['message']}")

    async def abort(self) -> bool:
        """Stop the active run: cancel, then terminate the worker after the grace time."""
        if not self._reserved:
            return False
        self._aborting = True
        self.sink.message(f"Aborting run {self.run_id} ({self.sm.state})")
        rep, fut = self._reporter, self._future
        loop = asyncio.get_running_loop()
        if rep is not None and rep.cancel is not None:
            await loop.run_in_executor(None, rep.cancel.set)  # type: ignore[attr-defined]
        if fut is not None and not fut.done():
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)),
                                       self.settings.abort_grace_s)
            except (TimeoutError, Exception):
                pass
            if not fut.done():
                compute = self.compute.get(str(self._params.get("compute_backend", "")))
                if compute is not None:
                    compute.kill()
        return True

    def _transition(self, state: str, message: str) -> None:
        self.sm.go(state)
        self.registry.set_state(self.run_id, state, message)
        self.sink.post({"Workflow:State_RBV": self.sm.index()})
        self.sink.message(message)

    async def run(self, scan: Path, params: dict[str, Any]) -> None:
        """One run of the whole pipeline on ``scan`` (the slot must be reserved)."""
        self._params = params
        self.sm.state = IDLE
        self.run_id = self.registry.new_run(str(scan), params)
        run_dir = self.settings.work_path / "runs" / f"run-{self.run_id:05d}"
        params = {**params, "run_id": self.run_id}
        self.sink.post({"Workflow:Busy_RBV": 1, "Workflow:RunId_RBV": self.run_id})
        stage_dir: Path | None = None
        results: dict[str, Any] = {}
        try:
            compute = self._select(params)
            fns = {stage: load_stage(self.settings.stages[stage]) for _, stage in PIPELINE}
            scan_path = str(scan)
            for state, stage in PIPELINE:
                if self._aborting:
                    raise Cancelled(f"{stage} aborted")
                self._transition(state, f"{state}: run {self.run_id}, {scan.name}")
                # the state first (that is what clients wait for), then the figures
                self.sink.post(RESET_ON_START if stage == "transfer"
                               else {"Workflow:Progress_RBV": 0.0})
                stage_dir = run_dir / stage
                stage_dir.mkdir(parents=True, exist_ok=True)
                if stage == "export":
                    params["version"] = self.registry.latest_version() + 1
                self._reporter = compute.reporter(stage)
                self._future = compute.submit(fns[stage], scan_path, str(stage_dir), params,
                                              self._reporter)
                result = await asyncio.wrap_future(self._future)
                stage_dir = None
                results.update(result)
                params.update(result)
                if isinstance(result.get("scan_path"), str):
                    scan_path = result["scan_path"]
                self.registry.set_results(self.run_id, results)
                # figures a stage returns (e.g. transfer's rate_mb_s) show like its progress
                final = progress_values({**result, "stage": stage, "fraction": 1.0})
                self.sink.post(final)
                if stage == "export":
                    await self._register_model(result, scan, params)
            self._transition(DONE, f"Done: run {self.run_id}" + self._model_note(results))
        except BaseException as exc:
            if stage_dir is not None:
                shutil.rmtree(stage_dir, ignore_errors=True)
            if self._aborting or isinstance(exc, Cancelled | asyncio.CancelledError):
                self._transition(ABORTED, f"Aborted: run {self.run_id} stopped during "
                                          f"{self.sm.state}; its partial outputs were removed")
            else:
                where = self.sm.state if self.sm.busy else "start"
                expected = isinstance(exc, BackendNotConfigured | RuntimeError)
                if not expected:
                    log.error("run %d failed in %s", self.run_id, where, exc_info=exc)
                cause = str(exc) if expected else f"{type(exc).__name__}: {exc}"
                self._transition(FAILED, f"Failed in {where}: {cause}")
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._reporter = self._future = None
            with self._lock:
                self._reserved = False
                self._aborting = False
            self.sink.post({"Workflow:Busy_RBV": 0})
            self.sink.finished()

    def _select(self, params: dict[str, Any]) -> Compute:
        for kind, key in (("Transfer", "transfer_backend"), ("Compute", "compute_backend")):
            nc = NOT_CONFIGURED.get((kind, str(params[key])))
            if nc is not None:
                nc.check()
        compute = self.compute.get(str(params["compute_backend"]))
        if compute is None:
            raise BackendNotConfigured(f"no compute back end {params['compute_backend']}")
        compute.check()
        return compute

    @staticmethod
    def _model_note(results: dict[str, Any]) -> str:
        return f", model {results['model']}" if "model" in results else ""

    async def _register_model(self, result: dict[str, Any], scan: Path,
                              params: dict[str, Any]) -> None:
        model = result.get("model")
        if not isinstance(model, str) or not Path(model).is_file():
            raise RuntimeError(f"export returned no model file (got {model!r})")
        version = int(result.get("version") or version_of(model) or params["version"])
        metrics = dict(result.get("metrics") or {})
        quality = result.get("quality")
        if isinstance(quality, dict):
            metrics["quality"] = quality
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(None, sha256_file, model)
        provenance = {"run_id": self.run_id, "scan": str(scan),
                      "params": {k: v for k, v in params.items() if k != "version"}}
        self.registry.add_model(version, model, digest, metrics, provenance, self.run_id)
        values: dict[str, Any] = {"Model:Version_RBV": version}
        if isinstance(quality, dict) and isinstance(quality.get("ssim"), int | float):
            values["Model:Quality_RBV"] = float(quality["ssim"])
        self.sink.post(values)
        if self.settings.edge_prefix:
            await loop.run_in_executor(None, deploy_to_edge, self.settings.edge_prefix, model)


def deploy_to_edge(edge_prefix: str, model: str, timeout: float = 10.0) -> None:
    """Ask the edge service to load ``model`` (a pvAccess put to Edge:Model:Load)."""
    from p4p.client.thread import Context

    pv = f"{edge_prefix}Edge:Model:Load"
    with Context("pva") as ctx:
        try:
            ctx.put(pv, model, timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"deploying {model} to the edge failed: put to {pv}: {exc}; "
                               f"is the edge running with prefix {edge_prefix}?") from exc
