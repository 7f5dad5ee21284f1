"""The scan file: what a ptychography scan is, on disk and in memory.

:func:`read_scan` reads every layout :mod:`ptychoflow.formats` knows (ours, CXI,
the APS Velociprobe's); this module writes ours, an areaDetector/NeXus-style
HDF5 file (see DESIGN.md, "Files"):

- ``/entry/data/data`` (N, H, W) detector counts, diffraction centred in the frame;
- ``/entry/instrument/positions/x`` and ``.../y`` (N,) in metres, relative to the
  centre of the object;
- ``/entry/instrument`` attributes ``energy`` (eV), ``detector_distance`` (m),
  ``pixel_size`` (m), each with a ``<name>_units`` attribute;
- optional ``/entry/instrument/probe`` (H, W) complex;
- optional ``/entry/sample/truth`` (complex object of a simulated scan) with its
  ``pixel_size`` attribute in metres.

A file is complete when its writer renames it from ``*.h5.part`` to ``*.h5``;
every writer here does exactly that, so a reader that sees ``*.h5`` sees a
whole file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptychoflow.chunks import ChunkPolicy, ChunkWriter
from ptychoflow.formats import read_any
from ptychoflow.formats._siemens import read_siemens_star
from ptychoflow.scan import PART_SUFFIX, PLANCK_EV_M, Scan, ScanFileError

__all__ = ["PART_SUFFIX", "PLANCK_EV_M", "Scan", "ScanFileError", "ScanWriter", "final_path",
           "read_scan", "read_siemens_star", "scan_writer", "write_scan"]


def read_scan(path: str | os.PathLike[str], *, frames: bool = True) -> Scan:
    """Read and validate a scan file of any known layout (see :mod:`ptychoflow.formats`).

    Ours, CXI, the APS Velociprobe's master file or the Siemens-star ``.npz.bz2``:
    the layout is told from the file's content, else its name; a file of no
    known layout is refused with every layout tried. With ``frames=False`` the
    detector data are not loaded (``data`` is an empty array of the right dtype
    and frame shape), for callers that only need geometry.
    """
    return read_any(path, frames=frames)


def final_path(path: str | os.PathLike[str]) -> Path:
    """The complete name of a scan file (without ``.part``)."""
    p = Path(path)
    return p.with_name(p.name[: -len(PART_SUFFIX)]) if p.name.endswith(PART_SUFFIX) else p


class ScanWriter:
    """Write a scan frame by frame to ``NAME.h5.part``; :meth:`close` renames it to ``NAME.h5``.

    The simulator writes while it streams; until the rename no reader (nor the
    IOC's Auto mode) takes the file for a complete scan.
    """

    def __init__(self, path: str | os.PathLike[str], frame_shape: tuple[int, int],
                 dtype: np.dtype | type, *, energy_ev: float, distance_m: float,
                 pixel_size_m: float, probe: np.ndarray | None = None,
                 truth: np.ndarray | None = None, truth_pixel_size_m: float | None = None,
                 metadata: dict[str, Any] | None = None, expected_frames: int = 0,
                 chunks: ChunkPolicy | None = None) -> None:
        self.path = final_path(path)
        if self.path.suffix != ".h5":
            raise ScanFileError(self.path, "scan files must end in .h5")
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(self.part, "w")
        entry = self._f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        for k, v in (metadata or {}).items():
            entry.attrs[k] = v
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        chunk = (min(8, max(1, expected_frames)), *frame_shape)
        self._data = data.create_dataset(
            "data", shape=(0, *frame_shape), maxshape=(None, *frame_shape),
            dtype=np.dtype(dtype), chunks=chunk)
        self._data.attrs["units"] = "counts"
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        inst.attrs["energy"] = float(energy_ev)
        inst.attrs["energy_units"] = "eV"
        inst.attrs["detector_distance"] = float(distance_m)
        inst.attrs["detector_distance_units"] = "m"
        inst.attrs["pixel_size"] = float(pixel_size_m)
        inst.attrs["pixel_size_units"] = "m"
        if probe is not None:
            inst.create_dataset("probe", data=probe.astype(np.complex64))
        if truth is not None:
            sample = entry.create_group("sample")
            t = sample.create_dataset("truth", data=truth.astype(np.complex64))
            if truth_pixel_size_m is not None:
                t.attrs["pixel_size"] = float(truth_pixel_size_m)
                t.attrs["pixel_size_units"] = "m"
        self._x: list[float] = []
        self._y: list[float] = []
        self._n = 0
        if expected_frames:
            self._data.resize(expected_frames, axis=0)
        self._chunks: ChunkWriter | None = None
        if chunks is not None and chunks.on:  # streaming: chunk files beside (ptychoflow.chunks)
            self._chunks = ChunkWriter(self.path, Scan(
                np.empty((0, *frame_shape), dtype), np.empty((0, 2)), energy_ev, distance_m,
                pixel_size_m, probe, truth, truth_pixel_size_m, dict(metadata or {})),
                chunks, write_scan, expected_frames)

    @property
    def frames_written(self) -> int:
        """How many frames have been appended so far."""
        return self._n

    def append(self, frame: np.ndarray, y_m: float, x_m: float) -> None:
        """Append one frame and its position (metres)."""
        if self._n >= self._data.shape[0]:
            self._data.resize(max(self._n + 1, 2 * self._data.shape[0]), axis=0)
        self._data[self._n] = frame
        self._y.append(float(y_m))
        self._x.append(float(x_m))
        self._n += 1
        if self._chunks is not None:
            self._chunks.add(np.asarray(frame)[None], np.array([[y_m, x_m]], np.float64))

    def append_block(self, frames: np.ndarray, positions: np.ndarray) -> None:
        """Append several frames with their (y, x) positions in one HDF5 write."""
        n = len(frames)
        if positions.shape != (n, 2):
            raise ValueError(f"{n} frames need ({n}, 2) positions, got {positions.shape}")
        if self._n + n > self._data.shape[0]:
            self._data.resize(max(self._n + n, 2 * self._data.shape[0]), axis=0)
        self._data[self._n:self._n + n] = frames
        self._y.extend(positions[:, 0].tolist())
        self._x.extend(positions[:, 1].tolist())
        self._n += n
        if self._chunks is not None:
            self._chunks.add(frames, positions)

    def close(self) -> Path:
        """Finish the file and make it visible under its final name."""
        if self._chunks is not None:
            self._chunks.close()
        self._data.resize(self._n, axis=0)
        pos = self._f["entry/instrument"].create_group("positions")
        for name, values in (("x", self._x), ("y", self._y)):
            ds = pos.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            ds.attrs["units"] = "m"
        self._f.close()
        os.replace(self.part, self.path)
        return self.path

    def discard(self) -> None:
        """Drop an unfinished file: nothing half-written stays behind."""
        if self._chunks is not None:
            self._chunks.discard("the acquisition was stopped before any frame or failed; "
                                 "its scan file was removed")
        try:
            self._f.close()
        finally:
            self.part.unlink(missing_ok=True)


@contextmanager
def scan_writer(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Iterator[ScanWriter]:
    """:class:`ScanWriter` as a context: renamed on success, removed on error."""
    w = ScanWriter(path, *args, **kwargs)
    try:
        yield w
    except BaseException:
        w.discard()
        raise
    w.close()


def write_scan(path: str | os.PathLike[str], scan: Scan) -> Path:
    """Write a whole in-memory scan atomically; returns the final path."""
    scan.validate(path)
    with scan_writer(path, scan.frame_shape, scan.data.dtype, energy_ev=scan.energy_ev,
                     distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
                     probe=scan.probe, truth=scan.truth,
                     truth_pixel_size_m=scan.truth_pixel_size_m, metadata=scan.metadata,
                     expected_frames=scan.n_frames) as w:
        for frame, (y, x) in zip(scan.data, scan.positions, strict=True):
            w.append(frame, y, x)
    return final_path(path)
