"""The detector simulator's pvAccess server: frames out like areaDetector's NDPluginPva.

It serves ``$(P)Pva1:Image`` (NTNDArray with ``uniqueId``, ``dataTimeStamp``
and the scan position as ``PositionX``/``PositionY`` attributes in metres)
and the areaDetector-style scalars of ``ptychoflow.pvnames.DETECTOR``. An
acquisition streams one scan at ``cam1:AcquireRate`` and saves the same frames
to a scan file (``*.h5.part`` renamed to ``*.h5`` when complete), whose name
``HDF1:FullFileName_RBV`` shows while it is being written. With ``scatter`` K
> 1 it also serves ``Pva2:Image`` ... ``PvaK:Image`` and sends frame n to
``Pva((n-1) mod K + 1):Image``, as areaDetector's NDPluginScatter in front of K
NDPluginPva plugins hands frames round (an edge follows them with one lane each).
With ``codec`` the frames go out compressed, as areaDetector's NDCodec plugin in
front of NDPluginPva sends them (:mod:`ptychoflow.codec`); the scan file holds
them uncompressed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from p4p.nt import NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from ptychoflow.chunks import ChunkPolicy
from ptychoflow.ntnda import make_frame, stamp
from ptychoflow.pvnames import DETECTOR, PVSpec
from ptychoflow.scanfile import Scan, ScanWriter

log = logging.getLogger(__name__)

_NT_CODES = {"NTScalar:i": "i", "NTScalar:l": "l", "NTScalar:d": "d", "NTScalar:s": "s"}


def next_scan_path(out_dir: Path, name: str) -> Path:
    """``out_dir/name_0001.h5``, the first number whose file (or ``.part``) does not exist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    i = 1
    while (out_dir / f"{name}_{i:04d}.h5").exists() or \
            (out_dir / f"{name}_{i:04d}.h5.part").exists():
        i += 1
    return out_dir / f"{name}_{i:04d}.h5"


class DetectorSimulator:
    """Streams a :class:`Scan` over pvAccess on demand and saves what it streamed.

    ``cam1:Acquire`` = 1 starts an acquisition of the whole scan; it returns to
    0 when the scan ends or when a client puts 0 (the frames sent so far are
    saved as a complete, shorter scan file: nothing streamed is lost). With
    ``next_scan``, acquisition ``n`` > 1 streams ``next_scan(n)`` instead of
    repeating the first scan.
    """

    def __init__(self, prefix: str, scan: Scan, rate: float = 0.0,
                 out_dir: Path | None = None, name: str = "scan",
                 next_scan: Callable[[int], Scan] | None = None, tick_s: float = 0.0,
                 scatter: int = 1, codec: str = "", chunks: ChunkPolicy | None = None) -> None:
        self.prefix = prefix
        self.chunks = chunks  # also write the scan in chunks for streaming rPIE
        self.codec = codec
        self.scan = scan
        self.next_scan = next_scan
        self.out_dir = out_dir
        self.name = name
        self.acquisitions = 0
        self.last_file: Path | None = None
        self._go = threading.Event()
        self._stop_acq = threading.Event()
        self._shutdown = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.rate = float(rate)
        if not (tick_s >= 0 and np.isfinite(tick_s)):
            raise ValueError(f"tick must be >= 0 s, got {tick_s}")
        self.tick_s = float(tick_s)
        self.pvs: dict[str, SharedPV] = {}
        if scatter < 1:
            raise ValueError(f"scatter must be at least 1, got {scatter}")
        self.images = [SharedPV(initial=make_frame(np.zeros(scan.frame_shape, scan.data.dtype),
                                                   0)) for _ in range(scatter)]
        for k, pv in enumerate(self.images):
            self.pvs[DETECTOR.image(k + 1).suffix] = pv
        for spec in DETECTOR:
            if spec.record == "NTNDArray":
                continue
            code = _NT_CODES[spec.record]
            initial: Any = spec.initial if code != "s" else str(spec.initial)
            pv = SharedPV(nt=NTScalar(code, display=True), initial=initial)
            self.pvs[spec.suffix] = pv
        self.pv(DETECTOR.cam1_acquire_rate).post(self.rate)
        self._on_put(DETECTOR.cam1_acquire, self._put_acquire)
        self._on_put(DETECTOR.cam1_acquire_rate, self._put_rate)
        self._thread = threading.Thread(target=self._loop, name="sim-stream", daemon=True)

    def pv(self, spec: PVSpec) -> SharedPV:
        """The served PV of ``spec``."""
        return self.pvs[spec.suffix]

    def _on_put(self, spec: PVSpec, handler: Callable[[Any], str | None]) -> None:
        pv = self.pv(spec)

        @pv.put
        def _put(pv: SharedPV, op: Any) -> None:
            try:
                error = handler(op.value())
            except (TypeError, ValueError) as exc:
                error = str(exc)
            if error:
                op.done(error=error)
            else:
                pv.post(op.value())
                op.done()

    def _put_acquire(self, value: Any) -> str | None:
        v = int(value)
        if v not in (0, 1):
            return f"{DETECTOR.cam1_acquire.suffix} takes 0 (stop) or 1 (acquire), not {v}"
        if v == 1:
            self._stop_acq.clear()
            self._idle.clear()  # busy from the moment the put is accepted
            self._go.set()
        else:
            self._stop_acq.set()
        return None

    def _put_rate(self, value: Any) -> str | None:
        r = float(value)
        if not np.isfinite(r) or r < 0:
            return (f"{DETECTOR.cam1_acquire_rate.suffix} must be >= 0 Hz "
                    f"(0 = as fast as possible), not {r}")
        self.rate = r
        return None

    @property
    def providers(self) -> dict[str, SharedPV]:
        """PV name -> SharedPV, for a p4p ``Server``."""
        return {self.prefix + s: pv for s, pv in self.pvs.items()}

    def start(self, acquire: bool = False) -> None:
        """Start the streaming thread; with ``acquire``, begin an acquisition at once."""
        self._thread.start()
        if acquire:
            self._put_acquire(1)
            self.pv(DETECTOR.cam1_acquire).post(1)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no acquisition is running (after one has started)."""
        return self._idle.wait(timeout)

    def shutdown(self) -> None:
        """Stop any acquisition (saving what was sent) and end the streaming thread."""
        self._stop_acq.set()
        self._shutdown.set()
        self._go.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._shutdown.is_set():
            self._go.wait()
            self._go.clear()
            if self._shutdown.is_set():
                break
            self._idle.clear()
            try:
                self._acquire()
            except Exception:
                log.exception("acquisition failed")
            finally:
                self.pv(DETECTOR.cam1_acquire).post(0)
                self._idle.set()

    def _acquire(self) -> None:
        if self.acquisitions and self.next_scan is not None:
            self.scan = self.next_scan(self.acquisitions + 1)
        scan = self.scan
        saver = _BlockSaver(self._open_writer(), scan) if self.out_dir is not None else None
        self.acquisitions += 1
        counter = self.pv(DETECTOR.cam1_array_counter)
        rate_pv = self.pv(DETECTOR.cam1_array_rate)
        counter.post(0)
        log.info("acquisition %d: %d frames at %s", self.acquisitions, scan.n_frames,
                 f"{self.rate:g} Hz" if self.rate > 0 else "full speed")
        frames = _FramePrep(scan, self.acquisitions, self.codec)
        posts = [pv.post for pv in self.images]
        k = len(posts)
        t0 = last_report = time.perf_counter()
        sent_at_report = sent = 0
        try:
            for i in range(scan.n_frames):
                if self._stop_acq.is_set():
                    break
                if self.rate > 0:
                    delay = t0 + i / self.rate - time.perf_counter()
                    if delay > 0:
                        # with a tick, sleep one tick past this frame's time: the frames
                        # that fall due meanwhile go out with it, one wake-up for the lot
                        time.sleep(delay + self.tick_s)
                posts[i % k](stamp(frames[i]))
                sent = i + 1
                if saver is not None and sent % _BLOCK == 0:
                    saver.submit(sent - _BLOCK, sent)
                if sent % 64 == 0:
                    now = time.perf_counter()
                    if now - last_report >= 0.2:
                        counter.post(sent)
                        rate_pv.post((sent - sent_at_report) / (now - last_report))
                        last_report, sent_at_report = now, sent
        except BaseException:
            if saver is not None:
                saver.finish(keep=False)
            raise
        elapsed = time.perf_counter() - t0
        counter.post(sent)
        rate_pv.post(sent / elapsed if elapsed > 0 else 0.0)
        if saver is not None:
            saver.submit(sent - sent % _BLOCK, sent)
            self.last_file = saver.finish(keep=sent > 0)
            if self.last_file is not None:
                log.info("saved %d frames to %s (%.0f frames/s)", sent, self.last_file,
                         sent / elapsed if elapsed > 0 else 0.0)

    def _open_writer(self) -> ScanWriter:
        assert self.out_dir is not None
        scan = self.scan
        writer = ScanWriter(next_scan_path(self.out_dir, self.name), scan.frame_shape,
                            scan.data.dtype, energy_ev=scan.energy_ev,
                            distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
                            probe=scan.probe, truth=scan.truth,
                            truth_pixel_size_m=scan.truth_pixel_size_m,
                            metadata=scan.metadata, expected_frames=scan.n_frames,
                            chunks=self.chunks)
        self.pv(DETECTOR.hdf1_full_file_name).post(str(writer.path))
        return writer


_BLOCK = 64  # frames per HDF5 write
_PREPARE_BYTES = 512 << 20  # build all frames before streaming when they fit in this much


class _FramePrep:
    """The acquisition's NTNDArray values, built before streaming when they fit in memory.

    Building a value costs as much as posting it; doing it before the first
    frame leaves the streaming loop only the time stamp to set. Large scans
    (over ``_PREPARE_BYTES``) build each value just in time instead. With a
    ``codec`` the compression is part of building, so it too is done up front.
    """

    def __init__(self, scan: Scan, scan_id: int, codec: str = "") -> None:
        self.scan = scan
        self.scan_id = scan_id
        self.codec = codec
        self.xs = scan.positions[:, 1].tolist()
        self.ys = scan.positions[:, 0].tolist()
        self.ready: list[Any] | None = None
        if scan.data.nbytes <= _PREPARE_BYTES:
            self.ready = [self._build(i) for i in range(scan.n_frames)]

    def _build(self, i: int) -> Any:
        return make_frame(self.scan.data[i], i + 1, 0.0, {
            "PositionX": self.xs[i], "PositionY": self.ys[i], "ScanId": self.scan_id},
            codec=self.codec)

    def __getitem__(self, i: int) -> Any:
        return self.ready[i] if self.ready is not None else self._build(i)


class _BlockSaver:
    """Writes blocks of already-sent frames on its own thread, off the streaming loop.

    The streaming thread hands over index ranges of the in-memory scan, so the
    file holds exactly the frames that were sent and the loop never waits on disk.
    """

    def __init__(self, writer: ScanWriter, scan: Scan) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._q: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._scan = scan
        self._thread = threading.Thread(target=self._run, name="sim-save", daemon=True)
        self._started = False

    def submit(self, start: int, stop: int) -> None:
        if stop > start:
            if not self._started:
                self._started = True
                self._thread.start()
            self._q.put((start, stop))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is not None:
                continue
            start, stop = item
            try:
                self.writer.append_block(self._scan.data[start:stop],
                                         self._scan.positions[start:stop])
            except BaseException as exc:  # noqa: BLE001 - reported by finish()
                self.error = exc

    def finish(self, keep: bool) -> Path | None:
        """Wait for pending blocks; rename the file, or remove it if nothing or an error."""
        if self._started:
            self._q.put(None)
            self._thread.join()
        if not keep or self.error is not None or self.writer.frames_written == 0:
            self.writer.discard()
            if self.error is not None:
                log.error("saving the scan failed, file removed: %s", self.error)
            return None
        return self.writer.close()


def serve(sim: DetectorSimulator, acquire: bool, keep_serving: bool,
          stop: threading.Event, delay: float = 0.0) -> None:
    """Run the server until ``stop`` is set, or (without ``keep_serving``) the scan ends."""
    with Server(providers=[sim.providers]):
        log.info("serving %s (%d frames of %dx%d %s%s)", DETECTOR.pva1_image.name(sim.prefix),
                 sim.scan.n_frames, *sim.scan.frame_shape, sim.scan.data.dtype,
                 f", compressed: {sim.codec}" if sim.codec else "")
        if delay > 0:
            stop.wait(delay)
        sim.start(acquire=acquire and not stop.is_set())
        if acquire and not keep_serving:
            while not stop.is_set() and not sim.wait_idle(0.1):
                pass
        else:
            stop.wait()
        sim.shutdown()
