"""Where inference runs: on a thread of the edge process, or in N worker processes.

Both runners take a preprocessed batch and return a future of its outputs.
The service keeps the futures in submission order and publishes in that
order, so frames are shared among workers without loss or duplication and
come out as if one worker had done them all.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.engines import Engine, make_engine


class Runner:
    """Runs batches somewhere; ``submit`` returns a future of the output list."""

    workers = 1

    def submit(self, x: np.ndarray) -> Future[list[np.ndarray]]:
        """Queue one batch for inference."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the queued batches, then release the engine(s)."""


class ThreadRunner(Runner):
    """One engine on one thread of this process (the default, and the fastest on one device)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-infer")

    def submit(self, x: np.ndarray) -> Future[list[np.ndarray]]:
        """Queue one batch for the engine thread."""
        return self._pool.submit(self.engine.infer, x)

    def close(self) -> None:
        """Drain and release."""
        self._pool.shutdown(wait=True)
        self.engine.close()


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
