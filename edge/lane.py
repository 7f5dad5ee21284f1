"""A lane process: one input PV's frames through its own engine, outputs to the edge process.

See :mod:`ptychoflow.edge.lanes` for why lanes exist and for the edge
process's side. A lane runs one :class:`~ptychoflow.edge.intake.Intake` on
its input PV and hands each batch's outputs to the edge process through one
of the edge's shared-memory slots (:func:`slot_views` is the layout both
sides use), with the frames' ids, times, positions and everything the lane
took in order (for the edge's ledger of lost frames). It waits for a free
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
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.intake import CLOSE, Intake, LocalBatch, Skipped, Swapped
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.swap import ModelNote, Served, auto_streams, prepare

SLOTS = 4
"""Shared-memory slots per lane: batches a lane may have handed over and not got back."""

COUNTS_PERIOD_S = 0.25
"""How often a lane sends its counters (also while no frame comes)."""


def slot_bytes(settings: EdgeSettings) -> int:
    """One slot holds a full batch of 128x128 phase and amplitude images (larger go inline)."""
    return max(4 << 20, settings.batch_size * 2 * 128 * 128 * 4)


def slot_views(buf: Any, shape: tuple[int, ...], amp: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """The float32 phase (and amplitude) images of a batch of ``shape`` in a slot."""
    phase = np.ndarray(shape, np.float32, buf)
    return phase, (np.ndarray(shape, np.float32, buf, offset=phase.nbytes) if amp else None)


class Lane:
    """Inside a lane process: an :class:`Intake` whose batches go to the edge process."""

    def __init__(self, index: int, settings: EdgeSettings, model_dir: Path, conn: Connection,
                 slot_names: list[str], conf: Mapping[str, str] | None) -> None:
        self.index = index
        self.conn = conn
        self._send_lock = threading.Lock()
        self.shms = [SharedMemory(name=n) for n in slot_names]
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(self.shms)):
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
        self.fifo: queue.Queue[Any] = queue.Queue(maxsize=2 * parallel + 1)
        # account: the edge process counts what no lane saw
        self.intake = Intake(settings, model_dir, served, self.fifo, self.say, conf,
                             account=True)
        self.intake.swapper.on_refused = lambda spec, why: self.send(("refused", spec, why))
        self.send(("ready", ModelNote.of(served) if served is not None else None, error))

    def send(self, msg: tuple[Any, ...]) -> None:
        """To the edge process (from any thread of the lane)."""
        with self._send_lock:
            self.conn.send(msg)

    def say(self, text: str) -> None:
        """Message_RBV of the edge."""
        self.send(("msg", text))

    def counts(self) -> dict[str, int]:
        """Counters of the lane, cumulative."""
        it = self.intake
        return {"bad": it.bad + self.failed, "dropped": it.dropped,
                "received": it.accepted, "connected": int(it.monitor.connected)}

    def _level(self) -> None:
        """EPICS gives its network threads real-time priority where it may; level them.

        As the edge process does for its own (see scheduling.level_realtime_threads):
        a real-time receiving thread would preempt this lane's engine at every frame.
        """
        from ptychoflow.edge.scheduling import level_realtime_threads

        level_realtime_threads(self.scheduling)

    def run(self) -> None:
        """Follow commands until told to stop and every batch is handed over."""
        sender = threading.Thread(target=self._send_batches, name="edge-lane-send",
                                  daemon=True)
        sender.start()
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the edge process went away: stop
                msg = ("stop",)
            kind = msg[0]
            if kind == "free":
                self.free.put(msg[1])
            elif kind == "start":
                self.intake.start()
                self._level()
            elif kind == "seen":  # a restarted lane: the frame its predecessor did last
                self.intake.seen(msg[1], msg[2])
            elif kind == "follow":
                self.intake.follow(msg[1])
            elif kind == "enable":
                self.intake.set_enabled(bool(msg[1]))
            elif kind == "load":
                try:
                    self.intake.swapper.request(msg[1])
                except ValueError as exc:
                    self.send(("refused", msg[1], str(exc)))
            elif kind == "stop":
                # the collector drains on its own thread; slots keep coming back meanwhile
                threading.Thread(target=self.intake.stop, daemon=True).start()
                self._drain_commands(sender)
                break
        self.intake.close()
        for shm in self.shms:
            shm.close()

    def _drain_commands(self, sender: threading.Thread) -> None:
        """Take slots back until the sender has handed over the last batch."""
        while sender.is_alive():
            try:
                if self.conn.poll(0.05):
                    msg = self.conn.recv()
                    if msg[0] == "free":
                        self.free.put(msg[1])
            except (EOFError, OSError):
                # nobody takes the batches any more: let the sender finish without them
                for i in range(len(self.shms)):
                    self.free.put(i)
                sender.join(30)
                return

    def _send_batches(self) -> None:
        from ptychoflow.edge.scheduling import name_os_thread

        name_os_thread()
        last_counts = 0.0
        leveled = False
        while True:
            try:
                entry = self.fifo.get(timeout=COUNTS_PERIOD_S)
            except queue.Empty:
                entry = None
            try:
                if entry is CLOSE:
                    self.send(("closed", self.counts()))
                    return
                if isinstance(entry, Swapped):
                    if entry.old is not None:
                        entry.old.runner.close()
                    self.send(("model", ModelNote.of(entry.new)))
                elif isinstance(entry, LocalBatch):
                    self._hand_over(entry)
                elif isinstance(entry, Skipped):
                    self.send(("skipped", entry.accounted))
                now = time.monotonic()
                if now - last_counts >= COUNTS_PERIOD_S:
                    last_counts = now
                    counts = self.counts()
                    if counts["connected"] and not leveled:
                        leveled = True
                        self._level()  # the connection's threads exist now
                    self.send(("counts", counts))
            except (BrokenPipeError, EOFError, OSError):
                if entry is CLOSE:
                    return

    def _hand_over(self, b: LocalBatch) -> None:
        try:
            phase, amp = b.outputs()
        except Exception as exc:  # noqa: BLE001 - an engine failure must not stop the lane
            self.failed += len(b.frames)
            self.say(f"inference failed on {len(b.frames)} frame(s): {exc}")
            if b.accounted:
                self.send(("skipped", b.accounted))
            return
        attr = self.scan_attr
        meta = ([f.unique_id for f in b.frames], [f.timestamp for f in b.frames],
                [f.attributes.get(attr) for f in b.frames], b.arrivals, b.positions,
                b.accounted)
        # the images go out as float32 whatever the engine's output type
        need = 4 * (phase.size + (amp.size if amp is not None else 0))
        if need > self.shms[0].size:  # too big for a slot: inline
            self.send(("batch", None, meta, phase.astype(np.float32, copy=False),
                       None if amp is None else amp.astype(np.float32, copy=False)))
            return
        slot = self.free.get()
        phase_out, amp_out = slot_views(self.shms[slot].buf, phase.shape, amp is not None)
        phase_out[...] = phase
        if amp_out is not None:
            amp_out[...] = amp
        self.send(("batch", slot, meta, phase.shape, amp is not None))


def lane_main(index: int, settings: EdgeSettings, model_dir: str, conn: Connection,
               slot_names: list[str], conf: Mapping[str, str] | None, gpu: str) -> None:
    """Entry point of a lane process (spawned: no EPICS thread is forked)."""
    from ptychoflow.edge.scheduling import name_os_thread

    if gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before any engine touches CUDA
    name_os_thread(f"edge-lane{index}")
    logging.basicConfig(level=logging.WARNING)
    lane = Lane(index, settings, Path(model_dir), conn, slot_names, conf)
    lane.run()
