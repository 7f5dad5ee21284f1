"""The peer of ``ptychoflow bench edge``: an ONNX processor for ``pvapy-hpc-consumer``.

It is what a beamline user writes on top of pvapy's streaming framework, in the
shape of edgePtychoNN's ``InferPtychoNNImageProcessor``: ``process`` (the
consumer's thread) decodes each NTNDArray and queues the image; an inference
thread collects ``batch`` frames (8, as edgePtychoNN), runs the network and
publishes each phase image as an NTNDArray with its input's ``uniqueId`` on
the consumer's output channel. Differences from edgePtychoNN, all in the
peer's favour or neutral: ONNX Runtime on the CPU with the edge's session
options (``threads`` intra-op threads, no spinning) instead of TensorRT; a
plain ``queue.Queue`` instead of ``multiprocessing.Queue`` (no pickling of
frames between two threads of one process); and the same preprocessing as the
edge (the model card's :class:`~ptychoflow.preprocess.Preprocess`, once per
batch). A partial batch is run once no frame came for ``flush_ms``, so the tail
of a scan is not held back.

pvapy loads this file by path (``--processor-file``), outside any package:
no dataclasses or relative imports here.

Configuration (``--processor-args`` JSON): ``model`` (path of ``model-vN.onnx``,
its card beside it), ``threads`` (0: every core), ``batch`` (8), ``flush_ms``
(20).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pvaccess as pva
from pvapy.hpc.adImageProcessor import AdImageProcessor

from ptychoflow.modelcard import ModelCard, card_path, pick_outputs


def _name_os_thread(name: str) -> None:
    """Show the calling thread (and the threads it starts) as ``name`` in /proc and top."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


class PeerOnnxProcessor(AdImageProcessor):
    """Batches frames, runs an ONNX model on them and publishes one NTNDArray per frame."""

    def __init__(self, configDict: dict[str, Any] | None = None) -> None:
        config = dict(configDict or {})
        super().__init__(config)
        if "model" not in config:
            raise ValueError("PeerOnnxProcessor needs the model path: --processor-args "
                             "'{\"model\": \"/path/model-v1.onnx\"}'")
        self.model = Path(config["model"])
        self.threads = int(config.get("threads", 0))
        self.batch = int(config.get("batch", 8))
        self.flush_s = float(config.get("flush_ms", 20.0)) / 1000.0
        if self.batch < 1 or self.flush_s <= 0:
            raise ValueError(f"batch must be >= 1 and flush_ms > 0, got {self.batch} and "
                             f"{self.flush_s * 1000.0} ms")
        self.preprocess = ModelCard.load(card_path(self.model)).preprocessing
        self.frames: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.resetStats()

    # -- the session lives on the inference thread, so ONNX Runtime's pool threads
    # -- inherit its name and their CPU shows up under it
    def _session(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads if self.threads > 0 else _cores()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.model), so, providers=["CPUExecutionProvider"])

    def _infer_loop(self) -> None:
        _name_os_thread("peer-infer")
        try:
            session = self._session()
        except BaseException as exc:  # reported by start(), on the consumer's thread
            self.error = exc
            self.ready.set()
            return
        names = [o.name for o in session.get_outputs()]
        phase = names[pick_outputs(names)[0]]
        input_name = session.get_inputs()[0].name
        self.ready.set()
        ids: list[int] = []
        images: list[np.ndarray] = []
        while True:
            try:
                item = self.frames.get(timeout=self.flush_s)
            except queue.Empty:  # the stream paused: run the partial batch now
                if images:
                    self.nFlushes += 1
                    self._run(session, input_name, phase, ids, images)
                    ids, images = [], []
                continue
            if item is None:  # stop
                break
            ids.append(item[0])
            images.append(item[1])
            if len(images) == self.batch:
                self._run(session, input_name, phase, ids, images)
                ids, images = [], []
        if images:
            self._run(session, input_name, phase, ids, images)

    def _run(self, session: Any, input_name: str, phase: str, ids: list[int],
             images: list[np.ndarray]) -> None:
        t0 = time.perf_counter()
        x = self.preprocess(np.stack(images))
        t1 = time.perf_counter()
        out = session.run([phase], {input_name: x})[0]
        t2 = time.perf_counter()
        for uid, img in zip(ids, out, strict=True):
            self.updateOutputChannel(self.generateNtNdArray2D(uid, img.reshape(img.shape[-2:])))
        t3 = time.perf_counter()
        self.preprocessTime += t1 - t0
        self.inferTime += t2 - t1
        self.publishTime += t3 - t2
        self.nBatchesProcessed += 1
        self.nFramesProcessed += len(ids)

    # -- the UserDataProcessor interface

    def start(self) -> None:
        """Start the inference thread; raise here if the model cannot be loaded."""
        self.worker = threading.Thread(target=self._infer_loop, name="peer-infer", daemon=True)
        self.worker.start()
        self.ready.wait()
        if self.error is not None:
            raise RuntimeError(f"cannot load {self.model}: {self.error}") from self.error

    def process(self, pvObject: Any) -> Any:
        """Decode the frame and queue it for the inference thread (the consumer's thread)."""
        t0 = time.perf_counter()
        uid, image = self.reshapeNtNdArray(pvObject)[:2]
        if image is not None:
            self.frames.put((int(uid), image))
        self.decodeTime += time.perf_counter() - t0
        return pvObject

    def getOutputPvObjectType(self, pvObject: Any) -> Any:
        """Pvapy's own NtNdArray: the output record's type, whatever the source serves.

        The default is the input's structure, which from a p4p or areaDetector
        source is not the one :meth:`generateNtNdArray2D` builds, and pvapy's
        server then refuses the first update and aborts on the next.
        """
        return pva.NtNdArray()

    def stop(self) -> None:
        """Run what is queued, then end the inference thread."""
        if self.worker is not None:
            self.frames.put(None)
            self.worker.join(30.0)

    def resetStats(self) -> None:
        """Zero the counters."""
        self.nFramesProcessed = 0
        self.nBatchesProcessed = 0
        self.nFlushes = 0
        self.decodeTime = 0.0
        self.preprocessTime = 0.0
        self.inferTime = 0.0
        self.publishTime = 0.0

    def getStats(self) -> dict[str, Any]:
        """Frames, batches, and where the time went (seconds, and us per frame)."""
        n = max(1, self.nFramesProcessed)
        busy = self.preprocessTime + self.inferTime + self.publishTime
        return {
            "nFramesProcessed": self.nFramesProcessed,
            "nBatchesProcessed": self.nBatchesProcessed,
            "nFlushes": self.nFlushes,
            "nFramesQueued": self.frames.qsize(),
            "decodeTime": self.decodeTime,
            "preprocessTime": self.preprocessTime,
            "inferTime": self.inferTime,
            "publishTime": self.publishTime,
            "decodeUsPerFrame": 1e6 * self.decodeTime / n,
            "preprocessUsPerFrame": 1e6 * self.preprocessTime / n,
            "inferUsPerFrame": 1e6 * self.inferTime / n,
            "publishUsPerFrame": 1e6 * self.publishTime / n,
            "frameProcessingRate": self.nFramesProcessed / busy if busy > 0 else 0.0,
        }

    def getStatsPvaTypes(self) -> dict[str, Any]:
        """PVA types of :meth:`getStats`, for the consumer's status channel."""
        ints = ("nFramesProcessed", "nBatchesProcessed", "nFlushes", "nFramesQueued")
        return {k: pva.UINT if k in ints else pva.DOUBLE for k in self.getStats()}


def _cores() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
