"""A scan being acquired, shipped chunk by chunk while its run reconstructs it.

Auto mode (or ``Scan:Path``) may name the ``NAME.stream`` folder of a scan the
detector is still writing (:mod:`ptychoflow.chunks`). Its run's transfer stage
then ships the first chunk, returns where the compute site sees it, and goes
on shipping, on a thread of its own, each chunk as it completes and finally
the manifest, through the run's transfer back end (one verified, atomic
``scan_to_compute`` per file, retried as whole files are). Meanwhile the
reconstruct stage (:mod:`ptychoflow.remote.streaming`) follows the chunks there.
The run waits for the shipment to end before training, and fails with its
error if it failed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ptychoflow.chunks import complete_chunks, manifest_name, read_manifest, scan_stem
from ptychoflow.ioc.runstate import ActiveRun
from ptychoflow.ioc.transfer import Transfer
from ptychoflow.ioc.transfer.base import Moved, TransferError
from ptychoflow.stages import Reporter

POLL_S = 0.2


class Shipment:
    """The chunks of one stream folder on their way, in order, then its manifest."""

    def __init__(self, run: ActiveRun, transfer: Transfer, folder: Path,
                 idle_s: float = 300.0) -> None:
        self.run = run
        self.transfer = transfer
        self.folder = folder
        self.stem = scan_stem(folder)
        self.idle_s = idle_s
        self.moved: list[Moved] = []
        self.error: BaseException | None = None
        self.first = threading.Event()
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ship-{self.stem}", daemon=True)

    def _ship(self, path: Path) -> Moved:
        reporter = Reporter("transfer", None, self.cancel)  # per-file progress stays quiet
        moved = self.transfer.scan_to_compute(path, self.run.name, reporter)
        self.moved.append(moved)
        return moved

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the run reports it
            self.error = exc
        finally:
            self.first.set()

    def _loop(self) -> None:
        sent = 0
        news = time.monotonic()
        while not (self.cancel.is_set() or self.run.aborting):
            have = complete_chunks(self.folder, self.stem)
            while sent + 1 in have:
                self._ship(have[sent + 1])
                sent += 1
                news = time.monotonic()
                self.first.set()
            manifest = read_manifest(self.folder, self.stem)
            if manifest is not None and sent >= int(manifest.get("chunks", 0)):
                self._ship(self.folder / manifest_name(self.stem))
                return
            if time.monotonic() - news > self.idle_s:
                raise TransferError(f"{self.folder.name}: no new chunk for {self.idle_s:g} s "
                                    f"after {sent}; the detector's writer stopped without "
                                    "closing the scan")
            time.sleep(POLL_S)

    async def start(self) -> dict[str, Any]:
        """Ship until the first chunk has arrived; the transfer stage's result."""
        self.thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self.first.wait)
        if self.error is not None:
            raise self.error
        if not self.moved:
            raise TransferError(f"{self.folder.name}: stopped before its first chunk")
        where = PurePosixPath(self.moved[0].path).parent
        return {"stream_dir": str(where), "stream_stem": self.stem, "streaming": True,
                "bytes": self.moved[0].bytes, "seconds": self.moved[0].seconds,
                "transfer_backend": self.transfer.name}

    async def finish(self) -> dict[str, Any]:
        """Wait for the manifest to arrive; raises the shipment's error."""
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join)
        if self.error is not None:
            raise self.error
        total = sum(m.bytes for m in self.moved)
        return {"chunks": len(self.moved) - 1, "bytes": total,
                "seconds": sum(m.seconds for m in self.moved)}
