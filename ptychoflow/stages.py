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

import time
from collections.abc import Callable
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
