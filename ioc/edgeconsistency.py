"""The IOC's eye on the edge's physics check: drift in Auto mode starts a retraining run.

Beside :mod:`ptychoflow.ioc.edgerecorder` (which records the edge's speed), a
:class:`DriftWatch` monitors ``Edge:Consistency_RBV`` and
``Edge:Model:Version_RBV`` when ``edge_prefix`` is set, looks up the served
model's card value (the registry's metrics, else the card beside the
registered model) and feeds :class:`~ptychoflow.ioc.consistency.ConsistencyRule`.
When the rule fires and Auto is on, ``launch(scan, reason)`` runs on the IOC's
event loop with the current scan: the newest complete scan file under the data
root (the one the edge has been seeing, or the one just finished), else
``Scan:Path``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptychoflow.ioc.consistency import ConsistencyRule
from ptychoflow.ioc.registry import Registry
from ptychoflow.modelcard import ModelCard, ModelCardError, card_path
from ptychoflow.physcheck import CARD_METRIC
from ptychoflow.pvnames import CONTROL, EDGE, PVSpec

log = logging.getLogger(__name__)

Records = Callable[[PVSpec], Any]
"""The IOC's record of a control PV (``Workflow:Auto`` and the rule's settings are read
from them at each update, so a put applies at once)."""


def card_reference(registry: Registry, version: int) -> float | None:
    """The physics-check value recorded for a registered model version (None: unknown)."""
    model = registry.model(version) if version > 0 else None
    if model is None:
        return None
    value = (model.get("metrics") or {}).get(CARD_METRIC)
    if not isinstance(value, int | float):
        try:
            value = ModelCard.load(card_path(model["path"])).metrics.get(CARD_METRIC)
        except ModelCardError:
            return None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class DriftWatch:
    """Monitors the edge's physics check and starts retraining runs (see the module doc)."""

    def __init__(self, edge_prefix: str, registry: Registry, records: Records,
                 current_scan: Callable[[], Path | None],
                 launch: Callable[[Path, str], bool], message: Callable[[str], None],
                 context: Callable[[], Any] | None = None) -> None:
        self.prefix = edge_prefix
        self.registry = registry
        self.records = records
        self.current_scan = current_scan
        self.launch = launch
        self.message = message
        self.rule = ConsistencyRule()
        self.version = 0
        self._refs: dict[int, float | None] = {}
        self._lock = threading.Lock()
        self._context = context
        self._ctx: Any = None
        self._subs: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe; the monitors connect whenever the edge appears."""
        from p4p.client.thread import Context

        self.loop = loop
        self._ctx = self._context() if self._context else Context("pva")
        self._subs = [self._ctx.monitor(EDGE.model_version.name(self.prefix), self._on_version),
                      self._ctx.monitor(EDGE.consistency.name(self.prefix), self._on_value)]

    def _on_version(self, value: Any) -> None:
        if isinstance(value, Exception):
            return
        with self._lock:
            self.version = int(value)
            self.rule.rearm()

    def _reference(self) -> float | None:
        if self.version not in self._refs:  # a registered model's figures do not change
            self._refs[self.version] = card_reference(self.registry, self.version)
        return self._refs[self.version]

    def _on_value(self, value: Any) -> None:
        if isinstance(value, Exception):
            return
        try:
            self.update(float(value), time.monotonic())
        except Exception:  # a monitor callback must not die; the next update tries again
            log.exception("physics-check drift rule")

    def update(self, value: float, now: float) -> None:
        """One running value from the edge."""
        auto = bool(self.records(CONTROL.workflow_auto).get())
        factor = float(self.records(CONTROL.model_consistency_factor).get())
        hold = float(self.records(CONTROL.model_consistency_hold).get())
        with self._lock:
            self.rule.factor, self.rule.hold_s = factor, hold
            if not auto:
                self.rule.rearm()
                return
            reason = self.rule.update(value, self._reference(), now)
        if reason is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._retrain, reason)

    def _retrain(self, reason: str) -> None:
        """On the event loop: start the run, or say why not and try after another hold."""
        scan = self.current_scan()
        if scan is None:
            self.message(f"Auto: {reason}, but there is no complete scan to retrain on")
            return
        if not self.launch(scan, reason):
            with self._lock:
                self.rule.defer(time.monotonic())
            self.message(f"Auto: {reason}; no room for a retraining run now, trying again "
                         "after another hold")
            return
        self.message(f"Auto: retraining on {scan.name}: {reason}")

    def close(self) -> None:
        """Stop the monitors."""
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
