"""Where inference runs: on a thread of the edge process, or in N worker processes.

Both runners take a preprocessed batch and return a future of its outputs.
The service keeps the futures in submission order and publishes in that
order, so frames are shared among workers without loss or duplication and
come out as if one worker had done them all.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.infer.engines import Engine, make_engine
from ptychoflow.edge.threads import name_os_thread


class Runner:
    """Runs batches somewhere; ``submit`` returns a future of the output list."""

    workers = 1
    streams = 1  # batches one worker runs at the same time

    def submit(self, x: np.ndarray) -> Future[list[np.ndarray]]:
        """Queue one batch for inference."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where inference runs, in words (Message_RBV, benchmark output)."""
        return f"{self.workers} worker processes"

    def warm_up(self, x: np.ndarray, timeout: float | None = None) -> list[list[np.ndarray]]:
        """Run ``x`` once on every engine this runner holds; the outputs of each."""
        futures = [self.submit(x) for _ in range(self.workers)]
        return [f.result(timeout) for f in futures]

    def close(self) -> None:
        """Finish the queued batches, then release the engine(s)."""


class ThreadRunner(Runner):
    """Engines on threads of this process (the default, and the fastest on one device).

    With several engines (inference *streams*), batches run side by side, each
    on whichever engine is free. On a 2-core box two one-thread ONNX Runtime
    sessions did 4 % more frames per second than one two-thread session at
    batches of 16 and 20 % more at batches of 2 (a steady stream's size):
    their threads never wait for each other at the end of each layer, nor
    when the stream's I/O threads take a core for a moment.
    """

    def __init__(self, engines: Engine | Sequence[Engine]) -> None:
        self.engines = [engines] if isinstance(engines, Engine) else list(engines)
        if not self.engines:
            raise ValueError("a runner needs at least one engine")
        self.engine = self.engines[0]
        self.streams = len(self.engines)
        self._free: queue.SimpleQueue[Engine] = queue.SimpleQueue()
        for e in self.engines:
            self._free.put(e)
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="edge-infer",
                                        initializer=name_os_thread)

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        # the pool has as many threads as engines, so a free engine is always there
        engine = self._free.get()
        try:
            return engine.infer(x)
        finally:
            self._free.put(engine)

    def describe(self) -> str:
        """Engine, provider or device, and the number of streams."""
        eng = self.engine
        where = getattr(eng, "providers", None) or [str(getattr(eng, "_device", ""))]
        streams = f", {self.streams} streams" if self.streams > 1 else ""
        return f"{eng.name} ({where[0]}{streams})"

    def submit(self, x: np.ndarray) -> Future[list[np.ndarray]]:
        """Queue one batch for the next free engine."""
        return self._pool.submit(self._infer, x)

    def warm_up(self, x: np.ndarray, timeout: float | None = None) -> list[list[np.ndarray]]:
        """Every engine, one after the other: each gets its first (slow) call here."""
        return [e.infer(x) for e in self.engines]

    def close(self) -> None:
        """Drain and release."""
        self._pool.shutdown(wait=True)
        for e in self.engines:
            e.close()


def gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES, else nvidia-smi), 0 if none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.splitlines() if line.startswith("GPU ")])


_ENGINE: Engine | None = None


def _init_worker(counter: Any, path: str, kwargs: dict[str, Any], gpus: int) -> None:
    global _ENGINE
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    gpu = index % gpus if gpus and kwargs.get("device") in ("cuda", "auto") else None
    _ENGINE = make_engine(Path(path), gpu=gpu, **kwargs)


def _infer(x: np.ndarray) -> list[np.ndarray]:
    assert _ENGINE is not None, "worker engine not initialised"
    return _ENGINE.infer(x)


class ProcessRunner(Runner):
    """N worker processes, each with its own engine (one per GPU when there are several).

    On a CPU box each worker gets ``threads`` intra-op threads (default: the
    cores divided among the workers), so N workers do not oversubscribe.
    """

    def __init__(self, path: Path, workers: int, engine_kwargs: dict[str, Any]) -> None:
        self.workers = workers
        kwargs = dict(engine_kwargs)
        if not kwargs.get("threads"):
            kwargs["threads"] = max(1, len(os.sched_getaffinity(0)) // workers)
        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(counter, str(path), kwargs, gpu_count()))

    def submit(self, x: np.ndarray) -> Future[list[np.ndarray]]:
        """Queue one batch for whichever worker is free."""
        return self._pool.submit(_infer, x)

    def close(self) -> None:
        """Drain and stop the workers."""
        self._pool.shutdown(wait=True)
