"""What every scan-file reader and writer here shares: units, required datasets, atomic writes.

Readers name the file and the dataset in every error (:class:`ScanFileError`),
because a scan that fails at 3 a.m. is fixed by whoever reads the message.
Writers write ``NAME.part`` and rename it, so no reader (nor the IOC's Auto
mode) ever takes a half-written file for a whole one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptychoflow.scan import PART_SUFFIX, ScanFileError

ELECTRON_VOLT_J = 1.602176634e-19  # J per eV (exact, SI 2019); CXI stores energies in J

LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9}
ENERGY_UNITS_EV = {"J": 1.0 / ELECTRON_VOLT_J, "eV": 1.0, "keV": 1e3}

Source = str | os.PathLike[str]


def text(value: Any) -> str:
    """An HDF5 string (fixed-length bytes, as detectors write them, or str) as str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def dataset(f: h5py.File, keys: Sequence[str], path: Source, what: str) -> h5py.Dataset:
    """The first of ``keys`` that is a dataset; else an error naming them all and ``what``."""
    for key in keys:
        obj = f.get(key)
        if isinstance(obj, h5py.Dataset):
            return obj
        if obj is not None:
            raise ScanFileError(path, f"{key} is not a dataset ({what})")
    names = " nor ".join(f"/{k.lstrip('/')}" for k in keys)
    raise ScanFileError(path, f"missing dataset {names} ({what}); the file is incomplete or "
                              "not of this layout")


def values(ds: h5py.Dataset, path: Source, sel: Any = ()) -> np.ndarray:
    """Read ``ds[sel]``; an unreadable dataset (truncated, corrupt chunk) is named."""
    try:
        return np.asarray(ds[sel])
    except (OSError, ValueError, KeyError) as exc:
        raise ScanFileError(path, f"cannot read {ds.name} ({exc}); the file looks truncated "
                                  "or was copied before its writer finished") from exc


def scalar(ds: h5py.Dataset, path: Source) -> float:
    """A number stored as a scalar or one-element dataset."""
    v = values(ds, path)
    if v.size != 1:
        raise ScanFileError(path, f"{ds.name} must hold one number, got shape {v.shape}")
    try:
        return float(v.reshape(()))
    except (TypeError, ValueError) as exc:
        raise ScanFileError(path, f"{ds.name} is not a number ({exc})") from exc


def with_unit(ds: h5py.Dataset, path: Source, units: dict[str, float], default: str) -> float:
    """``ds`` in SI (or eV) through its ``units`` attribute, ``default`` when it has none."""
    unit = text(ds.attrs["units"]) if "units" in ds.attrs else default
    if unit not in units:
        raise ScanFileError(path, f"{ds.name} has unit {unit!r}; use one of {sorted(units)}")
    return scalar(ds, path) * units[unit]


def positive(v: float, name: str, path: Source) -> float:
    """Refuse zero, negative or non-finite geometry with the dataset's name."""
    if not (np.isfinite(v) and v > 0):
        raise ScanFileError(path, f"{name} must be a positive number, got {v!r}")
    return v


def square_pixel(x_m: float, y_m: float, where: str, path: Source) -> float:
    """One pixel size from x and y; the far-field model here needs square pixels."""
    if abs(x_m - y_m) > 1e-6 * max(x_m, y_m):
        raise ScanFileError(path, f"{where}: x_pixel_size {x_m:g} m differs from y_pixel_size "
                                  f"{y_m:g} m; ptychoflow needs square detector pixels")
    return x_m


def top_level(f: h5py.File, depth: int = 3) -> str:
    """A short listing of what a file holds, for 'matches no layout' errors."""
    found: list[str] = []

    def walk(group: h5py.Group, prefix: str, level: int) -> None:
        for name in list(group.keys())[:6]:
            item = group.get(name, getlink=True)
            full = f"{prefix}/{name}"
            if isinstance(item, h5py.HardLink) and isinstance(group.get(name), h5py.Group) \
                    and level < depth:
                walk(group[name], full, level + 1)
            else:
                found.append(full)

    walk(f, "", 1)
    more = ", ..." if len(found) > 10 else ""
    return ", ".join(found[:10]) + more if found else "nothing"


@contextmanager
def atomic_h5(path: Source) -> Iterator[h5py.File]:
    """An HDF5 file written as ``NAME.part`` and renamed to ``NAME`` only when complete."""
    final = Path(path)
    if final.name.endswith(PART_SUFFIX):
        final = final.with_name(final.name[: -len(PART_SUFFIX)])
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + PART_SUFFIX)
    try:
        with h5py.File(part, "w") as f:
            yield f
        os.replace(part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
