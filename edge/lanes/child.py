"""A lane process: one input PV's frames through its own engine, outputs to the edge process.

See :mod:`ptychoflow.edge.lanes.parent` for why lanes exist and for the edge
process's side. A lane runs one :class:`~ptychoflow.edge.input.intake.Intake` on
its input PV and hands each batch's outputs to the edge process through one
of the edge's shared-memory slots (:mod:`ptychoflow.edge.channel`), with the
frames' ids, times and positions; an observer on its frame queue reports
everything the lane took or dropped, in order, for the edge's ledger of lost
frames (:mod:`ptychoflow.edge.lanes.ledger`). It waits for a free
slot when all are taken, so a slow publisher slows the lane down.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ptychoflow.edge.channel import ChannelClosed, Pipe, Slots
from ptychoflow.edge.infer.hotswap import Served, auto_streams, prepare
from ptychoflow.edge.input.intake import Intake, LocalBatch
from ptychoflow.edge.input.monitor import Incoming
from ptychoflow.edge.lanes.protocol import (
    Account,
    Accounted,
    Closed,
    Counts,
    Enable,
    Follow,
    Free,
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
from ptychoflow.edge.messages import CLOSE, ModelChanged, QueueItem
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.physcheck import CHECK_ATTRIBUTE

SLOTS = 4
"""Shared-memory slots per lane: batches a lane may have handed over and not got back."""

COUNTS_PERIOD_S = 0.25
"""How often a lane sends its counters (also while no frame comes)."""


def slot_bytes(settings: EdgeSettings) -> int:
    """One slot holds a full batch of 128x128 phase and amplitude images (larger go inline)."""
    return max(4 << 20, settings.batch_size * 2 * 128 * 128 * 4)


class LedgerFeed:
    """Observer of the lane's frame queue: every frame taken or dropped, in the stream's order.

    Called under the queue's lock (so dropped frames and takes keep their order);
    the sender thread collects what came since its last look with :meth:`drain`.
    """

    def __init__(self, scan_attr: str) -> None:
        self._key = scan_attr
        self._lock = threading.Lock()
        self._pending: Accounted = []

    def _entry(self, it: Incoming) -> tuple[int, object]:
        if it.frame is None:
            return (it.unique_id, None)  # did not decode: 0 where the id could not be read
        return (it.frame.unique_id, it.frame.attributes.get(self._key))

    def dropped(self, item: Incoming) -> None:
        """One frame dropped from the queue."""
        with self._lock:
            self._pending.append(self._entry(item))

    def taken(self, items: list[Incoming]) -> None:
        """A take (batched, bad, discarded while disabled or without a model)."""
        if items:
            with self._lock:
                self._pending.extend(self._entry(it) for it in items)

    def drain(self) -> Accounted:
        """Everything reported since the last call."""
        with self._lock:
            out, self._pending = self._pending, []
        return out


class Lane:
    """Inside a lane process: an :class:`Intake` whose batches go to the edge process."""

    def __init__(self, index: int, settings: EdgeSettings, model_dir: Path, conn: Connection,
                 slot_names: list[str], conf: Mapping[str, str] | None) -> None:
        self.index = index
        self.pipe = Pipe(conn)
        self.slots = Slots.attach(slot_names)
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(self.slots)):
            self.free.put(i)
        self.failed = 0  # frames whose inference failed (bad frames)
        self.scan_attr = settings.scan_id_attribute  # the one attribute the map needs
        self.scheduling = settings.scheduling
        served: Served | None = None
        error = ""
        if settings.model:
            try:
                served = prepare(settings.model, settings, model_dir)
            except Exception as exc:  # noqa: BLE001 - said to the edge process, which refuses
                error = str(exc)
        parallel = settings.streams or auto_streams(settings.threads)
        self.fifo: queue.Queue[QueueItem] = queue.Queue(maxsize=2 * parallel + 1)
        self.ledger = LedgerFeed(self.scan_attr)  # the edge process counts what no lane saw
        self.intake = Intake(settings, model_dir, served, self.fifo, self.say, conf,
                             observer=self.ledger,
                             on_refused=lambda spec, why: self.send(Refused(spec, why)))
        self.send(Ready(served.note() if served is not None else None, error))

    def send(self, msg: object) -> None:
        """To the edge process (from any thread of the lane)."""
        self.pipe.send(msg)

    def say(self, text: str) -> None:
        """Message_RBV of the edge."""
        self.send(Say(text))

    def counts(self) -> dict[str, int]:
        """Counters of the lane, cumulative."""
        it = self.intake
        return {"bad": it.bad + self.failed, "dropped": it.dropped, "unplaced": it.unplaced,
                "received": it.accepted, "connected": int(it.connected)}

    def _level(self) -> None:
        """EPICS gives its network threads real-time priority where it may; level them.

        As the edge process does for its own (see threads.level_realtime_threads):
        a real-time receiving thread would preempt this lane's engine at every frame.
        """
        from ptychoflow.edge.threads import level_realtime_threads

        level_realtime_threads(self.scheduling)

    def run(self) -> None:
        """Follow commands until told to stop and every batch is handed over."""
        sender = threading.Thread(target=self._send_batches, name="edge-lane-send",
                                  daemon=True)
        sender.start()
        while True:
            try:
                msg = self.pipe.recv()
            except ChannelClosed:  # the edge process went away: stop
                msg = Stop()
            match msg:
                case Free(slot):
                    self.free.put(slot)
                case Start():
                    self.intake.start()
                    self._level()
                case Seen(uid, ts):  # a restarted lane: the frame its predecessor did last
                    self.intake.seen(uid, ts)
                case Follow(pvs):
                    self.intake.follow(pvs)
                case Enable(on):
                    self.intake.set_enabled(on)
                case Load(spec):
                    try:
                        self.intake.request(spec)
                    except ValueError as exc:
                        self.send(Refused(spec, str(exc)))
                case Stop():
                    # the collector drains on its own thread; slots keep coming back meanwhile
                    threading.Thread(target=self.intake.stop, daemon=True).start()
                    self._drain_commands(sender)
                    break
        self.intake.close()
        self.slots.close()

    def _drain_commands(self, sender: threading.Thread) -> None:
        """Take slots back until the sender has handed over the last batch."""
        while sender.is_alive():
            try:
                if self.pipe.poll(0.05):
                    msg = self.pipe.recv()
                    if isinstance(msg, Free):
                        self.free.put(msg.slot)
            except ChannelClosed:
                # nobody takes the batches any more: let the sender finish without them
                for i in range(len(self.slots)):
                    self.free.put(i)
                sender.join(30)
                return

    def _send_batches(self) -> None:
        from ptychoflow.edge.threads import name_os_thread

        name_os_thread()
        last_counts = 0.0
        leveled = False
        while True:
            try:
                entry: QueueItem | None = self.fifo.get(timeout=COUNTS_PERIOD_S)
            except queue.Empty:
                entry = None
            try:
                taken = self.ledger.drain()
                if isinstance(entry, LocalBatch):
                    self._hand_over(entry, taken)  # the ledger's frames ride along
                elif taken:
                    self.send(Account(taken))
                if entry is CLOSE:
                    self.send(Closed(self.counts()))
                    return
                if isinstance(entry, ModelChanged):
                    self.send(Swapped(entry.model))
                now = time.monotonic()
                if now - last_counts >= COUNTS_PERIOD_S:
                    last_counts = now
                    counts = self.counts()
                    if counts["connected"] and not leveled:
                        leveled = True
                        self._level()  # the connection's threads exist now
                    self.send(Counts(counts))
            except ChannelClosed:
                if entry is CLOSE:
                    return

    def _hand_over(self, b: LocalBatch, taken: Accounted) -> None:
        try:
            phase, amp = b.outputs()
        except Exception as exc:  # noqa: BLE001 - an engine failure must not stop the lane
            self.failed += len(b.frames)
            self.say(f"inference failed on {len(b.frames)} frame(s): {exc}")
            if taken:
                self.send(Account(taken))
            return
        finally:
            b.release()  # the outputs are in hand: the model may retire
        attr = self.scan_attr
        meta = dict(unique_ids=[f.unique_id for f in b.frames],
                    timestamps=[f.timestamp for f in b.frames],
                    scan_keys=[f.attributes.get(attr) for f in b.frames],
                    arrivals=b.arrivals, positions=b.positions, shape=tuple(phase.shape),
                    amplitude=amp is not None, account=taken or None,
                    checks=[f.attributes.get(CHECK_ATTRIBUTE) for f in b.frames]
                    if any(CHECK_ATTRIBUTE in f.attributes for f in b.frames) else None)
        # the images go out as float32 whatever the engine's output type
        shapes = (phase.shape,) if amp is None else (phase.shape, amp.shape)
        if not self.slots.fits(*shapes) or (amp is not None and amp.shape != phase.shape):
            self.send(Handover(slot=None, inline=(
                phase.astype(np.float32, copy=False),
                None if amp is None else amp.astype(np.float32, copy=False)), **meta))
            return
        slot = self.free.get()
        views = self.slots.arrays(slot, *shapes)
        views[0][...] = phase
        if amp is not None:
            views[1][...] = amp
        self.send(Handover(slot=slot, **meta))


def lane_main(index: int, settings: EdgeSettings, model_dir: str, conn: Connection,
              slot_names: list[str], conf: Mapping[str, str] | None, gpu: str) -> None:
    """Entry point of a lane process (spawned: no EPICS thread is forked)."""
    from ptychoflow.edge.threads import name_os_thread

    if gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before any engine touches CUDA
    name_os_thread(f"edge-lane{index}")
    logging.basicConfig(level=logging.WARNING)
    lane = Lane(index, settings, Path(model_dir), conn, slot_names, conf)
    lane.run()
