"""Local compute: stages in spawned worker processes on this host (the default back end).

Each worker is its own single-process pool (the *spawn* start method: torch and
forked threads do not mix), so a worker that dies (killed after ignoring an
Abort, out of memory) breaks only its own stage: the other runs' stages go on,
and a fresh process takes its place for the next stage. Progress and cancel
cross the process boundary through the file channel of
:func:`ptychoflow.stages.file_reporter`, the same one Parsl workers use.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401 - import (and register its atexit hook) early
import functools
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptychoflow.config import resolve, setting
from ptychoflow.stages import Reporter, StageFn, run_stage

log = logging.getLogger(__name__)
SECTION = "compute.local"


def _init_worker(parent: int, threads: int) -> None:
    """Initializer of worker processes: share the cores, and exit when the IOC is gone.

    Each worker gets its share of the host's cores as its thread count (OpenMP,
    MKL and torch read these before they start their pools): two stages that
    each spun a thread per core would fight over the same cores, and overlapping
    runs would be slower, not faster. After a ``kill -9`` of the IOC nothing
    would stop its spawned workers, and an orphaned worker would go on writing
    into a run folder the registry already calls interrupted.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class LocalComputeSettings:
    """``[compute.local]``."""

    workers: int = setting(2, "stage worker processes (stages of overlapping runs at once)")
    threads_per_worker: int = setting(0, "threads each worker's stages use (0: this host's "
                                         "cores divided among the workers)")

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads_per_worker < 0:
            raise ValueError("workers must be at least 1 and threads_per_worker at least 0")

    @classmethod
    def from_table(cls, table: dict[str, Any] | None) -> LocalComputeSettings:
        """Settings from the TOML table; unknown keys and bad values raise ConfigError."""
        return resolve(cls, SECTION, None, {SECTION: table or {}})


class _Slot:
    """One worker process and the number of stages submitted to it and not yet done."""

    def __init__(self) -> None:
        self.pool: cf.ProcessPoolExecutor | None = None
        self.pending = 0


class LocalCompute:
    """Stages in worker processes on this host."""

    name = "Local"
    section = SECTION
    shares_files = True

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None:
        self.cfg = LocalComputeSettings.from_table(table)
        self.workers = self.cfg.workers
        self.threads = self.cfg.threads_per_worker or max(1, (os.cpu_count() or 1)
                                                          // self.workers)
        self._ctx = mp.get_context("spawn")
        self._slots = [_Slot() for _ in range(self.workers)]
        self._lock = threading.Lock()
        self._closing = False

    def check(self) -> None:
        """Local compute needs no configuration."""

    def _pool(self, slot: _Slot) -> cf.ProcessPoolExecutor:
        if self._closing:
            raise RuntimeError("the IOC is stopping; no new stage worker is started")
        if slot.pool is None:
            slot.pool = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=self._ctx, initializer=_init_worker,
                initargs=(os.getpid(), self.threads))
        return slot.pool

    def start(self) -> None:
        """Start every worker process now, so the first stages start quickly."""
        try:
            with self._lock:
                futures = [self._pool(slot).submit(os.getpid) for slot in self._slots]
            for f in futures:
                f.result()
        except (RuntimeError, cf.BrokenExecutor, cf.CancelledError) as exc:
            if not self._closing:  # stopping while warming up is not an error
                raise
            log.debug("warm-up cut short by shutdown: %s", exc)

    def on_every_worker(self, fn: Callable[[], Any]) -> list[Any]:
        """Run ``fn`` once in each worker (e.g. to import torch before timing stages)."""
        with self._lock:
            futures = [self._pool(slot).submit(fn) for slot in self._slots]
        return [f.result() for f in futures]

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter | None) -> cf.Future[dict[str, Any]]:
        """Run the stage on the least busy worker (a broken one is replaced first)."""
        with self._lock:
            slot = min(self._slots, key=lambda s: s.pending)
            try:
                fut = self._pool(slot).submit(run_stage, fn, scan_path, workdir, params,
                                              reporter)
            except cf.BrokenExecutor:  # its process died with the last stage: start anew
                slot.pool = None
                fut = self._pool(slot).submit(run_stage, fn, scan_path, workdir, params,
                                              reporter)
            slot.pending += 1
        fut.add_done_callback(functools.partial(self._done, slot))
        return fut

    def _done(self, slot: _Slot, fut: cf.Future[Any]) -> None:
        with self._lock:
            slot.pending -= 1
            exc = None if fut.cancelled() else fut.exception()
            if isinstance(exc, cf.BrokenExecutor) and slot.pool is not None:
                pool, slot.pool = slot.pool, None
                pool.shutdown(wait=False, cancel_futures=True)

    def is_worker_lost(self, exc: BaseException) -> bool:
        """A broken pool: its process died."""
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown(self) -> None:
        """Stop the worker processes."""
        with self._lock:
            self._closing = True
            pools = [s.pool for s in self._slots if s.pool is not None]
            for s in self._slots:
                s.pool = None
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
