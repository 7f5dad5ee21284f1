"""Frames in, batches out: the input side of the edge, up to the engine.

An :class:`Intake` follows one NTNDArray PV and turns its frames into
submitted inference batches:

* the p4p monitor callback only decodes and appends to the bounded
  :class:`FrameQueue` (drop-oldest, counted);
* the *collector* thread takes micro-batches, refuses bad frames, reads the
  scan positions, preprocesses as the model card says, submits each batch to
  the runner and puts it on ``fifo``; it picks up a hot-swapped model between
  two batches, and puts a :class:`Swapped` note on ``fifo`` so the consumer
  learns of it in order.

The consumer of ``fifo`` is the edge's publisher (one intake in the edge
process) or a lane's sender (one intake per lane process, see
:mod:`ptychoflow.edge.lanes`). ``fifo`` is short and bounded, so a slow
engine pushes back on the frame queue, where the drop policy lives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.batcher import FrameQueue
from ptychoflow.edge.client import Incoming, InputMonitor
from ptychoflow.edge.ledger import GapCounter
from ptychoflow.edge.positions import PositionSource
from ptychoflow.edge.scheduling import name_os_thread
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.swap import HotSwapper, Served
from ptychoflow.ntnda import Frame

CLOSE = object()
"""Put on ``fifo`` last, once every frame in hand is submitted."""

Position = tuple[float, float] | None


class Every:
    """True at most once per ``period_s``: for messages that would otherwise come per frame."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last = -period_s

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True


@dataclass
class Swapped:
    """The collector switched models: batches after this note come from ``new``."""

    old: Served | None
    new: Served


Accounted = list[tuple[int, Any]]
"""(uniqueId, scan id attribute) of frames, in the order the intake took them."""


@dataclass
class Skipped:
    """Frames taken and not batched (dropped, bad, no model, disabled), for the ledger."""

    accounted: Accounted


@dataclass
class LocalBatch:
    """A batch submitted to this process's runner; its outputs come with the future."""

    future: Future[list[np.ndarray]]
    frames: list[Frame]
    arrivals: list[float]
    positions: list[Position]
    served: Served
    lane: int = 0
    accounted: Accounted | None = None  # with ``account``: every frame of the take

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(phase, amplitude or None), each (n, H, W); raises what the engine raised."""
        outs = self.future.result()
        info = self.served.info
        n = len(self.frames)
        p = outs[info.phase_index]
        phase = p.reshape(n, *p.shape[-2:])
        amp = None
        if info.amplitude_index is not None:
            a = outs[info.amplitude_index]
            amp = a.reshape(n, *a.shape[-2:])
        return phase, amp

    def release(self) -> None:
        """Nothing to give back: the arrays belong to the batch."""


class Intake:
    """Follows one input PV and feeds ``fifo`` with submitted batches (see the module doc)."""

    def __init__(self, settings: EdgeSettings, model_dir: Path, served: Served | None,
                 fifo: queue.Queue[Any], message: Callable[[str], None],
                 conf: Mapping[str, str] | None = None, account: bool = False) -> None:
        self.settings = settings
        self.served = served
        self.fifo = fifo
        self.message = message
        self.unserved = 0  # frames that arrived while no model was loaded
        self.positions = PositionSource(settings.positions)
        self.queue: FrameQueue[Incoming] = FrameQueue(settings.queue_size)
        # account (lanes): every frame taken is reported in order (LocalBatch.accounted,
        # Skipped), so the edge process can tell frames lost upstream
        # (ptychoflow.edge.ledger); the lane's own ids skip the other lanes' frames, so it
        # counts no gaps itself
        self.account = account
        self.queue.keep_dropped = account
        self.enabled = True
        self.bad = 0
        # uniqueId gaps: frames lost before they reached the edge
        self.gaps = GapCounter(counting=not account)
        self.accepted = 0  # frames put on the queue (each is then published, bad or dropped)
        self._say = Every(1.0)  # bad frames, frames without a model: a message a second
        self._stop = threading.Event()
        self.swapper = HotSwapper(settings, model_dir, message)
        self.monitor = InputMonitor(self._on_frame, message, conf, settings.input_queue)
        self._thread = threading.Thread(target=self._collect, name="edge-collect", daemon=True)

    def start(self) -> None:
        """Start collecting, and follow the configured input PV if there is one."""
        self._thread.start()
        if self.settings.input:
            self.monitor.follow(self.settings.input)

    def follow(self, pvs: list[str]) -> None:
        """Follow another input PV, or none (a new source: uniqueIds start afresh).

        ValueError for several: those need lanes, which start with the edge.
        """
        if len(pvs) > 1:
            raise ValueError(f"this edge follows one input; restart it with --input "
                             f"\"{' '.join(pvs)}\" to run one lane per input")
        self.gaps.reset()
        self.monitor.follow(pvs[0] if pvs else "")

    def set_enabled(self, on: bool) -> None:
        """Edge:Enable: when off, frames are taken and discarded."""
        self.enabled = on

    def request(self, spec: str) -> None:
        """Edge:Model:Load: load, check and warm up ``spec``, swap it in between batches."""
        self.swapper.request(spec)

    def seen(self, unique_id: int, timestamp: float) -> None:
        """Treat this frame as done already (a restarted lane's source re-sends it)."""
        self.gaps.seen(unique_id, timestamp)

    @property
    def dropped(self) -> int:
        """Frames lost here: queue overflow, gaps in uniqueId, no model loaded."""
        return self.queue.dropped + self.gaps.missed + self.unserved

    # ---- input -------------------------------------------------------------------------
    def _on_frame(self, item: Incoming) -> None:
        f = item.frame
        if f is not None:
            if f.unique_id == 0:
                return  # a server's placeholder value: detectors count frames from 1
            if not self.gaps.frame(f.unique_id, f.timestamp):
                return  # the same frame again (a reconnect re-sends the current value)
        else:  # it did not decode: it still takes its id (0 where that could not be read)
            self.gaps.frame(item.unique_id)
        self.accepted += 1
        self.queue.put(item)

    # ---- collector ---------------------------------------------------------------------
    def bad_frame(self, why: str) -> None:
        """Count one bad frame; say why on Message_RBV at most once a second."""
        self.bad += 1
        if self._say():
            self.message(f"bad frame skipped ({self.bad} so far): {why}")

    def _check(self, item: Incoming, served: Served) -> Position | str:
        """The frame's position, None when not stitching, or a string saying why it is bad."""
        if item.frame is None:
            return item.error
        a = item.frame.array
        if a.size == 0:
            return f"frame {item.frame.unique_id} is empty"
        if a.dtype.kind not in "uif":
            return f"frame {item.frame.unique_id} has data type {a.dtype}, not a number type"
        try:
            served.info.preprocess.check_frame_shape(a.shape)
        except ValueError as exc:
            return f"frame {item.frame.unique_id}: {exc}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"frame {item.frame.unique_id} contains NaN or infinity"
        if not self.settings.stitch:
            return None
        return self.positions.position(item.frame)

    def _collect(self) -> None:
        name_os_thread()
        budget = self.settings.latency_budget_ms / 1000.0
        while True:
            new = self.swapper.take()
            if new is not None:
                old = self.served
                self.served = new
                # the consumer closes the old model once its batches are out
                self.fifo.put(Swapped(old, new))
            served = self.served
            if served is None:
                self._idle_without_model()
                if self._stop.is_set() and not len(self.queue):
                    break
                continue
            max_n = served.info.batch or self.settings.batch_size
            items = self.queue.get_batch(max_n, budget, timeout=0.2)
            acc = self._accounted(items)
            if not items:
                if acc:
                    self.fifo.put(Skipped(acc))
                if self._stop.is_set():
                    break  # stopped and every frame in hand is submitted
                continue
            if not self.enabled:
                if acc:
                    self.fifo.put(Skipped(acc))
                continue
            if not self._submit(items, served, acc) and acc:
                self.fifo.put(Skipped(acc))
        self.fifo.put(CLOSE)

    def _accounted(self, items: list[Incoming]) -> Accounted | None:
        """With ``account``: the frames dropped before this take, then the take's own."""
        if not self.account:
            return None
        key = self.settings.scan_id_attribute
        return [(it.frame.unique_id, it.frame.attributes.get(key)) if it.frame is not None
                else (it.unique_id, None)  # 0: a frame that did not decode, id unknown
                for it in self.queue.taken_dropped + items]

    def _submit(self, items: list[Incoming], served: Served, acc: Accounted | None) -> bool:
        """Check, preprocess and submit; ``acc`` goes with the first batch. Whether one went."""
        submitted = False
        frames, arrivals, positions = [], [], []
        for it in items:
            res = self._check(it, served)
            if isinstance(res, str):
                self.bad_frame(res)
                continue
            assert it.frame is not None
            frames.append(it.frame)
            arrivals.append(it.arrival)
            positions.append(res)
        # frames of different shapes cannot share one preprocessing call
        while frames:
            shape = frames[0].array.shape
            idx = [i for i, f in enumerate(frames) if f.array.shape == shape]
            group = [frames[i] for i in idx]
            try:
                x = served.info.preprocess(np.stack([f.array for f in group]))
            except (ValueError, TypeError) as exc:  # never let one batch stop the edge
                for _ in group:
                    self.bad_frame(f"preprocessing failed: {exc}")
            else:
                self.fifo.put(LocalBatch(served.runner.submit(x), group,
                                         [arrivals[i] for i in idx],
                                         [positions[i] for i in idx], served,
                                         accounted=None if submitted else acc))
                submitted = True
            taken = set(idx)
            keep = [i for i in range(len(frames)) if i not in taken]
            frames = [frames[i] for i in keep]
            arrivals = [arrivals[i] for i in keep]
            positions = [positions[i] for i in keep]
        return submitted

    def _idle_without_model(self) -> None:
        """No model yet: take frames off the queue and count them, so none is lost silently."""
        items = self.queue.get_batch(self.settings.batch_size, 0.0, timeout=0.2)
        acc = self._accounted(items)
        if acc:
            self.fifo.put(Skipped(acc))
        if items:
            self.unserved += len(items)
            if self._say():
                self.message(f"no model loaded: {self.unserved} frame(s) not processed (counted "
                             "in Dropped_RBV); put a model path to Edge:Model:Load")

    # ---- lifetime ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop following; the collector submits the frames in hand, then puts CLOSE."""
        self.monitor.close()
        self._stop.set()
        self.queue.close()
        self._thread.join(30)

    def close(self) -> None:
        """After the consumer has taken CLOSE: release the model(s) still held."""
        self.swapper.join(30)
        late = self.swapper.take()
        if late is not None:
            late.runner.close()
        if self.served is not None:
            self.served.runner.close()
