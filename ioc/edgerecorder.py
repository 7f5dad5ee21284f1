"""The edge's speed over time, kept by the IOC for the run reports.

The edge publishes its frame rate, latency and frame counts as PVs but keeps no
history; the IOC (when ``edge_prefix`` is set) monitors them and appends every
update, stamped with this host's clock (the clock the scan files' times come
from), to ``edge-samples.jsonl`` in the work folder. The file is bounded: past
``max_bytes`` it is renamed to ``edge-samples.jsonl.1`` (replacing the older one)
and a new one starts, so at most twice ``max_bytes`` stay on disk. Monitor
callbacks only queue the sample; a writer thread appends a batch twice a second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychoflow.pvnames import EDGE

log = logging.getLogger(__name__)

SAMPLED = (EDGE.frame_rate, EDGE.latency, EDGE.dropped, EDGE.processed)
"""The edge PVs the IOC records."""
SAMPLES_FILE = "edge-samples.jsonl"
MAX_BYTES = 4_000_000  # about two hours of the edge's twice-a-second status per file


@dataclass(frozen=True)
class Sample:
    """One update of an edge PV: when it arrived (Unix s), which PV (suffix), its value.

    ``value`` is NaN for a disconnect, so a plot shows the gap.
    """

    t: float
    suffix: str
    value: float


class SampleLog:
    """The rolled pair of sample files: append batches, read a time window back."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    @property
    def older(self) -> Path:
        """The previous generation."""
        return self.path.with_name(self.path.name + ".1")

    def append(self, samples: Iterable[Sample]) -> None:
        """Append samples (one JSON object per line), rolling the file when it is full."""
        lines = "".join(json.dumps({"t": round(s.t, 3), "pv": s.suffix,
                                    "v": None if math.isnan(s.value) else s.value}) + "\n"
                        for s in samples)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.stat().st_size >= self.max_bytes:
                os.replace(self.path, self.older)
        except FileNotFoundError:
            pass
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)

    def exists(self) -> bool:
        """Whether anything was ever recorded here."""
        return self.path.exists() or self.older.exists()

    def read(self, start: float = -math.inf, end: float = math.inf) -> list[Sample]:
        """Samples with ``start <= t <= end``, oldest first (a torn last line is skipped)."""
        out: list[Sample] = []
        for p in (self.older, self.path):
            try:
                text = p.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    d = json.loads(line)
                    s = Sample(float(d["t"]), str(d["pv"]),
                               math.nan if d["v"] is None else float(d["v"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if start <= s.t <= end:
                    out.append(s)
        out.sort(key=lambda s: s.t)
        return out


class EdgeRecorder:
    """p4p monitors on the edge's speed PVs, written to a :class:`SampleLog`."""

    def __init__(self, edge_prefix: str, path: Path, max_bytes: int = MAX_BYTES,
                 flush_s: float = 0.5,
                 context: Callable[[], Any] | None = None) -> None:
        self.prefix = edge_prefix
        self.log = SampleLog(path, max_bytes)
        self.flush_s = flush_s
        self._context = context
        self._queue: queue.Queue[Sample] = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one appender at a time (writer thread, flush)
        self._ctx: Any = None
        self._subs: list[Any] = []
        self._writer = threading.Thread(target=self._write_loop, name="edge-recorder",
                                        daemon=True)

    def start(self) -> None:
        """Subscribe (the monitors connect whenever the edge appears) and start writing."""
        from p4p.client.thread import Context

        self._ctx = self._context() if self._context else Context("pva")
        for spec in SAMPLED:
            self._subs.append(self._ctx.monitor(spec.name(self.prefix),
                                                self._callback(spec.suffix),
                                                notify_disconnect=True))
        self._writer.start()

    def _callback(self, suffix: str) -> Callable[[Any], None]:
        def cb(value: Any) -> None:
            try:
                v = math.nan if isinstance(value, Exception) else float(value)
                self._queue.put_nowait(Sample(time.time(), suffix, v))
            except (queue.Full, TypeError, ValueError):
                pass  # the writer is behind or the value is not a number: skip one sample
        return cb

    def _drain(self) -> None:
        with self._lock:
            batch: list[Sample] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.log.append(batch)
            except OSError as exc:  # a full disk must not stop the IOC
                log.warning("edge samples not written to %s: %s", self.log.path, exc)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._drain()
        self._drain()

    def flush(self) -> None:
        """Write what is queued now (the report calls this before reading)."""
        self._drain()

    def close(self) -> None:
        """Stop the monitors and write the last samples."""
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(5)
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
