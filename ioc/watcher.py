"""Auto mode's eye on the data root: complete scan files that appeared since it looked.

A writer creates ``scan.h5.part`` and renames it to ``scan.h5`` when it closes
it, so a ``*.h5`` name is a complete file and a ``*.h5.part`` is not. Polling
(a ``stat`` walk every ``poll_s``) is used rather than inotify because data
roots are often network file systems, where inotify sees nothing.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

from ptychoflow.chunks import (
    STREAM_SUFFIX,
    ChunkError,
    complete_chunks,
    read_manifest,
    scan_stem,
    stream_folder,
)

WATCHED = ("*.h5", "*.cxi")
"""Complete scan files of the layouts ptychoflow.formats reads (ours, CXI, a Velociprobe
master file); ``*.part`` names never match."""
_EIGER_DATA = re.compile(r"_data_\d{6}\.h5$")  # a master file's data: not a scan of its own


class ScanWatcher:
    """New complete ``*.h5`` files under ``root``, oldest first, each reported once.

    With ``streaming`` on, a scan still being written whose writer flushes chunks
    (``NAME.stream/``, :mod:`ptychoflow.chunks`) is reported as soon as its first
    chunk is complete, as its folder, so its run reconstructs while it is acquired;
    its ``NAME.h5`` is then not reported again. A stream found only after it ended
    (its manifest written) is left to its complete file, which gets a whole run.
    """

    def __init__(self, root: Path, streaming: bool = False) -> None:
        self.root = root
        self.streaming = streaming
        self._seen: set[Path] = set()
        self.pending: deque[Path] = deque()

    def _complete(self, streams: bool = True) -> list[Path]:
        found: list[tuple[float, str, Path]] = []
        try:
            for p in (q for pattern in WATCHED for q in self.root.rglob(pattern)):
                if _EIGER_DATA.search(p.name) or p.parent.name.endswith(STREAM_SUFFIX):
                    continue  # a master file's data, or a chunk: not scans of their own
                if self.streaming and stream_folder(p) in self._seen:
                    continue  # its run follows the chunks
                try:
                    st = p.stat()
                except OSError:  # renamed or removed while we looked
                    continue
                if p.is_file():
                    found.append((st.st_mtime, str(p), p))
            if self.streaming and streams:
                found += self._streams()
        except OSError:
            return []
        return [p for _, _, p in sorted(found)]

    def _streams(self) -> list[tuple[float, str, Path]]:
        """Stream folders with a complete chunk and no manifest yet (acquiring now)."""
        out = []
        for d in self.root.rglob("*" + STREAM_SUFFIX):
            stem = scan_stem(d)
            try:
                if d.is_dir() and complete_chunks(d, stem) and read_manifest(d, stem) is None:
                    out.append((d.stat().st_mtime, str(d), d))
            except (OSError, ChunkError):
                continue
        return out

    def newest(self) -> Path | None:
        """The most recently completed scan file (the current scan), or ``None``."""
        complete = self._complete(streams=False)
        return complete[-1] if complete else None

    def snapshot(self) -> None:
        """Treat every file present now as already seen (called when Auto turns on)."""
        self._seen = set(self._complete())
        self.pending.clear()

    def poll(self) -> list[Path]:
        """Queue files that appeared since the last look; returns the new ones."""
        new = [p for p in self._complete() if p not in self._seen]
        self._seen.update(new)
        self.pending.extend(new)
        return new

    def next(self) -> Path | None:
        """The oldest queued file that still exists, or ``None``."""
        while self.pending:
            p = self.pending.popleft()
            if p.is_file() or p.is_dir():
                return p
        return None
