"""The contract between the workflow's orchestrator and the stages it runs.

A stage is a plain, picklable, top-level function::

    def reconstruct(scan_path: str, workdir: str, params: dict,
                    progress: Reporter | None = None) -> dict: ...

It takes paths and parameters, reports progress through ``progress`` (which
may be ``None`` where nobody listens, e.g. on Globus Compute), writes its
outputs under ``workdir`` atomically, and returns a JSON-ready result record
(paths of what it wrote, figures). It raises on failure with a message that
names the cause. Because nothing else crosses the boundary, the same function
runs in-process, in a local process pool, on a Parsl worker or on a Globus
Compute endpoint.

Abort works the same everywhere a :class:`Reporter` reaches: the orchestrator
sets the cancel flag, and the stage's next ``progress(...)`` call raises
:class:`Cancelled`; the stage's own clean-up (``finally``/context managers)
removes half-written outputs.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Cancelled(RuntimeError):
    """Raised inside a stage when the run was aborted."""


class _Queue(Protocol):
    def put(self, item: Any) -> None: ...


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class Reporter:
    """Picklable progress sink and cancel check handed to a stage.

    ``queue`` and ``cancel`` are anything with ``put`` / ``is_set``: a
    ``queue.Queue`` and ``threading.Event`` in-process, ``multiprocessing.Manager``
    proxies across processes.
    """

    def __init__(self, stage: str, queue: _Queue | None = None,
                 cancel: _Flag | None = None) -> None:
        self.stage = stage
        self.queue = queue
        self.cancel = cancel

    def __call__(self, fraction: float | None = None, message: str = "",
                 **fields: Any) -> None:
        """Report progress (``fraction`` 0..1, a message, named figures); raise if aborted."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.stage} aborted")
        if self.queue is not None:
            self.queue.put({"stage": self.stage, "time": time.time(), "fraction": fraction,
                            "message": message, **fields})

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run was aborted, without reporting anything."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.stage} aborted")


StageFn = Callable[..., dict[str, Any]]
"""``fn(scan_path, workdir, params, progress=None) -> result`` (see module docstring)."""


class _LineFile:
    """A progress queue that appends one JSON line per report to a file.

    Appends of one short line are atomic on local and NFS/GPFS/Lustre file
    systems opened with ``O_APPEND``, so a stage on a cluster node that shares
    the run folder reaches the IOC without a socket.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def put(self, item: Any) -> None:
        line = json.dumps(item, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


class _FlagFile:
    """A cancel flag that is the existence of a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def set(self) -> None:
        Path(self.path).touch()


def channel_paths(folder: str | os.PathLike[str], stage: str) -> tuple[Path, Path]:
    """The progress file and the cancel flag of one stage under ``folder``."""
    base = Path(folder)
    return base / f"{stage}.progress.jsonl", base / f"{stage}.cancel"


def file_reporter(folder: str | os.PathLike[str], stage: str) -> Reporter:
    """A :class:`Reporter` whose progress and cancel flag are files in ``folder``.

    The channel that works wherever the run folder is shared: the local process
    pool, Parsl workers on cluster nodes. The IOC reads the progress file
    (:class:`ChannelTail`) and raises the flag on Abort.
    """
    progress, cancel = channel_paths(folder, stage)
    progress.parent.mkdir(parents=True, exist_ok=True)
    progress.unlink(missing_ok=True)
    cancel.unlink(missing_ok=True)
    return Reporter(stage, _LineFile(str(progress)), _FlagFile(str(cancel)))


class ChannelTail:
    """The IOC's reader of one stage's progress file: the lines appended since last read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        """New complete records (a line still being written waits for the next read)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        out = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out


def run_stage(fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
              reporter: Reporter | None = None) -> dict[str, Any]:
    """Worker-side wrapper every compute back end runs: announce, watch, run the stage.

    It reports the worker's host and pid first (so an IOC on the same host can
    stop a stage that ignores Abort) and starts a watchdog that ends this worker
    process twice ``abort_grace_s`` after the cancel flag is raised if the stage
    has not stopped by then: the one way to stop a stage on a cluster node the
    IOC cannot signal (an IOC on the same host kills it after one grace time).
    The stage itself runs unchanged.
    """
    if reporter is not None and reporter.queue is not None:
        reporter.queue.put({"stage": reporter.stage, "pid": os.getpid(),
                            "host": socket.gethostname(), "time": time.time()})
    if reporter is not None:
        reporter.check()  # aborted while it was queued: do not start
    done = threading.Event()
    if reporter is not None and reporter.cancel is not None:
        grace = 2 * float(params.get("abort_grace_s", 3.0))
        threading.Thread(target=_watchdog, args=(reporter, done, grace), daemon=True,
                         name="stage-watchdog").start()
    try:
        result = fn(scan_path, workdir, params, progress=reporter)
    finally:
        done.set()
    if not isinstance(result, dict):
        name = reporter.stage if reporter is not None else getattr(fn, "__name__", "?")
        raise TypeError(f"stage {name} returned {type(result).__name__}, not a dict")
    return result


def _watchdog(reporter: Reporter, done: threading.Event, grace: float) -> None:
    assert reporter.cancel is not None
    while not done.wait(0.25):
        if reporter.cancel.is_set():
            if not done.wait(grace):
                os._exit(75)  # the stage ignored the abort: this worker goes, a new one starts
            return
