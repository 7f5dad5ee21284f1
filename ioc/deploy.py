"""Whether a new model goes to the edge, and the put that sends it there.

A model is deployed only if it beats the one the edge serves: a validation
loss no higher and a quality (SSIM against the iterative reconstruction of its
newest scan) no lower. Otherwise it is registered, not deployed, and the
operator reads why. The first model always goes.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Protocol

from ptychoflow.ioc.qualitygate import QualityGate
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.runstate import ActiveRun, CallbackQueue
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.transfer import Transfer
from ptychoflow.modelcard import card_path, sha256_file, version_of
from ptychoflow.physcheck import CARD_METRIC, probe_path
from ptychoflow.pvnames import CONTROL, EDGE
from ptychoflow.stages import Reporter


class _Sink(Protocol):
    def post(self, values: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


def _figure(model: dict[str, Any] | None, key: str) -> float | None:
    if model is None:
        return None
    metrics = model.get("metrics") or {}
    v = metrics.get(key)
    if key == "quality" and isinstance(v, dict):
        v = v.get("ssim")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def beats(candidate: dict[str, Any], deployed: dict[str, Any] | None) -> tuple[bool, str]:
    """``(deploy?, why)`` for a registered candidate model against the deployed one."""
    if deployed is None:
        return True, "no model deployed yet"
    name = f"v{deployed['version']}"
    loss, old_loss = _figure(candidate, "best_val_loss"), _figure(deployed, "best_val_loss")
    if loss is not None and old_loss is not None and loss > old_loss:
        return False, f"validation loss {loss:.5g} is worse than deployed {name}'s {old_loss:.5g}"
    q, old_q = _figure(candidate, "quality"), _figure(deployed, "quality")
    if q is not None and old_q is not None and q < old_q:
        return False, f"quality {q:.3f} is worse than deployed {name}'s {old_q:.3f}"
    return True, f"beats deployed {name}"


def deploy_to_edge(edge_prefix: str, model: str, timeout: float = 10.0) -> None:
    """Ask the edge service to load ``model`` (a pvAccess put to Edge:Model:Load)."""
    from p4p.client.thread import Context

    pv = EDGE.model_load.name(edge_prefix)
    with Context("pva") as ctx:
        try:
            ctx.put(pv, model, timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"deploying {model} to the edge failed: put to {pv}: {exc}; "
                               f"is the edge running with prefix {edge_prefix}?") from exc


class ModelKeeper:
    """After export: register the model, deploy it if it beats the deployed one, count
    its quality towards the gate. Returns the note the run's Done message carries.
    """

    def __init__(self, settings: IocSettings, registry: Registry, sink: _Sink,
                 gate: QualityGate) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.gate = gate

    def _progress(self, run: ActiveRun, item: dict[str, Any]) -> None:
        if item.get("message") and not run.aborting:
            self.sink.message(f"{run.sm.state}: {item['message']}")

    async def keep(self, run: ActiveRun, result: dict[str, Any], transfer: Transfer,
                   local: bool = True, edge_path: str | None = None) -> str:
        """Register the exported model, then deploy it if it beats the deployed one.

        ``edge_path``: the model is already in the edge's folder (a Globus Flow
        moved it), under this path as the edge opens it; it is not sent again.
        """
        model = result.get("model")
        if not isinstance(model, str) or (local and not Path(model).is_file()):
            raise RuntimeError(f"export returned no model file (got {model!r})")
        version = int(result.get("version") or version_of(model) or run.params["version"])
        metrics = dict(result.get("metrics") or {})
        if isinstance(run.params.get("best_val_loss"), int | float):
            metrics.setdefault("best_val_loss", run.params["best_val_loss"])
        quality = result.get("quality")
        if isinstance(quality, dict):
            metrics["quality"] = quality
        loop = asyncio.get_running_loop()
        # on a compute site without a shared folder the export's own checksum is taken
        digest = (await loop.run_in_executor(None, sha256_file, model) if local
                  else str(result.get("sha256") or ""))
        provenance = {"run_id": run.id, "scan": str(run.scan),
                      "params": {k: v for k, v in run.params.items() if k != "version"}}
        self.registry.add_model(version, model, digest, metrics, provenance, run.id)
        values: dict[str, Any] = {CONTROL.model_version.suffix: version}
        ssim = quality.get("ssim") if isinstance(quality, dict) else None
        if isinstance(ssim, int | float):
            values[CONTROL.model_quality.suffix] = float(ssim)
        self.sink.post(values)
        note = await self._deploy(run, version, model, result, transfer, edge_path)
        if self.gate.record(float(ssim) if isinstance(ssim, int | float) else None):
            self.sink.post({CONTROL.model_target_met.suffix: 1})
            note += f"; Auto: {self.gate.note()}"
        return note

    async def _deploy(self, run: ActiveRun, version: int, model: str, result: dict[str, Any],
                      transfer: Transfer, edge_path: str | None) -> str:
        candidate = self.registry.model(version)
        assert candidate is not None
        deployed_v = self.registry.deployed_version()
        ok, why = beats(candidate, self.registry.model(deployed_v) if deployed_v else None)
        if not ok:
            return f", model v{version} registered, not deployed: {why}"
        if not self.settings.edge_prefix:
            return f", model v{version}"
        loop = asyncio.get_running_loop()
        if edge_path is None:
            edge_path = await self._to_edge(run, model, result, transfer)
        await loop.run_in_executor(None, deploy_to_edge, self.settings.edge_prefix, edge_path)
        self.registry.mark_deployed(version, why)
        self.sink.post({CONTROL.model_deployed.suffix: version})
        return f", model v{version} deployed ({why})"

    async def redeploy(self, version: int, transfer: Transfer, work: Path) -> None:
        """``Model:Deploy``: send a registered version (model, card, probe) and load it."""
        model = self.registry.model(version)
        assert model is not None
        loop = asyncio.get_running_loop()
        shared = transfer.compute_work == str(work)  # the card can be looked for here
        files = [model["path"]] + [
            f for f in (str(card_path(model["path"])), str(probe_path(model["path"])))
            if (Path(f).is_file() if shared else
                f.endswith(".json") or _figure(model, CARD_METRIC) is not None)]
        try:
            moved = await loop.run_in_executor(None, transfer.model_to_edge, files,
                                               Reporter("export"))
            await loop.run_in_executor(None, deploy_to_edge, self.settings.edge_prefix,
                                       moved[0].path)
            self.registry.mark_deployed(version, CONTROL.model_deploy.suffix)
            self.sink.post({CONTROL.model_deployed.suffix: version})
            self.sink.message(f"Model v{version} deployed to {self.settings.edge_prefix}")
        except Exception as exc:
            self.sink.message(str(exc))

    async def _to_edge(self, run: ActiveRun, model: str, result: dict[str, Any],
                       transfer: Transfer) -> str:
        """Send the model and its card to the edge; the model's path as the edge opens it."""
        # the probe beside it: the edge's physics check (also for the int8 copy)
        files = [model] + [str(result[k]) for k in ("card", "probe") if result.get(k)]
        if self.settings.int8_models and result.get("int8_model"):
            files.append(str(result["int8_model"]))
        run.reporter = Reporter("export", CallbackQueue(lambda i: self._progress(run, i)),
                                threading.Event())
        try:
            moved = await asyncio.get_running_loop().run_in_executor(
                None, transfer.model_to_edge, files, run.reporter)
        finally:
            run.reporter = None
        return moved[0].path
