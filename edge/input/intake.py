"""Frames in, batches out: the input side of the edge, up to the engine.

An :class:`Intake` follows one NTNDArray PV and turns its frames into
submitted inference batches:

* the p4p monitor callback only decodes and appends to the bounded
  :class:`FrameQueue` (drop-oldest, counted);
* the *collector* thread takes micro-batches, refuses bad frames, reads the
  scan positions, preprocesses as the model card says, submits each batch to
  the runner and puts it on ``fifo``; it picks up a hot-swapped model between
  two batches, and puts a :class:`~ptychoflow.edge.messages.ModelChanged` note
  on ``fifo`` so the consumer learns of it in order (the old model closes
  itself once its last batch is published: :meth:`Served.retire`).

The consumer of ``fifo`` is the edge's publisher (one intake in the edge
process) or a lane's sender (one intake per lane process, see
:mod:`ptychoflow.edge.lanes.child`). ``fifo`` is short and bounded, so a slow
engine pushes back on the frame queue, where the drop policy lives. A lane
gives its intake an observer that hears of every frame taken or dropped, in
order, for the edge process's ledger; with one input the intake counts gaps
in uniqueId itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.infer.hotswap import HotSwapper, Served
from ptychoflow.edge.input.framequeue import FrameQueue, QueueObserver
from ptychoflow.edge.input.gaps import MAX_GAP, GapCounter
from ptychoflow.edge.input.monitor import Incoming, InputMonitor
from ptychoflow.edge.input.positions import PositionSource
from ptychoflow.edge.messages import CLOSE, Every, ModelChanged, Position
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.threads import name_os_thread
from ptychoflow.ntnda import Frame
from ptychoflow.pvnames import EDGE


@dataclass
class LocalBatch:
    """A batch submitted to this process's runner; its outputs come with the future."""

    future: Future[list[np.ndarray]]
    frames: list[Frame]
    arrivals: list[float]
    positions: list[Position]
    served: Served
    lane: int = 0
    inputs: np.ndarray | None = None  # the network inputs, kept for the physics check
    check_rows: list[int] = field(default_factory=list)  # frames to check, once

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(phase, amplitude or None), each (n, H, W); raises what the engine raised.

        The first call also runs the physics check on :attr:`check_rows`.
        """
        outs = self.future.result()
        info = self.served.info
        n = len(self.frames)
        p = outs[info.phase_index]
        phase = p.reshape(n, *p.shape[-2:])
        amp = None
        if info.amplitude_index is not None:
            a = outs[info.amplitude_index]
            amp = a.reshape(n, *a.shape[-2:])
        check = self.served.check
        if self.check_rows and check is not None and self.inputs is not None:
            rows, self.check_rows = self.check_rows, []
            check.apply(self.frames, self.inputs, rows, phase, amp)
        return phase, amp

    def release(self) -> None:
        """Published: the model may retire once its last batch is out."""
        self.served.done()


class Intake:
    """Follows one input PV and feeds ``fifo`` with submitted batches (see the module doc)."""

    def __init__(self, settings: EdgeSettings, model_dir: Path, served: Served | None,
                 fifo: queue.Queue[Any], message: Callable[[str], None],
                 conf: Mapping[str, str] | None = None,
                 observer: QueueObserver[Incoming] | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.served = served
        self.model = served.note() if served is not None else None  # the first one served
        self.fifo = fifo
        self.message = message
        self.unserved = 0  # frames that arrived while no model was loaded
        # frame attributes, position channels (subscribed by each lane's own intake) or a file
        self.positions = PositionSource.from_settings(settings, conf, message)
        self.queue: FrameQueue[Incoming] = FrameQueue(settings.queue_size)
        # a lane's observer accounts for every frame, in order, for the edge process's
        # ledger; the lane's own ids skip the other lanes' frames, so it counts no gaps
        self.queue.observer = observer
        self.enabled = True
        self.bad = 0
        # uniqueId gaps: frames lost before they reached the edge
        self.gaps = GapCounter(counting=observer is None)
        self.accepted = 0  # frames put on the queue (each is then published, bad or dropped)
        self.unplaced = 0  # frames published without a position: left off the map
        self._say = Every(1.0)  # bad frames, frames without a model: a message a second
        self._say_unplaced = Every(1.0)
        self._stop = threading.Event()
        self.swapper = HotSwapper(settings, model_dir, message, on_refused)
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
    def connected(self) -> bool:
        """Connected to the input PV."""
        return self.monitor.connected

    @property
    def missed(self) -> int:
        """Frames that never reached the edge: gaps in uniqueId."""
        return self.gaps.missed

    @property
    def dropped(self) -> int:
        """Frames received and lost here: queue overflow, no model loaded."""
        return self.queue.dropped + self.unserved

    # ---- input -------------------------------------------------------------------------
    def _on_frame(self, item: Incoming) -> None:
        f = item.frame
        if f is not None:
            if f.unique_id == 0:
                return  # a server's placeholder value: detectors count frames from 1
            if not self.gaps.frame(f.unique_id, f.timestamp):
                return  # the same frame again (a reconnect re-sends the current value)
            if self.gaps.jumps:
                a, b = self.gaps.jumps.pop()
                self.gaps.jumps.clear()
                if self._say():  # at most once a second, as bad frames
                        self.message(f"uniqueId jumped from {a} to {b}: taken as a new numbering "
                                 f"(a jump over {MAX_GAP} ids), not counted in "
                                 f"{EDGE.missed.suffix}")
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
        """The frame's position (None: not stitching, or none found: counted unplaced), or a
        string saying why the frame is bad.
        """
        if item.frame is None:
            return item.error
        a = item.frame.array
        if a.size == 0:
            return f"frame {item.frame.unique_id} is empty"
        if a.dtype.kind not in "uif":
            return f"frame {item.frame.unique_id} has data type {a.dtype}, not a number type"
        geometry = served.info.geometry
        try:
            served.info.preprocess.check_frame_shape(geometry.frame_shape(a.shape))
        except ValueError as exc:
            return f"frame {item.frame.unique_id}: {exc}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"frame {item.frame.unique_id} contains NaN or infinity"
        if not self.settings.stitch:
            return None
        pos = self.positions.position(item.frame)
        if isinstance(pos, str):  # published all the same, but never placed on the map
            self.unplaced += 1
            if self._say_unplaced():
                self.message(f"{self.unplaced} frame(s) left off the map (counted in "
                             f"{EDGE.unplaced.suffix}): {pos}")
            return None
        return geometry.xy(*pos)  # the beamline's axes and unit -> ptychoflow's

    def _collect(self) -> None:
        name_os_thread()
        budget = self.settings.latency_budget_ms / 1000.0
        while True:
            new = self.swapper.take()
            if new is not None:
                old, self.served = self.served, new
                if old is not None:
                    old.retire()  # closes once its last batch is published
                self.fifo.put(ModelChanged(new.note()))
            served = self.served
            if served is None:
                self._idle_without_model()
                if self._stop.is_set() and not len(self.queue):
                    break
                continue
            max_n = served.info.batch or self.settings.batch_size
            items = self.queue.get_batch(max_n, budget, timeout=0.2)
            if not items:
                if self._stop.is_set():
                    break  # stopped and every frame in hand is submitted
                continue
            if self.enabled:
                self._submit(items, served)
        self.fifo.put(CLOSE)

    def _submit(self, items: list[Incoming], served: Served) -> None:
        """Check, preprocess and submit (frames of one shape per batch)."""
        frames, arrivals, positions = [], [], []
        if self.settings.stitch:  # positions may come after their frames: wait once a batch
            self.positions.settle([it.frame for it in items if it.frame is not None],
                                  max(it.arrival for it in items))
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
                stack = served.info.geometry.frames(np.stack([f.array for f in group]))
                x = served.info.preprocess(stack)
            except (ValueError, TypeError) as exc:  # never let one batch stop the edge
                for _ in group:
                    self.bad_frame(f"preprocessing failed: {exc}")
            else:
                self._submit_finite(x, group, [arrivals[i] for i in idx],
                                    [positions[i] for i in idx], served)
            taken = set(idx)
            keep = [i for i in range(len(frames)) if i not in taken]
            frames = [frames[i] for i in keep]
            arrivals = [arrivals[i] for i in keep]
            positions = [positions[i] for i in keep]

    def _submit_finite(self, x: np.ndarray, group: list[Frame], arrivals: list[float],
                       positions: list[Position], served: Served) -> None:
        """Submit the frames whose network input is finite; the others are bad frames.

        A frame of finite values can still overflow float32, the network's input type
        (float64 counts beyond 3.4e38, or summed in binning): its prediction would be
        infinite and spoil the map where it lands.
        """
        finite = np.isfinite(x.reshape(len(group), -1)).all(axis=1)
        if not finite.all():
            for k in np.flatnonzero(~finite):
                self.bad_frame(f"frame {group[k].unique_id} has values beyond float32, the "
                               "network's input type, once preprocessed")
            keep = np.flatnonzero(finite)
            x, group = x[keep], [group[k] for k in keep]
            arrivals, positions = [arrivals[k] for k in keep], [positions[k] for k in keep]
        if group:
            served.hold()
            rows = served.check.rows(group) if served.check is not None else []
            self.fifo.put(LocalBatch(served.runner.submit(x), group, arrivals, positions,
                                     served, inputs=x if rows else None, check_rows=rows))

    def _idle_without_model(self) -> None:
        """No model yet: take frames off the queue and count them, so none is lost silently."""
        items = self.queue.get_batch(self.settings.batch_size, 0.0, timeout=0.2)
        if items:
            self.unserved += len(items)
            if self._say():
                self.message(f"no model loaded: {self.unserved} frame(s) not processed (counted "
                             f"in {EDGE.dropped.suffix}); put a model path to "
                             f"{EDGE.model_load.suffix}")

    # ---- lifetime ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop following; the collector submits the frames in hand, then puts CLOSE."""
        self.monitor.close()
        self._stop.set()
        self.queue.close()
        self._thread.join(30)
        self.positions.close()

    def close(self) -> None:
        """After the consumer has taken CLOSE: release the model(s) still held."""
        self.swapper.join(30)
        late = self.swapper.take()
        if late is not None:
            late.close()
        if self.served is not None:
            self.served.close()
