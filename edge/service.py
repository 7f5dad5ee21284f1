"""The edge service: frames in, predictions and the stitched map out.

Frames come in through an :class:`~ptychoflow.edge.intake.Intake` on threads
of this process (one input PV, the default) or through a
:class:`~ptychoflow.edge.lanes.LaneSet`, one process per input PV, when the
detector's frames are split over several PVs (areaDetector's NDPluginScatter
feeding several NDPluginPva). Either puts finished batches on one short
FIFO, in order per input; the *publisher* thread here takes them, posts
``Phase`` (and ``Amplitude``), stitches, and updates the status PVs. All
the edge's PVs are served by this process whatever the number of lanes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ptychoflow.edge.intake import CLOSE, Every, Intake, Position, Swapped
from ptychoflow.edge.lanes import LaneSet
from ptychoflow.edge.scheduling import name_os_thread
from ptychoflow.edge.server import EdgeServer
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.stitch import ScanFollower, Stitcher, StitchError
from ptychoflow.edge.stitchproc import StitchProcess, StitchProcessError
from ptychoflow.edge.swap import ModelNote, auto_streams, prepare
from ptychoflow.ntnda import Frame

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.5


def split_inputs(text: str) -> list[str]:
    """Input PV names from ``--input`` or an ``Edge:Input`` put: separated by spaces or commas."""
    return [t for t in text.replace(",", " ").split() if t]


class Batch(Protocol):
    """What the publisher takes off the FIFO: frames with their outputs."""

    frames: list[Frame]
    arrivals: list[float]
    positions: list[Position]
    lane: int

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(phase, amplitude or None), each (n, H, W)."""

    def release(self) -> None:
        """Called once the batch is published: its memory may be reused."""


class EdgeService:
    """Runs the edge until :meth:`stop`; ``conf`` is the EPICS_PVA* config (None: environment)."""

    def __init__(self, settings: EdgeSettings, conf: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        if not settings.model and not settings.model_dir:
            raise ValueError("no model given; pass --model model-vN.onnx, or --model-dir DIR "
                             "to start without one and load it later with Edge:Model:Load")
        model_path = Path(settings.model).expanduser().resolve() if settings.model else None
        self.model_dir = (Path(settings.model_dir).expanduser().resolve() if settings.model_dir
                          else model_path.parent if model_path else Path.cwd())
        inputs = split_inputs(settings.input)
        self.n_lanes = len(inputs) if len(inputs) > 1 else 1
        # batches in flight: two per engine that can run at once keeps every engine busy
        # while the frames not yet batched wait in the drop-oldest queue; lanes each hold
        # their own in flight and hand over finished ones
        parallel = settings.workers * (settings.streams or auto_streams(settings.threads))
        self._fifo: queue.Queue[Any] = queue.Queue(maxsize=max(2 * parallel + 1,
                                                               4 * self.n_lanes))
        self._reset = threading.Event()
        self.processed = 0
        self._bad_here = 0  # found here: patches the map refused, batches the engine failed
        self.latencies: deque[float] = deque(maxlen=10_000)
        self._say_bad = Every(1.0)  # one message a second, not one per frame
        self.stitcher: Stitcher | StitchProcess | None = None
        self._last_pub: Frame | None = None  # the last frame published (ids for the map)
        self._scans = ScanFollower()  # which frames start a new map, and which go on it
        self.source: Intake | LaneSet  # frames in: here, or in lanes with several inputs
        self.model: ModelNote | None = None
        self.server = EdgeServer(settings.prefix, {
            "Edge:Stitched:Reset": self._on_reset,
            "Edge:Enable": self._on_enable,
            "Edge:Input": self._on_input,
            "Edge:Model:Load": self._on_load,
        }, conf)
        try:
            if self.n_lanes > 1:
                lanes = LaneSet(settings, self.model_dir, inputs, self._fifo, self.message,
                                conf)
                self.model = lanes.model
                self.source = lanes
            else:
                # Without a model the edge still serves its PVs and follows the input, so
                # the first model of a beamtime can be deployed to it like any later one.
                served = (prepare(str(model_path), settings, self.model_dir)
                          if model_path else None)
                self.model = ModelNote.of(served) if served is not None else None
                self.source = Intake(settings, self.model_dir, served, self._fifo,
                                     self.message, conf)
        except BaseException:
            self.server.close()
            raise
        self._new_stitcher()
        self.server.post_scalar("Edge:Model:Version_RBV", self.model.version if self.model else 0)
        self.server.post_scalar("Edge:Input", settings.input)
        self._publisher = threading.Thread(target=self._publish, name="edge-publish",
                                           daemon=True)
        self._publisher.start()
        if self.model is not None:
            self.message(f"serving {self.model.name} (version {self.model.version}) on "
                         f"{self.model.where}")
        else:
            self.message(f"no model yet: put a model-vN.onnx under {self.model_dir} "
                         "to Edge:Model:Load")
        self.source.start()

    # ---- PV handlers -------------------------------------------------------------------
    def _on_reset(self, value: int) -> None:
        if value:
            self._reset.set()

    def _on_enable(self, value: int) -> None:
        self.source.set_enabled(bool(value))
        self.message("inference enabled" if value else "inference disabled; frames "
                     "are discarded")

    def _on_input(self, value: str) -> None:
        self.source.follow(split_inputs(value))  # ValueError refuses the put

    def _on_load(self, value: str) -> None:
        self.source.request(value)

    def message(self, text: str) -> None:
        """Say something on Message_RBV (and in the log)."""
        self.server.set_message(text)

    def _bad(self, why: str) -> None:
        self._bad_here += 1
        if self._say_bad():
            self.message(f"bad frame skipped ({self.bad} so far): {why}")

    @property
    def bad(self) -> int:
        """Frames skipped as bad, wherever they were found."""
        return self._bad_here + self.source.bad

    @property
    def dropped(self) -> int:
        """Frames lost to the edge: queue overflow, gaps in uniqueId, no model loaded."""
        return self.source.dropped

    # ---- publisher ---------------------------------------------------------------------
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

    def _model_changed(self, new: ModelNote) -> None:
        """A swap reached the publisher: batches from now on come from ``new``."""
        old, self.model = self.model, new
        if old is None or old.pixel_size_m != new.pixel_size_m:
            self._new_stitcher()
        self.server.post_scalar("Edge:Model:Version_RBV", new.version)
        self.message(f"now serving {new.name} (version {new.version})")

    def _publish(self) -> None:
        name_os_thread()
        last_status = 0.0
        last_stitch = 0.0
        stitch_dirty = False
        count_at_status = 0
        lat_window: list[float] = []
        min_period = 1.0 / self.settings.stitch_rate_hz
        while True:
            try:
                entry = self._fifo.get(timeout=0.05)
            except queue.Empty:
                entry = None
            if entry is CLOSE:
                break
            if isinstance(entry, Swapped):
                if entry.old is not None:
                    entry.old.runner.close()  # its batches are all out
                self._model_changed(ModelNote.of(entry.new))
                continue
            if isinstance(entry, ModelNote):  # every lane serves it now
                self._model_changed(entry)
                continue
            if self._reset.is_set():
                self._reset.clear()
                if self.stitcher is not None:
                    try:
                        self.stitcher.reset()
                    except StitchProcessError as exc:
                        self._stitch_process_gone(exc)
                    stitch_dirty = True
            if entry is not None:
                try:
                    stitch_dirty |= self._emit(entry, lat_window)
                except Exception as exc:  # a publishing failure must not stop the edge
                    log.exception("publishing failed")
                    self.message(f"publishing {len(entry.frames)} frame(s) failed: {exc}")
                finally:
                    entry.release()
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
            self._bad_here += len(b.frames)
            self.message(f"inference failed on {len(b.frames)} frame(s): {exc}")
            return False
        n = len(b.frames)
        # every image of the batch first, then the stitching: the posts reach pvxs's
        # sending thread back to back, so it wakes once and sends them as one run
        # (stitching between posts woke it, and the client behind it, for every frame)
        for i, f in enumerate(b.frames):
            self.server.post_image("Edge:Phase", phase[i], f.unique_id, f.timestamp)
            if amp is not None:
                self.server.post_image("Edge:Amplitude", amp[i], f.unique_id, f.timestamp)
        stitched = False
        try:
            for i, f in enumerate(b.frames):
                pos = b.positions[i]
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
        self._last_pub = b.frames[-1]
        now = time.monotonic()
        lat_window.extend(now - t for t in b.arrivals)
        self.latencies.extend(now - t for t in b.arrivals)
        self.processed += n
        return stitched

    def _maybe_new_scan(self, f: Frame, lane: int) -> bool:
        """A new scan starts a new map (see ScanFollower); whether ``f`` goes on the map."""
        assert self.stitcher is not None
        new_map, on_map = self._scans.place(lane, f.unique_id,
                                            f.attributes.get(self.settings.scan_id_attribute))
        if new_map and self.stitcher.count:
            self.stitcher.reset()
        return on_map

    def _stitch_process_gone(self, exc: Exception) -> None:
        log.error("%s", exc)
        self.message(f"{exc}: stitching in the edge process from now on (the map restarts)")
        self._new_stitcher(in_process=True)

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
        self.server.post_image("Edge:Stitched", img, f.unique_id if f else 0,
                               f.timestamp if f else time.time(), attrs)

    def _post_status(self, rate: float, lat: list[float]) -> None:
        s = self.server
        s.post_scalar("Edge:FrameRate_RBV", round(rate, 2))
        s.post_scalar("Edge:Latency_RBV", round(1000.0 * float(np.mean(lat)), 3) if lat else 0.0)
        s.post_scalar("Edge:Processed_RBV", self.processed)
        s.post_scalar("Edge:Dropped_RBV", self.dropped)
        s.post_scalar("Edge:BadFrames_RBV", self.bad)


    # ---- lifetime ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the publisher has ended (True) or ``timeout`` passes (False)."""
        self._publisher.join(timeout)
        return not self._publisher.is_alive()

    def stop(self) -> None:
        """Stop following, finish the frames in hand, publish the last status, close."""
        self.source.stop()  # puts CLOSE on the FIFO once every frame in hand is out
        self._publisher.join(60)
        self.source.close()
        self.server.close()
