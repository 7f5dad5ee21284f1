"""The contract of a compute back end."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Protocol

from ptychoflow.stages import Reporter, StageFn


class BackendNotConfigured(RuntimeError):
    """The selected back end has no (or no usable) configuration; the message names the
    TOML section to fill in.
    """


class WorkerLost(RuntimeError):
    """The process running a stage died (killed, out of memory, node lost)."""


class Compute(Protocol):
    """What the orchestrator needs from a compute back end.

    Constructed as ``cls(settings, table)``: the IOC's settings and the back end's
    TOML table (``[compute.parsl]``...) or ``None`` where the configuration has
    none. ``check`` is cheap and runs at Start; ``start`` may take a while (it
    starts workers) and is called from a thread, once, before the first submit.
    """

    name: str
    section: str
    """Its TOML table, ``kind.name`` (e.g. ``compute.parsl``)."""
    workers: int
    """How many stages may run at once (``max_concurrent_stages`` defaults to it)."""
    shares_files: bool
    """Stages see the run folder, so the file progress channel reaches them; where
    ``False`` (Globus Compute), stages get no reporter and progress is per stage."""

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None: ...

    def check(self) -> None:
        """Raise :class:`BackendNotConfigured` if this back end cannot run stages."""

    def start(self) -> None:
        """Start workers (idempotent)."""

    def submit(self, fn: StageFn, scan_path: str, workdir: str, params: dict[str, Any],
               reporter: Reporter | None) -> cf.Future[dict[str, Any]]:
        """Run ``ptychoflow.stages.run_stage(fn, ...)`` on a worker. A future whose worker
        died raises :class:`WorkerLost` (or the engine's own error, which
        :meth:`is_worker_lost` recognises).
        """

    def is_worker_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` from a future means the worker died (so a retry may help)."""

    def shutdown(self) -> None:
        """Release workers, threads and sockets."""


def table_of(file_data: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    """The ``[kind.name]`` table of a configuration, or ``None`` when absent."""
    section = file_data.get(kind)
    if not isinstance(section, dict):
        return None
    table = section.get(name)
    return table if isinstance(table, dict) else None
