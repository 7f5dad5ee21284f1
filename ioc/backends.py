"""Where stages run: one small class per compute back end, chosen by ``Compute:Backend``.

``Local`` is a :class:`concurrent.futures.ProcessPoolExecutor` with the *spawn*
start method (torch and forked threads do not mix); progress and cancel cross
the process boundary through :mod:`multiprocessing.Manager` proxies inside the
stage's :class:`~ptychoflow.stages.Reporter`. Parsl, Globus Compute and Globus
Transfer are selectable PV values whose wiring arrives with the federation
issue; until then choosing them fails the run at start and says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401 - import (and register its atexit hook) early
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from typing import Any, Protocol

from ptychoflow.stages import Reporter, StageFn

log = logging.getLogger(__name__)


class BackendNotConfigured(RuntimeError):
    """The selected back end has no configuration in this IOC."""


def run_stage(fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
              reporter: Reporter) -> dict[str, Any]:
    """Worker-side wrapper: announce the worker's pid (so Abort can stop it), run the stage."""
    if reporter.queue is not None:
        reporter.queue.put({"stage": reporter.stage, "pid": os.getpid()})
    result = fn(scan_path, workdir, params, progress=reporter)
    if not isinstance(result, dict):
        raise TypeError(f"stage {reporter.stage} returned {type(result).__name__}, not a dict")
    return result


def _exit_with_parent(parent: int) -> None:
    """Initializer of worker and manager processes: exit when the IOC is gone.

    After a ``kill -9`` of the IOC nothing would stop its spawned helpers, and
    an orphaned worker would go on writing into a run folder the registry
    already calls interrupted.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Compute(Protocol):
    """What the orchestrator needs from a compute back end."""

    name: str

    def check(self) -> None:
        """Raise :class:`BackendNotConfigured` if this back end cannot run stages."""

    def reporter(self, stage: str) -> Reporter:
        """A fresh progress/cancel channel for one stage."""

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter) -> cf.Future[dict[str, Any]]:
        """Start one stage."""

    def kill(self) -> None:
        """Stop the running stage by force (after a cancel it ignored)."""

    def shutdown(self) -> None:
        """Release processes and threads."""


class LocalCompute:
    """Stages in a spawned worker process on this host."""

    name = "Local"

    def __init__(self, on_progress: Callable[[dict[str, Any]], None]) -> None:
        self._ctx = mp.get_context("spawn")
        self._on_progress = on_progress
        self._manager: Any = None
        self._queue: Any = None
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._pump: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def check(self) -> None:
        """Local compute needs no configuration."""

    def _ensure(self) -> None:
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("the IOC is stopping; no new stage worker is started")
            if self._manager is None:
                self._manager = SyncManager(ctx=self._ctx)
                self._manager.start(_exit_with_parent, (os.getpid(),))
                self._queue = self._manager.Queue()
                self._pump = threading.Thread(target=self._drain, name="progress-pump",
                                              daemon=True)
                self._pump.start()
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=1, mp_context=self._ctx, initializer=_exit_with_parent,
                    initargs=(os.getpid(),))

    def _drain(self) -> None:
        import queue as q

        while not self._closing.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except q.Empty:
                continue
            except (EOFError, OSError, BrokenPipeError):
                return
            if "pid" in item:
                self._pid = int(item["pid"])
                continue
            try:
                self._on_progress(item)
            except Exception:  # a bad progress record must not stop the pump
                log.exception("progress handler failed on %r", item)

    def warm(self) -> None:
        """Start the manager and the worker now, so the first run starts quickly."""
        try:
            self._ensure()
            pool = self._pool
            assert pool is not None
            pool.submit(os.getpid).result()
        except (RuntimeError, cf.BrokenExecutor, cf.CancelledError) as exc:
            if not self._closing.is_set():  # stopping while warming up is not an error
                raise
            log.debug("warm-up cut short by shutdown: %s", exc)

    def reporter(self, stage: str) -> Reporter:
        """A Reporter on the manager's queue with a new cancel event."""
        self._ensure()
        return Reporter(stage, self._queue, self._manager.Event())

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter) -> cf.Future[dict[str, Any]]:
        """Run the stage in the worker process."""
        self._ensure()
        pool = self._pool
        assert pool is not None
        try:
            return pool.submit(run_stage, fn, scan_path, workdir, params, reporter)
        except cf.BrokenExecutor:  # the worker died (e.g. killed by an abort): start anew
            self._pool = None
            self._ensure()
            assert self._pool is not None
            return self._pool.submit(run_stage, fn, scan_path, workdir, params, reporter)

    def kill(self) -> None:
        """Terminate the worker (by its own pid); a new one starts for the next stage."""
        pid, self._pid = self._pid, None
        pool, self._pool = self._pool, None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                log.warning("terminated stage worker %d that ignored the abort", pid)
            except ProcessLookupError:
                pass
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop the worker, the progress pump and the manager.

        Taking the lock waits for a warm-up that is starting them, so nothing is
        half-started when it is shut down.
        """
        self._closing.set()
        with self._lock:
            pool, self._pool = self._pool, None
            manager, self._manager = self._manager, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._pump is not None:
            self._pump.join(2)
        if manager is not None:
            manager.shutdown()


class NotConfigured:
    """A back end the PV offers but this IOC has no settings for (yet)."""

    def __init__(self, kind: str, name: str, section: str) -> None:
        self.kind, self.name, self.section = kind, name, section

    def check(self) -> None:
        """Always refuse, naming the configuration that would enable it."""
        raise BackendNotConfigured(
            f"{self.kind} back end {self.name} is not configured in this IOC; set it up in "
            f"the {self.section} section of the configuration, or choose Local")


NOT_CONFIGURED = {
    ("Compute", "Parsl"): NotConfigured("Compute", "Parsl", "[compute.parsl]"),
    ("Compute", "GlobusCompute"): NotConfigured("Compute", "GlobusCompute",
                                                "[compute.globus_compute]"),
    ("Transfer", "Globus"): NotConfigured("Transfer", "Globus", "[transfer.globus]"),
}
