"""Running one compute stage of a run: a slot, a channel, a retry, and Abort's hard stop.

The orchestrator decides *which* stage runs when; this runs it on the compute
back end: it waits for one of the back end's slots (``max_concurrent_stages``),
gives the stage its progress and cancel channel, submits it, retries it once
when its worker died and the stage table says that is safe, resubmits a
training round that checkpointed before its allocation ended, and, on Abort,
stops a stage that ignores its cancel flag.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ptychoflow.ioc.compute import Compute
from ptychoflow.ioc.runstate import ActiveRun, until
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.stagetable import Stage
from ptychoflow.stages import Cancelled, ChannelTail, channel_paths, file_reporter

log = logging.getLogger(__name__)


class _Sink(Protocol):
    def message(self, text: str) -> None: ...


class StageRunner:
    """Submits compute stages and stops them."""

    def __init__(self, settings: IocSettings, sink: _Sink, capacity: Callable[[str], int],
                 drain: Callable[[ActiveRun], None]) -> None:
        self.settings = settings
        self.sink = sink
        self._capacity = capacity
        self._drain = drain
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._host = socket.gethostname()

    def _slot(self, compute: Compute) -> asyncio.Semaphore:
        if compute.name not in self._slots:
            self._slots[compute.name] = asyncio.Semaphore(self._capacity(compute.name))
        return self._slots[compute.name]

    async def run(self, run: ActiveRun, compute: Compute, stage: Stage, fn: Any,
                  scan_path: str, stage_dir: Path, workdir: str) -> dict[str, Any]:
        """Submit one stage and await it: a retry once if its worker died and that is safe."""
        slot = self._slot(compute)
        await until(run, slot.acquire())
        loop = asyncio.get_running_loop()
        params = {**run.params, "abort_grace_s": self.settings.abort_grace_s}
        try:
            attempt = 1
            while True:
                channel = run.run_dir / ".channel"
                with run.lock:
                    run.reporter = (file_reporter(channel, stage.name) if compute.shares_files
                                    else None)
                    run.tail = (ChannelTail(channel_paths(channel, stage.name)[0])
                                if compute.shares_files else None)
                    run.worker = None
                run.future = await loop.run_in_executor(
                    None, compute.submit, fn, scan_path, workdir, params, run.reporter)
                if run.aborting:
                    run.raise_cancel()
                try:
                    result = await self._await(run)
                except Exception as exc:
                    if run.aborting:
                        raise Cancelled(f"{stage.name} aborted") from exc
                    if not compute.is_worker_lost(exc):
                        raise
                    if attempt == 1 and stage.retry_safe:
                        self.sink.message(f"{stage.state}: the worker running {stage.name} on "
                                          f"{compute.name} died ({exc}); retrying once")
                        shutil.rmtree(stage_dir, ignore_errors=True)
                        stage_dir.mkdir(parents=True)
                        attempt += 1
                        continue
                    raise RuntimeError(
                        f"the worker running {stage.name} on {compute.name} died ({exc}); "
                        + ("it ran once more and died again" if attempt == 2 else
                           "not retried: this stage changes the training lineage")) from exc
                if not result.get("resume"):
                    return result
                # the allocation's walltime was near: the stage saved its state; go on anew
                self.sink.message(f"{stage.state}: {stage.name} checkpointed at epoch "
                                  f"{result.get('epoch')} before its allocation ended; "
                                  f"resubmitted to {compute.name} to resume")
                params = {**params, "resume_from": result.get("resume_from")}
        finally:
            self._drain(run)
            with run.lock:
                run.tail = run.reporter = run.future = None
            slot.release()

    async def _await(self, run: ActiveRun) -> dict[str, Any]:
        assert run.future is not None
        wrapped = asyncio.wrap_future(run.future)
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=0.25)
            if done:
                return wrapped.result()
            if run.given_up:
                raise Cancelled(f"run {run.id} aborted; its worker was stopped")

    async def stop(self, run: ActiveRun) -> None:
        """Raise the stage's cancel flag; kill its worker if it has not stopped in time."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, run.raise_cancel)
        fut = run.future
        if fut is None or fut.done():
            return
        try:
            fut.cancel()  # a stage still queued never starts
        except NotImplementedError:  # Parsl's AppFuture: the cancel flag stops it instead
            pass
        grace = self.settings.abort_grace_s
        if await self._settles(fut, grace):
            return
        host, pid = run.worker or ("", 0)
        if pid and host == self._host:
            try:
                os.kill(pid, 9)
                log.warning("terminated stage worker %d that ignored the abort", pid)
            except ProcessLookupError:
                pass
        if not await self._settles(fut, grace + 2):
            # a worker on another host: its watchdog ends it; stop waiting for it here
            run.given_up = True

    @staticmethod
    async def _settles(fut: Any, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
        except TimeoutError:
            return bool(fut.done())
        except BaseException:  # noqa: BLE001 - it settled (with an error): that is enough
            return True
        return True
