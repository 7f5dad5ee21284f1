"""One run in flight: its state machine, its stage's channel, and what Abort needs.

The orchestrator keeps one :class:`ActiveRun` per run it is driving; runs
overlap in Auto mode, so nothing about "the" current run is global.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptychoflow.ioc.statemachine import StateMachine
from ptychoflow.stages import Cancelled, ChannelTail, Reporter


class CallbackQueue:
    """A Reporter queue inside the IOC process: each report goes straight to a callback."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def put(self, item: Any) -> None:
        self.callback(item)


def merged(items: list[Any]) -> tuple[tuple[str, int] | None, dict[str, Any]]:
    """A stage's reports read together: (the worker that announced itself, the latest of
    each figure, the later superseding the earlier).

    A solver reports every epoch; a screen needs the latest of each figure. Posting every
    report sends each to every monitoring client: 100 clients watching 10 PVs at ten
    epochs a second slowed the IOC's answer to a put (``benchmarks/ioc_run_load.py``).
    """
    worker: tuple[str, int] | None = None
    out: dict[str, Any] = {}
    for item in items:
        if "pid" in item and "host" in item:  # the worker announcing itself
            worker = (str(item["host"]), int(item["pid"]))
        else:
            out.update(item)
    return worker, out


@dataclass
class ActiveRun:
    """Everything the orchestrator holds about one run while it is active."""

    id: int
    scan: Path
    params: dict[str, Any]
    run_dir: Path
    sm: StateMachine = field(default_factory=StateMachine)
    stage: str = ""
    reporter: Reporter | None = None
    future: cf.Future[dict[str, Any]] | None = None
    tail: ChannelTail | None = None
    worker: tuple[str, int] | None = None
    """(host, pid) of the process running the stage, as it announced itself."""
    aborting: bool = False
    given_up: bool = False
    """Abort stopped waiting for a stage that would not stop (its worker is gone)."""
    abort_event: asyncio.Event = field(default_factory=asyncio.Event)
    shipment: Any = None
    """The chunks still on their way of a scan being acquired (ioc.streamship.Shipment)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        """The run folder's name."""
        return f"run-{self.id:05d}"

    def raise_cancel(self) -> None:
        """Raise the cancel flag of the running stage (file, event or manager proxy)."""
        rep = self.reporter
        if rep is not None and rep.cancel is not None:
            rep.cancel.set()  # type: ignore[attr-defined]


async def until(run: ActiveRun, aw: Awaitable[Any]) -> Any:
    """Await ``aw`` unless the run is aborted first (then raise Cancelled)."""
    task = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(run.abort_event.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not task.done():
        task.cancel()
        raise Cancelled(f"run {run.id} aborted")
    return task.result()
