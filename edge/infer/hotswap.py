"""Loading a model for service and swapping it in without losing a frame.

:func:`prepare` does everything that can fail or take long, resolve the path
inside the model folder, build the engine(s), check checksum and shapes
against the card, run a warm-up batch and check the output shapes, before
the model is allowed near the stream. :class:`HotSwapper` does that on a
background thread and leaves the result in a slot that the inference loop
picks up between two batches; the old runner finishes the batches it already
has, so no frame is dropped because of a swap. A model that fails any check
is refused and the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ptychoflow.edge.infer.engines import Engine, EngineError, cpu_threads, make_engine
from ptychoflow.edge.infer.modelcheck import (
    ModelError,
    ModelInfo,
    describe_model,
    resolve_model_path,
    verify_card,
)
from ptychoflow.edge.infer.physics import FrameCheck, physics_check
from ptychoflow.edge.infer.runners import ProcessRunner, Runner, ThreadRunner
from ptychoflow.edge.messages import ModelNote
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.geometry import Geometry
from ptychoflow.modelcard import ModelCardError

log = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 600.0  # a first TensorRT build can take minutes


class Served:
    """A model ready to serve: what it expects, where it runs, and its batches in flight.

    Each batch submitted holds the model (:meth:`hold`) until it is published
    (:meth:`done`); a model swapped out is closed by :meth:`retire` once the last
    of its batches is out, so no frame is dropped because of a swap.
    """

    def __init__(self, info: ModelInfo, runner: Runner, check: FrameCheck | None = None,
                 check_note: str = "") -> None:
        self.info = info
        self.runner = runner
        self.check = check  # the physics check of this model's predictions, if it has one
        self.check_note = check_note
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Event()
        self._idle.set()

    def note(self) -> ModelNote:
        """The note the publisher and the status PVs need."""
        info = self.info
        return ModelNote(info.version, str(info.path), info.pixel_size_m,
                         self.runner.describe(), self.check_note)

    def hold(self) -> None:
        """A batch of this model was submitted."""
        with self._lock:
            self._in_flight += 1
            self._idle.clear()

    def done(self) -> None:
        """A batch of this model was published (or failed)."""
        with self._lock:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._idle.set()

    def retire(self) -> None:
        """Close the runner once every batch submitted to it is published (in the background)."""
        def close() -> None:
            self._idle.wait()
            self.runner.close()

        threading.Thread(target=close, name="edge-retire", daemon=True).start()

    def close(self) -> None:
        """Close now, after the batches in flight (at shutdown)."""
        self._idle.wait(60)
        self.runner.close()


def _engine_kwargs(settings: EdgeSettings, model_dir: Path) -> dict[str, object]:
    return {"engine": settings.engine, "device": settings.device, "threads": settings.threads,
            "fp16": settings.fp16,
            "trt_cache_dir": Path(settings.trt_cache_dir) if settings.trt_cache_dir
            else model_dir / ".trt"}


def _inspect(path: Path, settings: EdgeSettings, model_dir: Path) -> Engine:
    try:
        return make_engine(path, **_engine_kwargs(settings, model_dir))  # type: ignore[arg-type]
    except ModelCardError as exc:  # the PyTorch engine needs the card for names and shapes
        raise ModelError(f"{path.name}: {exc}") from exc


def prepare(spec: str, settings: EdgeSettings, model_dir: Path) -> Served:
    """Load, check and warm up the model ``spec`` (path or version); raises ModelError."""
    path = resolve_model_path(spec, model_dir, settings.int8)
    verify_card(path)
    try:
        engine = _inspect(path, settings, model_dir)
    except (EngineError, OSError) as exc:
        raise ModelError(str(exc)) from exc
    try:
        info = describe_model(path, engine.input_name, engine.input_shape, engine.outputs,
                              settings.pixel_size_m, verify=False,  # done above
                              geometry=Geometry.parse(settings.geometry))
    except ModelError:
        engine.close()
        raise
    runner: Runner
    if settings.workers == 1:
        runner = _thread_runner(engine, path, settings, model_dir)
    else:
        engine.close()
        runner = ProcessRunner(path, settings.workers, _engine_kwargs(settings, model_dir))
    try:
        _warm_up(info, runner)
    except Exception:
        runner.close()
        raise
    return Served(info, runner, *physics_check(info, settings.check_every))


def streams_for(engine: Engine, settings: EdgeSettings) -> int:
    """How many inference streams the edge process runs (``--streams``, 0: automatic).

    Automatic: one per core, at most four, for engines that run side by side on
    the CPU (ONNX Runtime there); one otherwise (a GPU, or PyTorch, whose
    thread count is one setting for the whole process).
    """
    if settings.streams > 0:
        if settings.streams > 1 and not engine.concurrent_cpu:
            log.info("%s runs one stream here; --streams %d ignored", engine.name,
                     settings.streams)
            return 1
        return settings.streams
    if not engine.concurrent_cpu:
        return 1
    return auto_streams(settings.threads)


def auto_streams(threads: int) -> int:
    """The automatic number of CPU streams: one per core (of ``threads``), at most four."""
    return max(1, min(4, cpu_threads(threads)))


def _thread_runner(engine: Engine, path: Path, settings: EdgeSettings,
                   model_dir: Path) -> ThreadRunner:
    """One engine, or ``streams`` engines that share the cores (``threads`` split among them)."""
    streams = streams_for(engine, settings)
    if streams == 1:
        return ThreadRunner(engine)
    engine.close()  # rebuilt with its share of the threads
    kwargs = _engine_kwargs(settings, model_dir)
    kwargs["threads"] = max(1, cpu_threads(settings.threads) // streams)
    engines: list[Engine] = []
    try:
        for _ in range(streams):
            engines.append(make_engine(path, **kwargs))  # type: ignore[arg-type]
    except (EngineError, OSError) as exc:
        for e in engines:
            e.close()
        raise ModelError(str(exc)) from exc
    return ThreadRunner(engines)


def _warm_up(info: ModelInfo, runner: Runner) -> None:
    """Run one batch on every engine and check each output holds one image per frame."""
    n = info.batch or 2
    x = np.zeros((n, 1, info.height, info.width), np.float32)
    try:
        results = runner.warm_up(x, WARMUP_TIMEOUT_S)
    except Exception as exc:
        raise ModelError(f"{info.path.name}: warm-up inference failed: {exc}") from exc
    for outs in results:
        if len(outs) != len(info.output_names):
            raise ModelError(f"{info.path.name}: warm-up gave {len(outs)} outputs, the model "
                             f"declares {len(info.output_names)}")
        for name, o in zip(info.output_names, outs, strict=True):
            if o.shape[0] != n or o.ndim not in (3, 4) or (o.ndim == 4 and o.shape[1] != 1):
                raise ModelError(f"{info.path.name}: output {name} came out {list(o.shape)} "
                                 f"for a batch of {n}; expected [{n}, 1, H, W]")
            if not np.all(np.isfinite(o)):
                raise ModelError(f"{info.path.name}: output {name} is not finite on a blank "
                                 "frame; the model is broken")


class HotSwapper:
    """Loads models in the background; the inference loop takes the result between batches."""

    def __init__(self, settings: EdgeSettings, model_dir: Path,
                 on_message: Callable[[str], None],
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self._settings = settings
        self._model_dir = model_dir
        self._on_message = on_message
        self.on_refused = on_refused  # (spec, why): a lane tells the edge process
        self._lock = threading.Lock()
        self._ready: Served | None = None
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """A load is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def request(self, spec: str) -> None:
        """Start loading ``spec``; ValueError (refusing the put) while one is loading."""
        if self.busy:
            raise ValueError("a model is already being loaded; wait for Message_RBV to say "
                             "it is done")
        # refuse bad paths at the put itself
        resolve_model_path(spec, self._model_dir, self._settings.int8)
        self._thread = threading.Thread(target=self._load, args=(spec,), daemon=True,
                                        name="edge-swap")
        self._thread.start()

    def _load(self, spec: str) -> None:
        self._on_message(f"loading model {spec}")
        try:
            served = prepare(spec, self._settings, self._model_dir)
        except Exception as exc:  # any failure refuses the model; the old one keeps serving
            log.warning("model %s refused: %s", spec, exc)
            self._on_message(f"model {spec} refused, previous model still serving: {exc}")
            if self.on_refused is not None:
                self.on_refused(spec, str(exc))
            return
        with self._lock:
            old, self._ready = self._ready, served
        if old is not None:  # a newer load overtook one never picked up
            old.close()

    def take(self) -> Served | None:
        """The freshly loaded model, once; None when there is none."""
        if self._ready is None:
            return None
        with self._lock:
            served, self._ready = self._ready, None
        return served

    def join(self, timeout: float | None = None) -> None:
        """Wait for a load in progress (used at shutdown and in tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
