"""Lanes: one process per input PV, for detectors whose frames are split over several PVs.

This is the edge process's side (:class:`LaneSet`, a ``FrameSource``); the lane
process is :mod:`~ptychoflow.edge.lanes.child`, what the two say to each other
:mod:`~ptychoflow.edge.lanes.protocol`, one lane's end here (and its restarts)
:mod:`~ptychoflow.edge.lanes.handle`.

At thousands of frames a second the edge's Python work per frame, not the
engine, sets the pace, and one process's Python takes turns on one interpreter
lock. areaDetector scales the same way: NDPluginScatter hands frames round
several NDPluginPva. A lane does for its PV what the edge process does for one
input (decode, queue, check, position, preprocess, its own engine, hot swap)
and hands each batch's outputs over in a shared-memory slot; the edge process
posts, stitches and serves every PV, then gives the slot back (a lane with no
free slot waits: a slow publisher slows the lanes, never grows memory). No
lane can count gaps in uniqueId (the scatter interleaves them), so each
reports every frame it took, in order, and the edge process counts the ids no
lane saw (:mod:`~ptychoflow.edge.lanes.ledger`). docs/edge.md tells the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ptychoflow.edge.channel import ChannelClosed, Pipe, Slots
from ptychoflow.edge.infer.hotswap import WARMUP_TIMEOUT_S
from ptychoflow.edge.infer.modelcheck import ModelError, resolve_model_path
from ptychoflow.edge.lanes.child import SLOTS, lane_main, slot_bytes
from ptychoflow.edge.lanes.handle import (
    NO_IMAGE,
    RESTART_AFTER_S,
    LaneBatch,
    LaneHandle,
    gpus_for_lanes,
    nothing,
    restart_delay,
)
from ptychoflow.edge.lanes.ledger import FrameLedger
from ptychoflow.edge.lanes.protocol import (
    Account,
    Accounted,
    Closed,
    Counts,
    Enable,
    Follow,
    Handover,
    Load,
    Ready,
    Refused,
    Say,
    Seen,
    Start,
    Stop,
    Swapped,
)
from ptychoflow.edge.messages import CLOSE, ModelChanged, ModelNote, QueueItem
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.ntnda import Frame
from ptychoflow.pvnames import EDGE

log = logging.getLogger(__name__)

IDLE_SETTLE_S = 1.0
"""With no frame for this long and none in any lane, the ledger's tail is settled."""


class LaneSet:
    """Runs one lane process per input PV and feeds their batches to the publisher's FIFO."""

    def __init__(self, settings: EdgeSettings, model_dir: Path, inputs: list[str],
                 fifo: queue.Queue[QueueItem], message: Callable[[str], None],
                 conf: Mapping[str, str] | None = None) -> None:
        if settings.workers > 1:
            raise ValueError(f"--workers {settings.workers} with {len(inputs)} inputs: each "
                             "lane runs its own engine (on its own GPU where there are "
                             "several); drop --workers, or give one input")
        self.fifo = fifo
        self.message = message
        self.model_dir = model_dir
        self.settings = settings
        self.enabled = True
        self._stopping = False
        self._stopped = threading.Event()  # wakes a reader waiting to restart its lane
        self._fifo_closed = False
        self._loading: set[int] = set()
        self._lock = threading.Lock()
        self.ledger = FrameLedger(len(inputs))
        self._activity = time.monotonic()  # when a lane last accounted for a frame
        # every frame accounted for and nothing in flight since: the count of frames no
        # lane saw is final until the next frame (said once in the log, for tests and
        # for whoever reads the log after a scan)
        self.settled = False
        self._held = 0  # frames dead lanes had received and never accounted for
        self._all_connected = False
        self._threads = settings.threads or max(1, len(os.sched_getaffinity(0)) // len(inputs))
        self._model = str(resolve_model_path(settings.model, model_dir, settings.int8)) \
            if settings.model else ""
        self._conf = dict(conf) if conf is not None else None
        self._gpus = gpus_for_lanes(len(inputs))
        self._retired: list[Slots] = []  # slots of lanes that died, freed at close
        self.handles: list[LaneHandle] = []
        try:
            for i, pv in enumerate(inputs):
                self.handles.append(self._spawn(i, pv))
            for h in self.handles:
                self._await_ready(h)
        except BaseException:
            self._kill()
            raise
        first = self.handles[0].model
        self.model = self._note(first) if first is not None else None

    def _spawn(self, index: int, pv: str, model: str | None = None) -> LaneHandle:
        """Start lane ``index`` on ``pv`` with fresh slots; ``model`` None: the first one."""
        ctx = mp.get_context("spawn")
        slots = Slots.create(SLOTS, slot_bytes(self.settings))
        mine, theirs = ctx.Pipe()
        lane_settings = dataclasses.replace(self.settings, input=pv, workers=1,
                                            threads=self._threads,
                                            model=self._model if model is None else model)
        proc = ctx.Process(target=lane_main, name=f"edge-lane{index}", daemon=True,
                           args=(index, lane_settings, str(self.model_dir), theirs,
                                 slots.names, self._conf, self._gpus[index]))
        proc.start()
        theirs.close()
        return LaneHandle(index, pv, proc, Pipe(mine), slots)

    def _await_ready(self, h: LaneHandle) -> None:
        """The lane has loaded its model (or had none to load); ModelError if it refused."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while not h.pipe.poll(0.2):
            if not h.proc.is_alive():
                raise ModelError(f"lane {h.index} ({h.pv}) exited with "
                                 f"{h.proc.exitcode} while starting")
            if time.monotonic() > deadline:
                raise ModelError(f"lane {h.index} ({h.pv}) did not start in "
                                 f"{WARMUP_TIMEOUT_S:.0f} s")
        try:
            ready = h.pipe.recv()
        except ChannelClosed as exc:
            raise ModelError(f"lane {h.index} ({h.pv}) exited while starting") from exc
        assert isinstance(ready, Ready), ready
        if ready.error:
            raise ModelError(ready.error)
        h.model = ready.model

    def _restart(self, h: LaneHandle) -> bool:
        """Replace lane ``h``, which died, by a new process on the same input and model.

        Its counts carry on from the dead one's. A lane that dies again within
        RESTART_AFTER_S of its restart is restarted after a wait that doubles each
        time (:func:`restart_delay`). False when the edge is stopping meanwhile, or
        the lane could not be started again.
        """
        # the frames it held and never accounted for go into the ledger's count of
        # frames no lane saw once the other lanes are past them; those it had received
        # are the edge's losses, not the network's: Dropped_RBV (as of its last counts;
        # any received after them stay counted as missed)
        held = max(0, h.counts.get("received", 0) - h.accounted)
        for k in h.base:
            h.base[k] += h.counts.get(k, 0)
        h.base["dropped"] += held
        h.counts = {k: 0 for k in h.base}
        with self._lock:
            h.accounted = 0
            self._held += held
            self._all_connected = False
        h.quick = h.quick + 1 if time.monotonic() - h.restarted < RESTART_AFTER_S else 0
        delay = restart_delay(h.quick)
        if delay:
            self.message(f"lane {h.index} ({h.pv}) died again within {RESTART_AFTER_S:.0f} s "
                         f"of its restart ({h.quick} times running); restarting it in "
                         f"{delay:.0f} s; its frames are lost meanwhile, counted in "
                         f"{EDGE.missed.suffix} (the edge's log says why it died)")
            if self._stopped.wait(delay):
                return False
        h.pipe.close()
        self._retired.append(h.slots)
        # the model the other lanes serve: one swapped in while this lane was down
        note = next((x.model for x in self.handles if x is not h and x.model is not None
                     and x.proc.is_alive()), h.model)
        model = note.path if note is not None else ""
        try:
            new = self._spawn(h.index, h.pv, model)
            self._await_ready(new)
        except (ModelError, OSError) as exc:
            self.message(f"lane {h.index} ({h.pv}) could not be restarted: {exc}")
            return False
        h.replace(new)
        h.restarted = time.monotonic()
        h.send(Enable(self.enabled))
        if h.last is not None:  # the source re-sends its current frame: not twice
            h.send(Seen(*h.last))
        h.send(Start())
        self.message(f"lane {h.index} ({h.pv}) restarted; frames it held are counted in "
                     f"{EDGE.dropped.suffix}, those sent to it while it was down in "
                     f"{EDGE.missed.suffix}")
        return True

    def _note(self, note: ModelNote) -> ModelNote:
        """A lane's note as the publisher shows it: where all the lanes run."""
        return dataclasses.replace(note, where=f"{len(self.handles)} lanes, each {note.where}")

    def start(self) -> None:
        """Start the readers, then let every lane follow its input."""
        for h in self.handles:
            h.reader = threading.Thread(target=self._read, args=(h,), daemon=True,
                                        name=f"edge-lane{h.index}-rx")
            h.reader.start()
            h.send(Start())

    # ---- commands ----------------------------------------------------------------------
    def follow(self, pvs: list[str]) -> None:
        """One PV per lane; another number of PVs needs a restart (ValueError)."""
        if len(pvs) != len(self.handles):
            raise ValueError(f"this edge runs {len(self.handles)} lanes: give "
                             f"{len(self.handles)} input PVs, or restart it with --input "
                             "naming as many PVs as it should run lanes")
        for h, pv in zip(self.handles, pvs, strict=True):
            h.pv = pv
            h.send(Follow([pv]))

    def set_enabled(self, on: bool) -> None:
        """Edge:Enable, for every lane."""
        self.enabled = on
        for h in self.handles:
            h.send(Enable(on))

    def request(self, spec: str) -> None:
        """Edge:Model:Load: every lane loads, checks and warms up ``spec``, then swaps."""
        with self._lock:
            if self._loading:
                raise ValueError("a model is already being loaded; wait for Message_RBV to "
                                 "say it is done")
            resolve_model_path(spec, self.model_dir, self.settings.int8)  # refuse at the put
            self._loading = {h.index for h in self.handles if h.proc.is_alive()}
        for h in self.handles:
            h.send(Load(spec))

    # ---- counters ----------------------------------------------------------------------
    @property
    def bad(self) -> int:
        """Bad frames the lanes skipped."""
        return sum(h.base["bad"] + h.counts["bad"] for h in self.handles)

    @property
    def dropped(self) -> int:
        """Frames the lanes received and dropped, or had no model for."""
        return sum(h.base["dropped"] + h.counts["dropped"] for h in self.handles)

    @property
    def unplaced(self) -> int:
        """Frames the lanes found no position for."""
        return sum(h.base["unplaced"] + h.counts.get("unplaced", 0) for h in self.handles)

    @property
    def missed(self) -> int:
        """Frames no lane saw (the ledger's count; final once nothing is in flight)."""
        with self._lock:
            idle = time.monotonic() - self._activity > IDLE_SETTLE_S
            if idle and all(h.counts["received"] <= h.accounted for h in self.handles):
                self.ledger.settle_all()  # nothing in flight anywhere: the tail is final
                if not self.settled:
                    self.settled = True
                    log.info("ledger settled: %d frame(s) no lane saw", self.ledger.missed)
            # ids a dead lane had received count as dropped (see _restart), not missed
            return max(0, self.ledger.missed - self._held)

    # ---- the readers -------------------------------------------------------------------
    def _read(self, h: LaneHandle) -> None:
        from ptychoflow.edge.threads import name_os_thread

        name_os_thread()
        attr = self.settings.scan_id_attribute
        while True:
            try:
                msg = h.pipe.recv()
            except ChannelClosed:
                if self._stopping:
                    break
                h.proc.join(5)
                log.error("lane %d (%s) exited with %s", h.index, h.pv, h.proc.exitcode)
                self.message(f"lane {h.index} ({h.pv}) has gone (exit code "
                             f"{h.proc.exitcode}); restarting it")
                h.slots.forget_views()  # the batches already queued keep their own views
                with self._lock:
                    self._loading.discard(h.index)
                if self._restart(h):
                    continue
                break
            match msg:
                case Handover():
                    self._handover(h, msg, attr)
                case Account(frames):
                    self._account(h, frames)
                case Counts(counts):
                    h.counts = counts
                    self._connected(h)
                case Say(text):
                    self.message(text)
                case Swapped(note):
                    self._lane_model(h, note)
                case Refused():
                    with self._lock:
                        self._loading.discard(h.index)
                case Closed(counts):
                    h.counts = counts
                    break
        h.slots.forget_views()
        h.closed.set()
        self._close_fifo()

    def _handover(self, h: LaneHandle, m: Handover, attr: str) -> None:
        """A lane's batch to the publisher: its images read in place from the slot."""
        if m.account:
            self._account(h, m.account)
        frames = [Frame(NO_IMAGE, u, t, a)
                  for u, t, a in zip(m.unique_ids, m.timestamps, m.attributes(attr), strict=True)]
        if m.slot is None:
            assert m.inline is not None
            (phase, amp), release = m.inline, nothing
        else:
            views = h.slots.arrays(m.slot, *((m.shape, m.shape) if m.amplitude
                                             else (m.shape,)))
            phase, amp = views[0], (views[1] if m.amplitude else None)
            release = h.freer(m.slot)
        h.last = (m.unique_ids[-1], m.timestamps[-1])
        self.fifo.put(LaneBatch(h.index, frames, m.arrivals, m.positions, phase, amp, release))

    def _connected(self, h: LaneHandle) -> None:
        """Say so once every lane is connected to its input (and again after a loss)."""
        with self._lock:
            every = all(x.counts.get("connected") for x in self.handles)
            news, self._all_connected = every and not self._all_connected, every
        if news:
            self.message(f"connected to all {len(self.handles)} inputs")

    def _account(self, h: LaneHandle, accounted: Accounted) -> None:
        with self._lock:
            self.ledger.account(h.index, accounted)
            h.accounted += len(accounted)
            self._activity = time.monotonic()
            self.settled = False

    def _lane_model(self, h: LaneHandle, note: ModelNote) -> None:
        """A lane swapped; once every lane serves the same model, the publisher hears of it."""
        with self._lock:
            h.model = note
            self._loading.discard(h.index)
            models = {x.model.path if x.model else None  # the file, wherever a lane runs it
                      for x in self.handles if x.proc.is_alive()}  # not a dead one
        if len(models) == 1:
            self.fifo.put(ModelChanged(self._note(note)))

    # ---- lifetime ----------------------------------------------------------------------
    def stop(self) -> None:
        """Tell every lane to finish the frames in hand; CLOSE follows the last batch."""
        self._stopping = True
        self._stopped.set()
        for h in self.handles:
            h.send(Stop())
            if not h.proc.is_alive():
                h.closed.set()
        self._close_fifo()

    def _close_fifo(self) -> None:
        """Once stopping and every lane is done: CLOSE to the publisher, once."""
        with self._lock:
            if (not self._stopping or self._fifo_closed
                    or not all(h.closed.is_set() for h in self.handles)):
                return
            self._fifo_closed = True
        self.fifo.put(CLOSE)

    def close(self) -> None:
        """After the publisher took CLOSE: end the processes, free the slots."""
        for h in self.handles:
            if h.reader is not None:
                h.reader.join(10)
            h.proc.join(30)
        self._kill()

    def _kill(self) -> None:
        self._stopped.set()
        for h in self.handles:
            if h.proc.is_alive():
                h.proc.terminate()
                h.proc.join(10)
            h.pipe.close()
        for slots in [h.slots for h in self.handles] + self._retired:
            slots.close()
