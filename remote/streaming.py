"""rPIE while the scan is still being acquired: reconstruct chunk by chunk as they arrive.

pty-chi reconstructs a fixed set of frames; it has no streaming API. Here a
:class:`StreamingReconstruction` keeps one pty-chi task over the frames that
have arrived and iterates it while it waits; when new chunks arrive
(:mod:`ptychoflow.chunks`) it builds a new task over all frames so far,
warm-started from the current object (grown to hold the new positions, the
new area clear) and probe. The solver and its update rule stay pty-chi's.
When the manifest says the scan ended, it runs ``stream_final_epochs`` over
the whole scan: the object is by then close to converged where the early
chunks lie, so far fewer epochs than a reconstruction from scratch give the
same agreement (measured by ``benchmarks/streaming_recon.py``).

The current phase is reported through the stage's ``progress`` as
``live_phase`` (:func:`ptychoflow.livephase.encode`) at most once per
``stream_live_s``, which the IOC publishes as an image PV.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.chunks import ChunkError, complete_chunks, manifest_name, read_manifest
from ptychoflow.livephase import encode
from ptychoflow.remote.recon import (
    Progress,
    ReconSettings,
    Reconstruction,
    ReconstructionError,
)
from ptychoflow.scanfile import Scan

ReadChunk = Callable[[Path], Scan]


@dataclass
class StreamSettings:
    """How a streaming reconstruction spends its time; from the stage parameters."""

    chunk_epochs: int = 2
    """epochs per step while the scan goes on (a step ends early when chunks arrive)"""
    final_epochs: int = 5
    """epochs over the whole scan after its last chunk"""
    idle_s: float = 300.0
    """fail when no chunk and no manifest arrived for this long"""
    live_s: float = 1.0
    """report the current phase at most this often"""

    def __post_init__(self) -> None:
        if self.chunk_epochs < 1 or self.final_epochs < 1:
            raise ValueError("stream_chunk_epochs and stream_final_epochs must be at least 1")
        if not (self.idle_s > 0 and self.live_s >= 0):
            raise ValueError("stream_idle_s must be > 0 and stream_live_s >= 0")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> StreamSettings:
        """Pick ``stream_*`` keys out of the workflow's parameter dict."""
        return cls(chunk_epochs=int(params.get("stream_chunk_epochs", 2)),
                   final_epochs=int(params.get("stream_final_epochs", 5)),
                   idle_s=float(params.get("stream_idle_s", 300.0)),
                   live_s=float(params.get("stream_live_s", 1.0)))


class ChunkReader:
    """The chunks of one scan in a folder, read once each, in frame order."""

    def __init__(self, folder: Path, stem: str, read: ReadChunk) -> None:
        self.folder = folder
        self.stem = stem
        self.read = read
        self.next = 1
        self.scans: list[Scan] = []
        self.manifest: dict[str, Any] | None = None

    @property
    def frames(self) -> int:
        """Frames read so far."""
        return sum(s.n_frames for s in self.scans)

    def poll(self) -> int:
        """Read chunks that completed since the last look (in order; a later one waits for
        the one before); returns how many frames were added.
        """
        have = complete_chunks(self.folder, self.stem)
        added = 0
        while self.next in have:
            chunk = self.read(have[self.next])
            self.scans.append(chunk)
            added += chunk.n_frames
            self.next += 1
        if self.manifest is None:
            self.manifest = read_manifest(self.folder, self.stem)
        return added

    def news(self) -> bool:
        """A chunk or the manifest is waiting to be read (a cheap look, nothing read)."""
        return (self.next in complete_chunks(self.folder, self.stem) or
                (self.manifest is None and (self.folder / manifest_name(self.stem)).exists()))

    @property
    def ended(self) -> bool:
        """The manifest arrived and every chunk it lists has been read."""
        m = self.manifest
        if m is None:
            return False
        if not m.get("complete", False):
            raise ChunkError(f"{self.stem}: the acquisition was discarded ({m.get('reason')}); "
                             "nothing to reconstruct")
        if self.next - 1 < int(m["chunks"]):
            return False
        if self.frames != int(m["frames"]):
            raise ChunkError(f"{self.stem}: the chunks hold {self.frames} frames but the "
                             f"manifest says {m['frames']}; acquire the scan again")
        return True

    def scan(self) -> Scan:
        """All frames read so far as one scan (geometry, probe and truth of the first chunk)."""
        if not self.scans:
            raise ChunkError(f"{self.stem}: no chunk has arrived yet")
        first = self.scans[0]
        meta = {k: v for k, v in first.metadata.items()
                if k not in ("chunk", "first_frame", "expected_frames")}
        return replace(first, data=np.concatenate([s.data for s in self.scans]),
                       positions=np.concatenate([s.positions for s in self.scans]),
                       metadata=meta)


class StreamingReconstruction:
    """One scan reconstructed while its chunks arrive; :meth:`run` returns the result."""

    def __init__(self, reader: ChunkReader, settings: ReconSettings, stream: StreamSettings,
                 progress: Progress | None = None,
                 convert: Callable[[Scan], Scan] | None = None) -> None:
        self.reader = reader
        self.convert = convert or (lambda scan: scan)  # e.g. the beamline's geometry
        self.settings = settings
        self.stream = stream
        self.progress = progress
        self.errors: list[float] = []
        self.steps = 0  # tasks built: one per arrival of new frames
        self.live = 0  # live phase images reported
        self._last_live = 0.0

    def _tell(self, fraction: float, message: str, task: Any, **fields: Any) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if task is not None and now - self._last_live >= self.stream.live_s:
            from ptychoflow.remote.ptychi_task import task_object

            fields["live_phase"] = encode(np.angle(task_object(task)))
            self._last_live = now
            self.live += 1
            fields["live_id"] = self.live  # the IOC's UniqueId_RBV: clients see a new image
        self.progress(fraction, message, **fields)

    def run(self) -> tuple[Reconstruction, Scan]:
        """Reconstruct until the last chunk, then the final epochs over the whole scan."""
        import ptychi.api  # noqa: F401 - imported now, not when the first chunk is waiting

        from ptychoflow.remote.ptychi_task import (
            ptychi_task,
            quiet_ptychi,
            run_epoch,
            task_result,
            torch_state,
        )

        s, reader = self.settings, self.reader
        t0 = time.perf_counter()
        task: Any = None
        scan: Scan | None = None
        last_news = time.monotonic()
        with torch_state(), quiet_ptychi():
            while True:
                if reader.poll():
                    last_news = time.monotonic()
                    scan = self.convert(reader.scan())
                    warm = None if task is None else task_result(task, scan, s, [], 0.0)
                    task = ptychi_task(scan, s, warm)
                    self.steps += 1
                if reader.ended:
                    break
                if task is None:  # nothing to iterate yet
                    if time.monotonic() - last_news > self.stream.idle_s:
                        raise ChunkError(
                            f"{reader.stem}: no chunk arrived in {self.stream.idle_s:g} s; "
                            "the acquisition or the transfer stopped (see the IOC's messages)")
                    check = getattr(self.progress, "check", None)
                    if check is not None:
                        check()  # an Abort while waiting for the first chunk
                    time.sleep(0.2)
                    continue
                if time.monotonic() - last_news > self.stream.idle_s:
                    raise ChunkError(
                        f"{reader.stem}: no new chunk and no end of scan for "
                        f"{self.stream.idle_s:g} s after {reader.frames} frames; the "
                        "acquisition or the transfer stopped (see the IOC's messages)")
                expected = _expected(reader)
                for _ in range(self.stream.chunk_epochs):
                    err = run_epoch(task, s, self.errors)
                    self._tell(0.8 * min(1.0, reader.frames / expected) if expected else 0.0,
                               f"reconstructing while acquiring: {reader.frames} frames in "
                               f"{reader.next - 1} chunk(s)", task, epoch=len(self.errors),
                               error=err)
                    if reader.news():
                        break  # take the new frames (or the end) in before iterating more
            if scan is None or task is None:
                raise ChunkError(f"{reader.stem}: the scan ended with no frames")
            final = self.stream.final_epochs
            t_final = time.perf_counter()
            for e in range(final):
                err = run_epoch(task, s, self.errors)
                self._tell(0.8 + 0.2 * (e + 1) / final, "final epochs over the whole scan",
                           task, epoch=len(self.errors), error=err)
            rec = task_result(task, scan, s, self.errors, time.perf_counter() - t0)
        rec.settings.update(streaming=True, stream_steps=self.steps,
                            stream_final_epochs=final, stream_chunk_epochs=self.stream.chunk_epochs,
                            final_seconds=time.perf_counter() - t_final)
        return rec, scan


def reconstruct_chunks(params: dict[str, Any], workdir: str, settings: ReconSettings,
                       progress: Progress | None,
                       convert: Callable[[Scan], Scan]) -> tuple[Reconstruction, Scan, Path]:
    """The reconstruct stage on a scan still arriving as chunks in ``params["stream_dir"]``.

    Returns the reconstruction, the scan (``convert`` applied, as the solver saw it)
    and the whole scan assembled from its chunks as one file in ``workdir``, which
    the later stages (training pairs, quality) read as they read a transferred file.
    """
    from ptychoflow.scanfile import read_scan, write_scan

    try:
        stream = StreamSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise ReconstructionError(f"streaming parameters: {exc}") from exc
    reader = ChunkReader(Path(params["stream_dir"]), str(params["stream_stem"]), read_scan)
    run = StreamingReconstruction(reader, settings, stream, progress, convert)
    rec, scan = run.run()
    whole = write_scan(Path(workdir) / f"{reader.stem}.h5", reader.scan())
    scan.metadata["path"] = str(whole)
    return rec, scan, whole


def _expected(reader: ChunkReader) -> int:
    meta = reader.scans[0].metadata if reader.scans else {}
    try:
        return int(meta.get("expected_frames") or 0)
    except (TypeError, ValueError):
        return 0
