"""The publisher: batches off the queue, out as Phase (and Amplitude), the map and the status.

One thread takes what the frame source puts on the queue
(:mod:`ptychoflow.edge.messages`), posts every image of a batch, places the
phases on the map (:class:`~ptychoflow.edge.messages.MapSink`: in process, or a
stitching process with ``--stitch-process``), and updates the status PVs twice
a second. Whatever the number of lanes, this thread serves every PV.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ptychoflow.edge.messages import (
    CLOSE,
    Batch,
    Every,
    FrameSource,
    MapSink,
    ModelChanged,
    ModelNote,
    QueueItem,
)
from ptychoflow.edge.output.consistency import ConsistencyMeter
from ptychoflow.edge.output.pvaserver import EdgeServer
from ptychoflow.edge.output.stitchproc import StitchProcess, StitchProcessError
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.threads import name_os_thread
from ptychoflow.ntnda import Frame
from ptychoflow.pvnames import EDGE
from ptychoflow.stitch import ScanFollower, Stitcher, StitchError

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.5


class Publisher:
    """Publishes what ``fifo`` carries until CLOSE; counts what it publishes and refuses."""

    def __init__(self, settings: EdgeSettings, server: EdgeServer,
                 fifo: queue.Queue[QueueItem], source: FrameSource,
                 message: Callable[[str], None],
                 on_serving: Callable[[ModelNote], None] | None = None) -> None:
        self.settings = settings
        self.server = server
        self.fifo = fifo
        self.source = source
        self.message = message
        self.on_serving = on_serving  # told of each model swapped in (a restart resumes it)
        self.model: ModelNote | None = source.model
        self.reset_requested = threading.Event()
        self.processed = 0
        self.bad_here = 0  # found here: patches the map refused, batches the engine failed
        self.latencies: deque[float] = deque(maxlen=10_000)
        self._say_bad = Every(1.0)  # one message a second, not one per frame
        self.stitcher: MapSink | None = None
        self._last_pub: Frame | None = None  # the last frame published (ids for the map)
        self._scans = ScanFollower()  # which frames start a new map, and which go on it
        self.consistency = ConsistencyMeter()  # the physics check's running value
        self._new_stitcher()
        self._thread = threading.Thread(target=self._run, name="edge-publish", daemon=True)

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for CLOSE to have been published; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def bad(self) -> int:
        """Frames skipped as bad, wherever they were found."""
        return self.bad_here + self.source.bad

    def _bad(self, why: str) -> None:
        self.bad_here += 1
        if self._say_bad():
            self.message(f"bad frame skipped ({self.bad} so far): {why}")

    # ---- the map -----------------------------------------------------------------------
    def _new_stitcher(self, in_process: bool = False) -> None:
        """A new, empty map for the served model's pixel size.

        A stitching process is kept and given the new size: starting one takes longer
        than a frame may wait.
        """
        pix = self.model.pixel_size_m if self.model is not None else 0.0
        size = self.settings.stitch_max_size
        if isinstance(self.stitcher, StitchProcess) and pix > 0 and not in_process:
            self.stitcher.repixel(pix)
            return
        if self.stitcher is not None:
            self.stitcher.close()
        self.stitcher = None
        if pix > 0:
            self.stitcher = (StitchProcess(pix, size) if self.settings.stitch_process
                             and self.settings.stitch and not in_process
                             else Stitcher(pix, size))
        if self.stitcher is None and self.model is not None and self.settings.stitch:
            self.message("no output pixel size (model has no card and --pixel-size-m is 0): "
                         "the stitched map is off")

    def _stitch_process_gone(self, exc: Exception) -> None:
        log.error("%s", exc)
        self.message(f"{exc}: stitching in the edge process from now on (the map restarts)")
        self._new_stitcher(in_process=True)

    def _model_changed(self, new: ModelNote) -> None:
        """A swap reached the publisher: batches from now on come from ``new``."""
        old, self.model = self.model, new
        if old is None or old.pixel_size_m != new.pixel_size_m:
            self._new_stitcher()
        self.server.post_scalar(EDGE.model_version, new.version)
        self.consistency.reset()
        self.message(f"now serving {new.name} (version {new.version})"
                     + (f"; {new.check}" if new.check else ""))
        if self.on_serving is not None:
            self.on_serving(new)

    # ---- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        name_os_thread()
        last_status = last_stitch = 0.0
        stitch_dirty = False
        count_at_status = 0
        lat_window: list[float] = []
        min_period = 1.0 / self.settings.stitch_rate_hz
        while True:
            try:
                entry: QueueItem | None = self.fifo.get(timeout=0.05)
            except queue.Empty:
                entry = None
            if entry is CLOSE:
                break
            if isinstance(entry, ModelChanged):  # the source serves it from now on
                self._model_changed(entry.model)
                continue
            if self.reset_requested.is_set():
                self.reset_requested.clear()
                if self.stitcher is not None:
                    try:
                        self.stitcher.reset()
                    except StitchProcessError as exc:
                        self._stitch_process_gone(exc)
                    stitch_dirty = True
            if entry is not None:
                batch: Batch = entry  # type: ignore[assignment]
                try:
                    stitch_dirty |= self._emit(batch, lat_window)
                except Exception as exc:  # a publishing failure must not stop the edge
                    log.exception("publishing failed")
                    self.message(f"publishing {len(batch.frames)} frame(s) failed: {exc}")
                finally:
                    batch.release()
            now = time.monotonic()
            if stitch_dirty and self.stitcher is not None and now - last_stitch >= min_period:
                last_stitch = now
                stitch_dirty = False
                self._post_stitched()
            if now - last_status >= STATUS_PERIOD_S:
                dt = now - last_status if last_status else STATUS_PERIOD_S
                self._post_status((self.processed - count_at_status) / dt, lat_window)
                count_at_status = self.processed
                last_status = now
                lat_window = []
        if self.stitcher is not None and stitch_dirty:
            self._post_stitched()  # first: it may count refused patches as bad frames
        self._post_status(0.0, lat_window)
        if self.stitcher is not None:
            self.stitcher.close()

    def _emit(self, b: Batch, lat_window: list[float]) -> bool:
        try:
            phase, amp = b.outputs()
        except Exception as exc:  # an engine failure must not kill the service
            self.bad_here += len(b.frames)
            self.message(f"inference failed on {len(b.frames)} frame(s): {exc}")
            return False
        keep = self._finite(b, phase, amp)
        n = len(keep)
        if not n:
            return False
        # every image of the batch first, then the stitching: the posts reach pvxs's
        # sending thread back to back, so it wakes once and sends them as one run
        # (stitching between posts woke it, and the client behind it, for every frame)
        for i in keep:
            f = b.frames[i]
            self.server.post_image(EDGE.phase, phase[i], f.unique_id, f.timestamp,
                                   self.consistency.take(f))
            if amp is not None:
                self.server.post_image(EDGE.amplitude, amp[i], f.unique_id, f.timestamp)
        stitched = False
        try:
            for i in keep:
                f, pos = b.frames[i], b.positions[i]
                if pos is not None and self.stitcher is not None \
                        and self._maybe_new_scan(f, b.lane):
                    try:
                        self.stitcher.add(phase[i], pos[0], pos[1])
                        stitched = True
                    except StitchError as exc:
                        self._bad(str(exc))
            if self.stitcher is not None:
                self.stitcher.flush()
                for why in self.stitcher.errors():
                    self._bad(why)
        except StitchProcessError as exc:
            self._stitch_process_gone(exc)
        self._last_pub = b.frames[keep[-1]]
        now = time.monotonic()
        lat_window.extend(now - b.arrivals[i] for i in keep)
        self.latencies.extend(now - b.arrivals[i] for i in keep)
        self.processed += n
        return stitched

    def _finite(self, b: Batch, phase: np.ndarray, amp: np.ndarray | None) -> list[int]:
        """The frames whose prediction is finite; the others are bad frames.

        A finite input can still make a network answer NaN or infinity (a division
        inside it, an overflow): such an image would spoil the map where it lands and
        every client's colour scale, so it is neither published nor placed.
        """
        n = len(b.frames)
        ok = np.isfinite(phase.reshape(n, -1)).all(axis=1)
        if amp is not None:
            ok &= np.isfinite(amp.reshape(n, -1)).all(axis=1)
        for i in np.flatnonzero(~ok):
            self._bad(f"the model's prediction for frame {b.frames[i].unique_id} is not "
                      "finite (NaN or infinity); not published, not placed on the map")
        return [int(i) for i in np.flatnonzero(ok)]

    def _maybe_new_scan(self, f: Frame, lane: int) -> bool:
        """A new scan starts a new map (see ScanFollower); whether ``f`` goes on the map."""
        assert self.stitcher is not None
        new_map, on_map = self._scans.place(lane, f.unique_id,
                                            f.attributes.get(self.settings.scan_id_attribute))
        if new_map and self.stitcher.count:
            self.stitcher.reset()
        return on_map

    def _post_stitched(self) -> None:
        assert self.stitcher is not None
        f = self._last_pub
        try:
            img = self.stitcher.image()
            for why in self.stitcher.errors():  # all in: image() waited for any child
                self._bad(why)
        except StitchProcessError as exc:
            self._stitch_process_gone(exc)
            return
        y0, x0 = self.stitcher.origin_m
        if img.size == 0:
            img = np.zeros((1, 1), np.float32)
        attrs = {"PixelSize": self.stitcher.pixel, "OriginX": x0, "OriginY": y0,
                 "Frames": self.stitcher.count}
        self.server.post_image(EDGE.stitched, img, f.unique_id if f else 0,
                               f.timestamp if f else time.time(), attrs)

    def _post_status(self, rate: float, lat: list[float]) -> None:
        s = self.server
        s.post_scalar(EDGE.frame_rate, round(rate, 2))
        s.post_scalar(EDGE.latency, round(1000.0 * float(np.mean(lat)), 3) if lat else 0.0)
        s.post_scalar(EDGE.processed, self.processed)
        s.post_scalar(EDGE.missed, self.source.missed)
        s.post_scalar(EDGE.dropped, self.source.dropped)
        s.post_scalar(EDGE.bad_frames, self.bad)
        s.post_scalar(EDGE.unplaced, self.source.unplaced)
        s.post_scalar(EDGE.consistency, self.consistency.value())
