"""The edge service: frames in, predictions and the stitched map out.

Three threads besides p4p's own:

* the p4p monitor callback only decodes and appends to the bounded
  :class:`FrameQueue` (drop-oldest, counted);
* the *collector* takes micro-batches, refuses bad frames, preprocesses and
  submits each batch to the runner, and picks up a hot-swapped model between
  batches;
* the *publisher* takes the results in submission order, posts ``Phase``
  (and ``Amplitude``), stitches, and updates the status PVs.

Collector and publisher are joined by a short bounded FIFO, so preprocessing
of the next batch overlaps inference of this one and a slow engine pushes back
on the frame queue, where the drop policy lives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.batcher import FrameQueue
from ptychoflow.edge.client import Incoming, InputMonitor
from ptychoflow.edge.positions import PositionSource
from ptychoflow.edge.scheduling import name_os_thread
from ptychoflow.edge.server import EdgeServer
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.edge.stitch import Stitcher, StitchError
from ptychoflow.edge.stitchproc import StitchProcess, StitchProcessError
from ptychoflow.edge.swap import HotSwapper, Served, auto_streams, prepare
from ptychoflow.ntnda import Frame

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.5
_CLOSE = object()
_FIRST_MODEL = object()  # tells the publisher the first model arrived (nothing to close)


@dataclass
class _Batch:
    future: Future[list[np.ndarray]]
    frames: list[Frame]
    arrivals: list[float]
    positions: list[tuple[float, float] | None]
    served: Served


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
        # Without a model the edge still serves its PVs and follows the input, so the first
        # model of a beamtime can be deployed to it like any later one.
        self.served: Served | None = (prepare(str(model_path), settings, self.model_dir)
                                      if model_path else None)
        self.unserved = 0  # frames that arrived while no model was loaded
        self.positions = PositionSource(settings.positions)
        self.queue: FrameQueue[Incoming] = FrameQueue(settings.queue_size)
        # batches in flight: two per engine that can run at once keeps every engine busy
        # while the frames not yet batched wait in the drop-oldest queue
        parallel = settings.workers * (settings.streams or auto_streams(settings.threads))
        self._fifo: queue.Queue[Any] = queue.Queue(maxsize=2 * parallel + 1)
        self._stop = threading.Event()
        self._reset = threading.Event()
        self.enabled = True
        self.processed = 0
        self.bad = 0
        self.missed = 0  # uniqueId gaps: frames lost before they reached the edge
        self.latencies: deque[float] = deque(maxlen=10_000)
        self._last_uid: int | None = None
        self._last_ts = 0.0
        self._last_bad_msg = 0.0
        self.stitcher: Stitcher | StitchProcess | None = None
        self._scan_key: Any = None
        self._last_pub: Frame | None = None  # the last frame published (ids for the map)
        self._stitch_uid: int | None = None
        self.server = EdgeServer(settings.prefix, {
            "Edge:Stitched:Reset": self._on_reset,
            "Edge:Enable": self._on_enable,
            "Edge:Input": self._on_input,
            "Edge:Model:Load": self._on_load,
        }, conf)
        self.swapper = HotSwapper(settings, self.model_dir, self.message)
        self._new_stitcher()
        self.server.post_scalar("Edge:Model:Version_RBV",
                                self.served.info.version if self.served else 0)
        self.server.post_scalar("Edge:Input", settings.input)
        self.monitor = InputMonitor(self._on_frame, self.message, conf, settings.input_queue)
        self._threads = [threading.Thread(target=self._collect, name="edge-collect", daemon=True),
                         threading.Thread(target=self._publish, name="edge-publish", daemon=True)]
        for t in self._threads:
            t.start()
        if self.served is not None:
            self.message(f"serving {self.served.info.path.name} (version "
                         f"{self.served.info.version}) on {self._engine_name()}")
        else:
            self.message(f"no model yet: put a model-vN.onnx under {self.model_dir} "
                         "to Edge:Model:Load")
        if settings.input:
            self.monitor.follow(settings.input)

    # ---- PV handlers -------------------------------------------------------------------
    def _on_reset(self, value: int) -> None:
        if value:
            self._reset.set()

    def _on_enable(self, value: int) -> None:
        self.enabled = bool(value)
        self.message("inference enabled" if self.enabled else "inference disabled; frames "
                     "are discarded")

    def _on_input(self, value: str) -> None:
        self._last_uid = None
        self.monitor.follow(value.strip())

    def _on_load(self, value: str) -> None:
        self.swapper.request(value)

    def message(self, text: str) -> None:
        """Say something on Message_RBV (and in the log)."""
        self.server.set_message(text)

    def _engine_name(self) -> str:
        assert self.served is not None
        return self.served.runner.describe()

    # ---- input -------------------------------------------------------------------------
    def _on_frame(self, item: Incoming) -> None:
        f = item.frame
        if f is not None:
            if f.unique_id == 0:
                return  # a server's placeholder value: detectors count frames from 1
            last = self._last_uid
            if last is not None and f.unique_id == last and f.timestamp == self._last_ts:
                return  # the same frame again (a reconnect re-sends the current value)
            if last is not None and f.unique_id > last + 1:
                self.missed += f.unique_id - last - 1
            self._last_uid, self._last_ts = f.unique_id, f.timestamp
        self.queue.put(item)

    # ---- collector ---------------------------------------------------------------------
    def _bad(self, why: str) -> None:
        self.bad += 1
        now = time.monotonic()
        if now - self._last_bad_msg > 1.0:  # one message a second, not one per frame
            self._last_bad_msg = now
            self.message(f"bad frame skipped ({self.bad} so far): {why}")

    def _check(self, item: Incoming, served: Served) -> tuple[float, float] | None | str:
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
                # the publisher closes the old model once its batches are out
                self._fifo.put(old if old is not None else _FIRST_MODEL)
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
            if not self.enabled:
                continue
            frames, arrivals, positions = [], [], []
            for it in items:
                res = self._check(it, served)
                if isinstance(res, str):
                    self._bad(res)
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
                        self._bad(f"preprocessing failed: {exc}")
                else:
                    batch = _Batch(served.runner.submit(x), group, [arrivals[i] for i in idx],
                                   [positions[i] for i in idx], served)
                    self._fifo.put(batch)
                taken = set(idx)
                keep = [i for i in range(len(frames)) if i not in taken]
                frames = [frames[i] for i in keep]
                arrivals = [arrivals[i] for i in keep]
                positions = [positions[i] for i in keep]
        self._fifo.put(_CLOSE)

    def _idle_without_model(self) -> None:
        """No model yet: take frames off the queue and count them, so none is lost silently."""
        items = self.queue.get_batch(self.settings.batch_size, 0.0, timeout=0.2)
        if items:
            self.unserved += len(items)
            now = time.monotonic()
            if now - self._last_bad_msg > 1.0:
                self._last_bad_msg = now
                self.message(f"no model loaded: {self.unserved} frame(s) not processed (counted "
                             "in Dropped_RBV); put a model path to Edge:Model:Load")

    # ---- publisher ---------------------------------------------------------------------
    def _new_stitcher(self, in_process: bool = False) -> None:
        """A new, empty map for the served model's pixel size.

        A stitching process is kept and given the new size: starting one takes longer
        than a frame may wait.
        """
        pix = self.served.info.pixel_size_m if self.served is not None else 0.0
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
        if self.stitcher is None and self.served is not None and self.settings.stitch:
            self.message("no output pixel size (model has no card and --pixel-size-m is 0): "
                         "the stitched map is off")

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
            if entry is _CLOSE:
                break
            if isinstance(entry, Served) or entry is _FIRST_MODEL:
                assert self.served is not None
                if isinstance(entry, Served):
                    entry.runner.close()
                if not isinstance(entry, Served) or \
                        entry.info.pixel_size_m != self.served.info.pixel_size_m:
                    self._new_stitcher()
                self.server.post_scalar("Edge:Model:Version_RBV", self.served.info.version)
                self.message(f"now serving {self.served.info.path.name} (version "
                             f"{self.served.info.version})")
                continue
            if self._reset.is_set():
                self._reset.clear()
                if self.stitcher is not None:
                    try:
                        self.stitcher.reset()
                    except StitchProcessError as exc:
                        self._stitch_process_gone(exc)
                    stitch_dirty = True
            if isinstance(entry, _Batch):
                try:
                    stitch_dirty |= self._emit(entry, lat_window)
                except Exception as exc:  # a publishing failure must not stop the edge
                    log.exception("publishing failed")
                    self.message(f"publishing {len(entry.frames)} frame(s) failed: {exc}")
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

    def _emit(self, b: _Batch, lat_window: list[float]) -> bool:
        try:
            outs = b.future.result()
        except Exception as exc:  # an engine failure must not kill the service
            self.bad += len(b.frames)
            self.message(f"inference failed on {len(b.frames)} frame(s): {exc}")
            return False
        info = b.served.info
        n = len(b.frames)
        phase = outs[info.phase_index].reshape(n, *outs[info.phase_index].shape[-2:])
        amp = None
        if info.amplitude_index is not None:
            a = outs[info.amplitude_index]
            amp = a.reshape(n, *a.shape[-2:])
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
                if pos is not None and self.stitcher is not None:
                    self._maybe_new_scan(f)
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

    def _maybe_new_scan(self, f: Frame) -> None:
        """A uniqueId that went backwards or a new scan id attribute starts a new map."""
        assert self.stitcher is not None
        key = f.attributes.get(self.settings.scan_id_attribute)
        prev = self._stitch_uid
        if (prev is not None and f.unique_id < prev) or key != self._scan_key:
            if self.stitcher.count:
                self.stitcher.reset()
        self._scan_key = key
        self._stitch_uid = f.unique_id

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

    @property
    def dropped(self) -> int:
        """Frames lost to the edge: queue overflow, gaps in uniqueId, no model loaded."""
        return self.queue.dropped + self.missed + self.unserved

    # ---- lifetime ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` passes (False)."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        """Stop following, finish the frames in hand, publish the last status, close."""
        self.monitor.close()
        self._stop.set()
        self.queue.close()
        for t in self._threads:
            t.join(30)
        self.swapper.join(30)
        late = self.swapper.take()
        if late is not None:
            late.runner.close()
        if self.served is not None:
            self.served.runner.close()
        self.server.close()
