"""Which reader takes a scan file: decided by what the file holds, then by its name.

An HDF5 file is opened once and each layout's ``sniff`` looks at its structure
(never at the frames); the first that recognises it reads it. A file that is
not readable HDF5 (truncated, still being copied) goes to the layout its name
suggests, whose reader then says what is wrong with it. A file no layout
takes is refused with every layout tried and what each expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py

from ptychoflow.formats import _cxi, _native, _velociprobe
from ptychoflow.formats._h5 import top_level
from ptychoflow.formats._siemens import read_siemens_star
from ptychoflow.scan import PART_SUFFIX, Scan, ScanFileError


@dataclass(frozen=True)
class ScanFormat:
    """One on-disk layout of a ptychography scan, and how to read it into a :class:`Scan`."""

    name: str
    expects: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, bool], Scan]
    sniff: Callable[[h5py.File], bool] | None = None
    """Recognise the layout in an open HDF5 file; ``None``: not HDF5, known by suffix."""
    preflight: Callable[[Path], None] | None = None
    """Check the files it needs besides this one are there (the IOC asks before a run)."""

    def named(self, path: Path) -> int:
        """Length of the longest of this format's suffixes ``path`` ends with (0: none)."""
        return max((len(s) for s in self.suffixes if path.name.lower().endswith(s)), default=0)


def _siemens(path: Path, frames: bool) -> Scan:
    return read_siemens_star(path)


NATIVE = ScanFormat(_native.NAME, _native.EXPECTS, _native.SUFFIXES, _native.read,
                    _native.sniff)
CXI = ScanFormat(_cxi.NAME, _cxi.EXPECTS, _cxi.SUFFIXES, _cxi.read, _cxi.sniff)
VELOCIPROBE = ScanFormat(_velociprobe.NAME, _velociprobe.EXPECTS, _velociprobe.SUFFIXES,
                         _velociprobe.read, _velociprobe.sniff, _velociprobe.preflight)
SIEMENS_STAR = ScanFormat("Siemens star (Tike)", "Tike's test archive data/probe/scan "
                          "(.npz.bz2, .npz)", (".npz.bz2", ".npz"), _siemens)

FORMATS: tuple[ScanFormat, ...] = (NATIVE, CXI, VELOCIPROBE, SIEMENS_STAR)
"""Every layout, in the order they are tried."""

SCAN_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(s for f in FORMATS for s in f.suffixes))
"""File-name endings a scan may have (for folder watchers and file dialogs)."""


_EIGER_DATA = re.compile(r"_data_\d{6}\.h5$")


def _tried() -> str:
    return "tried " + "; ".join(f"{f.name}: {f.expects}" for f in FORMATS)


def _by_name(path: Path, formats: tuple[ScanFormat, ...]) -> ScanFormat | None:
    best = max(formats, key=lambda f: f.named(path))
    return best if best.named(path) else None


def detect_format(path: str | os.PathLike[str]) -> ScanFormat:
    """The layout of a scan file, from its content (HDF5 structure), else its name."""
    p = Path(path)
    by_suffix = [f for f in FORMATS if f.sniff is None]
    plain = _by_name(p, tuple(by_suffix))
    if plain is not None:
        return plain
    if not p.exists():
        raise ScanFileError(p, "no such file")
    if p.name.endswith(PART_SUFFIX):
        raise ScanFileError(p, "is still being written (*.part); wait until it is renamed")
    hdf5 = tuple(f for f in FORMATS if f.sniff is not None)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        named = _by_name(p, hdf5)
        if named is not None:
            return named  # its reader names what is wrong (truncated, not HDF5, ...)
        raise ScanFileError(p, f"is not readable HDF5 ({exc}) and its name matches no known "
                               f"scan layout; {_tried()}") from exc
    with f:
        for fmt in hdf5:
            if fmt.sniff is not None and fmt.sniff(f):
                return fmt
        found = top_level(f)
    hint = " (an Eiger data file: give its *_master.h5)" if _EIGER_DATA.search(p.name) else ""
    raise ScanFileError(p, f"matches no known scan layout{hint} (it holds {found}); {_tried()}")


def read_any(path: str | os.PathLike[str], *, frames: bool = True) -> Scan:
    """Read a scan file of any known layout into the same :class:`Scan`."""
    return detect_format(path).read(Path(path), frames)


def check_scan_file(path: str | os.PathLike[str]) -> ScanFormat:
    """The layout of ``path`` once the files it needs are there and its header reads, else
    an error naming what is wrong (truncated, not HDF5, positions that disagree with the
    frames, ...).

    Cheap (no frames are read): for the IOC to refuse a ``Scan:Path`` before a run, rather
    than a stage minutes later.
    """
    fmt = detect_format(path)
    if fmt.preflight is not None:
        fmt.preflight(Path(path))
    fmt.read(Path(path), False)
    return fmt
