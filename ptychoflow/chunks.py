"""A scan in chunks while it is acquired: what a scan writer flushes for streaming rPIE.

Beside ``NAME.h5.part`` (the whole scan, renamed to ``NAME.h5`` when it is
closed) a writer asked to stream also writes, every N frames or T seconds,
the frames written since the last chunk as a small scan file of its own::

    NAME.stream/NAME.chunk-00001.h5     frames 0..N-1 (with the probe, the truth)
    NAME.stream/NAME.chunk-00002.h5     frames N..2N-1
    ...
    NAME.stream/NAME.chunks.json        the end: chunk count, frames, sha256 of each

Each chunk is an ordinary scan file (:func:`~ptychoflow.scanfile.write_scan`:
``.part`` then rename), so the transfer back ends ship chunks with the rules of
whole files (hidden partial copy, sha256 checked, retried) and a reader never
sees half a chunk. The manifest, written last and atomically, says the scan
ended: ``complete`` true after a close, false (with ``reason``) when the
acquisition was discarded, so a reconstruction waiting for more chunks stops.
Chunk names sort in frame order; the whole-scan file stays the reference copy.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.modelcard import sha256_file
from ptychoflow.scan import PART_SUFFIX, Scan

MANIFEST_FORMAT = "ptychoflow-chunks/1"
STREAM_SUFFIX = ".stream"
_CHUNK = re.compile(r"^(?P<stem>.+)\.chunk-(?P<n>\d{5})\.h5$")


class ChunkError(ValueError):
    """Chunks of a scan that do not add up (a gap, a manifest that disagrees)."""


def scan_stem(path: str | os.PathLike[str]) -> str:
    """``.../scan_0001.h5`` (or ``.h5.part``, or ``scan_0001.stream``) -> ``scan_0001``."""
    name = Path(path).name.removesuffix(PART_SUFFIX)
    for suffix in (".h5", STREAM_SUFFIX):
        name = name.removesuffix(suffix)
    return name


def stream_folder(scan_path: str | os.PathLike[str]) -> Path:
    """The chunk folder beside a scan file: ``scan_0001.h5`` -> ``scan_0001.stream``."""
    p = Path(scan_path)
    return p.with_name(scan_stem(p) + STREAM_SUFFIX)


def is_stream_folder(path: str | os.PathLike[str]) -> bool:
    """A ``*.stream`` folder of chunks (what Auto mode starts a streaming run on)."""
    p = Path(path)
    return p.name.endswith(STREAM_SUFFIX) and p.is_dir()


def chunk_name(stem: str, n: int) -> str:
    """File name of chunk ``n`` (from 1) of scan ``stem``."""
    return f"{stem}.chunk-{n:05d}.h5"


def manifest_name(stem: str) -> str:
    """File name of the manifest that ends scan ``stem``'s chunks."""
    return f"{stem}.chunks.json"


def chunk_index(path: str | os.PathLike[str], stem: str) -> int | None:
    """The number of a complete chunk file of ``stem``, or ``None`` for any other name."""
    m = _CHUNK.match(Path(path).name)
    return int(m.group("n")) if m and m.group("stem") == stem else None


def complete_chunks(folder: str | os.PathLike[str], stem: str) -> dict[int, Path]:
    """Complete chunk files of ``stem`` in ``folder`` by number (hidden ``.part`` copies of a
    transfer in progress and anything else are left out).
    """
    out: dict[int, Path] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        n = chunk_index(e.name, stem)
        if n is not None and e.is_file():
            out[n] = Path(e.path)
    return out


def read_manifest(folder: str | os.PathLike[str], stem: str) -> dict[str, Any] | None:
    """The manifest of ``stem`` in ``folder``, or ``None`` while the scan goes on."""
    p = Path(folder) / manifest_name(stem)
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ChunkError(f"{p}: unreadable chunk manifest ({exc}); the writer or the "
                         "transfer was cut off: acquire the scan again") from exc
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ChunkError(f"{p} is not a {MANIFEST_FORMAT} manifest")
    return m


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + PART_SUFFIX)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@dataclass
class ChunkPolicy:
    """When a writer flushes a chunk: every ``frames`` frames or ``seconds`` (0: never)."""

    frames: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 0 or not (self.seconds >= 0):
            raise ValueError(f"chunk frames and seconds must be >= 0, got {self.frames} and "
                             f"{self.seconds}")

    @property
    def on(self) -> bool:
        """Whether chunks are written at all."""
        return self.frames > 0 or self.seconds > 0


class ChunkWriter:
    """Flushes the frames of a scan being written as chunk files, then the manifest.

    ``template`` holds the scan's geometry, probe and truth (its ``data`` and
    ``positions`` are ignored); the first chunk carries the truth, the others only
    the geometry and probe, so the chunks add little beside the frames.
    """

    def __init__(self, scan_path: str | os.PathLike[str], template: Scan, policy: ChunkPolicy,
                 write: Callable[[Path, Scan], Path], expected_frames: int = 0) -> None:
        if not policy.on:
            raise ValueError("a ChunkWriter needs chunk frames or seconds > 0")
        self.stem = scan_stem(scan_path)
        self.folder = stream_folder(scan_path)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.template = template
        self.policy = policy
        self.write = write  # ptychoflow.scanfile.write_scan: atomic, as every scan file
        self.expected = expected_frames
        self.written: list[Path] = []
        self.frames = 0
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._last = time.monotonic()

    def add(self, frames: np.ndarray, positions: np.ndarray) -> None:
        """Frames (and their (y, x) positions in metres) just written to the scan."""
        self._buf.append((np.array(frames, copy=True), np.array(positions, np.float64)))
        self._buffered += len(frames)
        p = self.policy
        if (p.frames and self._buffered >= p.frames) or \
                (p.seconds and time.monotonic() - self._last >= p.seconds):
            self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered as the next chunk (nothing if nothing is)."""
        if not self._buffered:
            return None
        data = np.concatenate([b[0] for b in self._buf])
        pos = np.concatenate([b[1] for b in self._buf])
        n = len(self.written) + 1
        t = self.template
        chunk = replace(t, data=data, positions=pos, truth=t.truth if n == 1 else None,
                        truth_pixel_size_m=t.truth_pixel_size_m if n == 1 else None,
                        metadata={**t.metadata, "chunk": n, "first_frame": self.frames,
                                  "expected_frames": self.expected})
        path = self.write(self.folder / chunk_name(self.stem, n), chunk)
        self.written.append(path)
        self.frames += len(data)
        self._buf, self._buffered, self._last = [], 0, time.monotonic()
        return path

    def close(self) -> Path:
        """Flush the rest and write the manifest: the scan is complete."""
        self.flush()
        return self._manifest(True)

    def discard(self, reason: str) -> Path:
        """The scan was dropped: a manifest that says so, so no reader waits for more."""
        self._buf, self._buffered = [], 0
        return self._manifest(False, reason)

    def _manifest(self, complete: bool, reason: str = "") -> Path:
        path = self.folder / manifest_name(self.stem)
        _write_json(path, {"format": MANIFEST_FORMAT, "stem": self.stem, "complete": complete,
                           "reason": reason, "chunks": len(self.written), "frames": self.frames,
                           "sha256": [sha256_file(p) for p in self.written]})
        return path
