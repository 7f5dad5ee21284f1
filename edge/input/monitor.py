"""The input side: a p4p monitor on the detector's NTNDArray PV that survives restarts.

The callback does the least possible, decode the value into a
:class:`ptychoflow.ntnda.Frame` and stamp its arrival time, and hands it to
the bounded :class:`~ptychoflow.edge.input.framequeue.FrameQueue`; everything else runs
on the edge's own threads. The p4p monitor re-subscribes by itself when the
source goes away and comes back; disconnects and reconnects are reported to
``on_status`` so the service can say so in ``Message_RBV``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ptychoflow.edge.threads import name_os_thread
from ptychoflow.ntnda import Frame, is_placeholder, read_frame

log = logging.getLogger(__name__)

# Ask the server for a deep per-subscriber queue, so a burst waits in the server
# instead of being squashed into the latest frame. No ``pipeline=true``: a
# pvAccessCPP server (areaDetector's NDPluginPva, pvapy) answered it with
# repeated copies of the same update.
QUEUE_SIZE = 64


def monitor_request(queue_size: int = QUEUE_SIZE) -> str:
    """The pvRequest of the input monitor: ``queue_size`` updates held per subscriber."""
    return f"record[queueSize={int(queue_size)}]field()"


@dataclass
class Incoming:
    """A frame as it enters the edge (``arrival`` is time.monotonic()), or a bad one."""

    frame: Frame | None
    arrival: float
    error: str = ""
    unique_id: int = 0  # of a frame that did not decode, where it could be read


class InputMonitor:
    """Follows one NTNDArray PV; ``sink`` receives every decoded frame (or decode error)."""

    def __init__(self, sink: Callable[[Incoming], None],
                 on_status: Callable[[str], None] | None = None,
                 conf: Mapping[str, str] | None = None, queue_size: int = QUEUE_SIZE) -> None:
        from p4p.client.thread import Context

        self._request = monitor_request(queue_size)
        self._sink = sink
        self._on_status = on_status or (lambda s: None)
        if conf is None:
            self._ctx = Context("pva", nt=False)
        else:
            self._ctx = Context("pva", conf=dict(conf), useenv=False, nt=False)
        self._sub: Any = None
        self._lock = threading.Lock()
        self.pv = ""
        self.connected = False
        self.received = 0
        self._named = threading.local()  # p4p runs callbacks on a pool of threads

    def follow(self, pv: str) -> None:
        """Start following ``pv`` (stops following the previous one)."""
        with self._lock:
            if self._sub is not None:
                self._sub.close()
                self._sub = None
            self.pv = pv
            self.connected = False
            if pv:
                self._sub = self._ctx.monitor(pv, self._callback, request=self._request,
                                              notify_disconnect=True)
                self._on_status(f"following {pv}; waiting for the source")

    def _callback(self, value: Any) -> None:
        if not getattr(self._named, "done", False):
            # p4p's pool threads are all "python" to the system; per-thread CPU
            # (top -H, the benchmark's breakdown) should say which one decodes frames
            self._named.done = True
            name_os_thread("edge-input")
        if isinstance(value, Exception):
            if self.connected:
                self.connected = False
                self._on_status(f"source {self.pv} went away ({type(value).__name__}); "
                                "waiting for it to come back")
            return
        now = time.monotonic()
        if not self.connected:
            self.connected = True
            self._on_status(f"connected to {self.pv}")
        try:
            item = Incoming(read_frame(value), now)
        except (ValueError, KeyError, TypeError) as exc:
            # checked only here, off the per-frame path: a value that decodes goes on, and
            # the service skips uniqueId 0 as a placeholder whatever it carries
            if is_placeholder(value):
                return  # the source serves no image yet: nothing to process, nothing bad
            try:
                uid = int(value["uniqueId"])
            except (KeyError, TypeError, ValueError, OverflowError):  # any PV may be followed
                uid = 0
            item = Incoming(None, now, f"undecodable frame from {self.pv}: {exc}", uid)
        self.received += 1
        self._sink(item)

    def close(self) -> None:
        """Stop following and close the client."""
        with self._lock:
            if self._sub is not None:
                self._sub.close()
                self._sub = None
        self._ctx.close()
