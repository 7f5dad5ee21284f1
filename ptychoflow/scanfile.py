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

import bz2
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

PART_SUFFIX = ".part"
PLANCK_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength [m] = PLANCK_EV_M / energy [eV]


class ScanFileError(ValueError):
    """A scan file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Scan:
    """One ptychography scan in memory.

    ``positions`` is (N, 2) in metres, columns (y, x), relative to the object's
    centre; frames are centred diffraction patterns (zero frequency in the middle).
    """

    data: np.ndarray
    positions: np.ndarray
    energy_ev: float
    distance_m: float
    pixel_size_m: float
    probe: np.ndarray | None = None
    truth: np.ndarray | None = None
    truth_pixel_size_m: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames (and positions)."""
        return int(self.data.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one detector frame."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def wavelength_m(self) -> float:
        """X-ray wavelength from the photon energy."""
        return PLANCK_EV_M / self.energy_ev

    @property
    def object_pixel_size_m(self) -> float:
        """Real-space pixel of the far-field geometry: lambda * z / (N * p)."""
        return self.wavelength_m * self.distance_m / (self.frame_shape[0] * self.pixel_size_m)

    def positions_px(self) -> np.ndarray:
        """Positions in object pixels, (y, x)."""
        return self.positions / self.object_pixel_size_m

    def validate(self, source: str | os.PathLike[str] = "<scan>") -> None:
        """Raise :class:`ScanFileError` for anything a solver or trainer would choke on."""
        d = self.data
        if d.ndim != 3:
            raise ScanFileError(source, f"/entry/data/data must be (N, H, W), got shape {d.shape}")
        if d.shape[0] == 0:
            raise ScanFileError(source, "/entry/data/data holds no frames")
        if d.shape[1] != d.shape[2]:
            raise ScanFileError(source, f"frames must be square, got {d.shape[1]}x{d.shape[2]}")
        if self.positions.shape != (d.shape[0], 2):
            raise ScanFileError(
                source, f"{d.shape[0]} frames but positions have shape {self.positions.shape}; "
                "every frame needs one (x, y) position")
        if np.issubdtype(d.dtype, np.floating) and not np.all(np.isfinite(d)):
            raise ScanFileError(source, "/entry/data/data contains NaN or infinity")
        if np.issubdtype(d.dtype, np.signedinteger) or np.issubdtype(d.dtype, np.floating):
            if d.size and float(d.min()) < 0:
                raise ScanFileError(source, "/entry/data/data has negative counts")
        if not np.all(np.isfinite(self.positions)):
            raise ScanFileError(source, "positions contain NaN or infinity")
        for name, v in (("energy", self.energy_ev), ("detector_distance", self.distance_m),
                        ("pixel_size", self.pixel_size_m)):
            if not (np.isfinite(v) and v > 0):
                raise ScanFileError(source, f"/entry/instrument attribute {name} must be a "
                                            f"positive number, got {v!r}")
        if self.probe is not None and self.probe.shape != d.shape[1:]:
            raise ScanFileError(source, f"probe shape {self.probe.shape} differs from the frame "
                                        f"shape {d.shape[1:]}")
        if self.truth is not None:
            if self.truth.ndim != 2:
                raise ScanFileError(source, "/entry/sample/truth must be a 2-D complex image")
            if not np.all(np.isfinite(self.truth)):
                raise ScanFileError(source, "/entry/sample/truth contains NaN or infinity")
            px = self.truth_pixel_size_m or self.object_pixel_size_m
            half = np.array(self.truth.shape) * px / 2
            span = np.abs(self.positions).max(axis=0) + np.array(d.shape[1:]) * px / 2
            if np.any(span > half * (1 + 1e-6)):
                raise ScanFileError(source, "scan positions plus frame reach outside the truth "
                                            "object; enlarge the object or shrink the scan")


def read_scan(path: str | os.PathLike[str], *, frames: bool = True) -> Scan:
    """Read and validate a scan file of any known layout (see :mod:`ptychoflow.formats`).

    Ours, CXI, the APS Velociprobe's master file or the Siemens-star ``.npz.bz2``:
    the layout is told from the file's content, else its name; a file of no
    known layout is refused with every layout tried. With ``frames=False`` the
    detector data are not loaded (``data`` is an empty array of the right dtype
    and frame shape), for callers that only need geometry.
    """
    from ptychoflow.formats import read_any  # the readers build on this module's Scan

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
                 metadata: dict[str, Any] | None = None, expected_frames: int = 0) -> None:
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

    def close(self) -> Path:
        """Finish the file and make it visible under its final name."""
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


# Nominal geometry for the Siemens-star set, which ships positions in pixels only.
SIEMENS_ENERGY_EV = 8800.0
SIEMENS_DISTANCE_M = 2.0
SIEMENS_PIXEL_M = 75e-6


def read_siemens_star(path: str | os.PathLike[str]) -> Scan:
    """Read Tike's Siemens-star set (``.npz.bz2``) into a :class:`Scan`.

    Its frames have zero frequency at the corner: they are ``fftshift``-ed to the
    centre like a detector's. Positions come in object pixels (y, x); they are
    given metres through a nominal geometry (8.8 keV, 2 m, 75 µm pixels), which
    only sets the physical scale, not the reconstruction.
    """
    p = Path(path)
    if not p.exists():
        raise ScanFileError(p, "no such file; the Siemens-star set lives in ../shared/data/")
    try:
        raw = bz2.open(p).read() if p.name.endswith(".bz2") else p.read_bytes()
        npz = np.load(io.BytesIO(raw))
        data = np.asarray(npz["data"])[0]
        probe = np.asarray(npz["probe"]).reshape(data.shape[1:])
        scan_px = np.asarray(npz["scan"])[0].astype(np.float64)
    except (OSError, EOFError, KeyError, ValueError) as exc:
        raise ScanFileError(p, f"not a readable Siemens-star archive ({exc})") from exc
    data = np.fft.fftshift(data, axes=(-2, -1)).astype(np.float32)
    data = np.clip(data, 0, None)
    scan_px -= scan_px.mean(axis=0)
    s = Scan(data=data, positions=np.zeros((data.shape[0], 2)), energy_ev=SIEMENS_ENERGY_EV,
             distance_m=SIEMENS_DISTANCE_M, pixel_size_m=SIEMENS_PIXEL_M,
             probe=probe.astype(np.complex64), metadata={"source": "siemens-star-small (Tike)"})
    s.positions = scan_px * s.object_pixel_size_m
    s.validate(p)
    return s
