"""The edge's pvAccess server: every PV of the ``EDGE`` table in ptychoflow.pvnames.

Images are posted as complete NTNDArray values built by
:func:`ptychoflow.ntnda.make_frame` on SharedPVs created without ``nt=``, so
``uniqueId`` and ``dataTimeStamp`` pass through unchanged. Puts to the
writable PVs call the handler registered for that PV (:meth:`EdgeServer.on_put`,
next to the PV it serves); a handler that raises ``ValueError`` fails the put
with its message, so a client sees why. PVs are named by their entry in the
table (``EDGE.phase``), never by a string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from p4p.nt import NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from ptychoflow.ntnda import ImageStream, make_frame
from ptychoflow.pvnames import EDGE, PVSpec

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]


class _PutHandler:
    """Converts the put value to the PV's Python type and hands it to the service."""

    def __init__(self, fn: Handler | None, suffix: str, cast: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._suffix = suffix
        self._cast = cast

    def put(self, pv: SharedPV, op: Any) -> None:
        if self._fn is None:
            op.done(error=f"{self._suffix} is read-only")
            return
        try:
            value = self._cast(_plain(op.value()))
            self._fn(value)
        except (TypeError, ValueError) as exc:
            op.done(error=str(exc))
            return
        pv.post(value)
        op.done()


def _plain(v: Any) -> Any:
    """The bare value of an unwrapped NTScalar (whose str() adds a time stamp)."""
    raw = getattr(v, "raw", None)
    return raw["value"] if raw is not None else v


_CASTS: dict[str, Callable[[Any], Any]] = {"s": str, "d": float, "i": int, "l": int}


class EdgeServer:
    """Serves the edge PVs under ``prefix``; writable ones refuse puts until :meth:`on_put`."""

    def __init__(self, prefix: str, conf: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self.pvs: dict[str, SharedPV] = {}
        self._last: dict[str, Any] = {}
        self._streams: dict[str, ImageStream] = {}
        self._handlers: dict[str, _PutHandler] = {}
        for spec in EDGE:
            self.pvs[spec.suffix] = self._make_pv(spec)
        providers = [{spec.name(prefix): self.pvs[spec.suffix] for spec in EDGE}]
        if conf is None:
            self.server = Server(providers=providers)
        else:
            self.server = Server(providers=providers, conf=dict(conf), useenv=False)

    def _make_pv(self, spec: PVSpec) -> SharedPV:
        if spec.record == "NTNDArray":
            return SharedPV(initial=make_frame(np.zeros((1, 1), np.float32), 0, 0.0))
        code = spec.record.split(":", 1)[1]
        initial: Any = str(spec.initial) if code == "s" else spec.initial
        handler = _PutHandler(None, spec.suffix, _CASTS[code])
        if spec.access == "W":
            self._handlers[spec.suffix] = handler
        return SharedPV(handler=handler, nt=NTScalar(code, display=True), initial=initial)

    def on_put(self, spec: PVSpec, fn: Handler) -> None:
        """Call ``fn(value)`` for each put to ``spec`` (a writable PV of the table)."""
        if spec.suffix not in self._handlers:
            raise ValueError(f"{spec.suffix} is not a writable edge PV")
        self._handlers[spec.suffix]._fn = fn

    def post_scalar(self, spec: PVSpec, value: Any) -> None:
        """Update a scalar PV, only when the value changed, to spare the clients."""
        if self._last.get(spec.suffix) != value:
            self._last[spec.suffix] = value
            self.pvs[spec.suffix].post(value)

    def post_image(self, spec: PVSpec, array: np.ndarray, unique_id: int, timestamp: float,
                   attributes: dict[str, Any] | None = None) -> None:
        """Post a float32 image carrying the source frame's id and time stamp.

        Called from the publishing thread only: each PV's value is refilled, not rebuilt.
        """
        stream = self._streams.setdefault(spec.suffix, ImageStream())
        self.pvs[spec.suffix].post(stream.value(array, unique_id, timestamp, attributes))

    def set_message(self, text: str) -> None:
        """``Message_RBV``: the last status or error in words."""
        log.info("%s", text)
        self.pvs[EDGE.message.suffix].post(text[:1024])

    def close(self) -> None:
        """Stop serving."""
        self.server.stop()
