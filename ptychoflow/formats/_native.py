"""ptychoflow's own scan layout (DESIGN.md, "Files"), read back into a :class:`Scan`.

``/entry/data/data`` (N, H, W) counts; ``/entry/instrument/positions/{x,y}`` in
metres relative to the object's centre; ``/entry/instrument`` attributes
``energy`` (eV), ``detector_distance`` and ``pixel_size`` (m), each with a
``<name>_units`` attribute; optional ``/entry/instrument/probe`` and
``/entry/sample/truth``. :class:`ptychoflow.scanfile.ScanWriter` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptychoflow.formats._h5 import LENGTH_UNITS, Source, text
from ptychoflow.scan import Scan, ScanFileError

NAME = "ptychoflow"
EXPECTS = ("/entry/data/data (N, H, W) and /entry/instrument/positions/{x,y} in metres, "
           "energy/detector_distance/pixel_size attributes on /entry/instrument (.h5)")
SUFFIXES = (".h5", ".hdf5", ".nxs")

_ENERGY_UNITS = {"eV": 1.0, "keV": 1e3}


def sniff(f: h5py.File) -> bool:
    """Ours: an ``/entry/instrument`` group with our positions group or energy attribute."""
    inst = f.get("entry/instrument")
    if not isinstance(inst, h5py.Group):
        return False
    return "positions" in inst or "energy" in inst.attrs


def _length(attrs: Any, name: str, path: Source) -> float:
    if name not in attrs:
        raise ScanFileError(path, f"/entry/instrument has no attribute {name!r}; write it in "
                                  "metres with a '<name>_units' attribute")
    unit = text(attrs.get(f"{name}_units", "m"))
    if unit not in LENGTH_UNITS:
        raise ScanFileError(path, f"unknown unit {unit!r} for {name}; use one of "
                                  f"{sorted(LENGTH_UNITS)}")
    return float(attrs[name]) * LENGTH_UNITS[unit]


def _energy(attrs: Any, path: Source) -> float:
    if "energy" not in attrs:
        raise ScanFileError(path, "/entry/instrument has no attribute 'energy' (photon energy "
                                  "in eV)")
    unit = text(attrs.get("energy_units", "eV"))
    if unit not in _ENERGY_UNITS:
        raise ScanFileError(path, f"unknown energy unit {unit!r}; use eV or keV")
    return float(attrs["energy"]) * _ENERGY_UNITS[unit]


def _require(f: h5py.File, key: str, path: Source) -> h5py.Dataset:
    if key not in f:
        raise ScanFileError(path, f"missing dataset {key}")
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise ScanFileError(path, f"{key} is not a dataset")
    return obj


def read(path: Path, frames: bool = True) -> Scan:
    """Read and validate one of our scan files; ``frames=False`` skips the detector data."""
    p = path
    try:
        with h5py.File(p, "r") as f:
            ds = _require(f, "entry/data/data", p)
            if frames:
                data = ds[()]
            else:
                data = np.zeros((ds.shape[0], *ds.shape[1:]), dtype=ds.dtype) if ds.ndim == 3 \
                    else ds[()]
            x = _require(f, "entry/instrument/positions/x", p)[()]
            y = _require(f, "entry/instrument/positions/y", p)[()]
            if x.shape != y.shape or x.ndim != 1:
                raise ScanFileError(p, f"positions x {x.shape} and y {y.shape} must be equal "
                                       "1-D arrays")
            inst = f["entry/instrument"].attrs
            energy = _energy(inst, p)
            distance = _length(inst, "detector_distance", p)
            pixel = _length(inst, "pixel_size", p)
            probe = f["entry/instrument/probe"][()] if "entry/instrument/probe" in f else None
            truth = None
            truth_px = None
            if "entry/sample/truth" in f:
                t = f["entry/sample/truth"]
                truth = t[()]
                truth_px = float(t.attrs["pixel_size"]) if "pixel_size" in t.attrs else None
            meta = {k: (v.decode() if isinstance(v, bytes) else v)
                    for k, v in f["entry"].attrs.items()}
    except ScanFileError:
        raise
    except (OSError, KeyError) as exc:
        raise ScanFileError(p, f"not a readable HDF5 scan file ({exc}); was it truncated or "
                               "copied before its writer finished?") from exc
    scan = Scan(data=data, positions=np.stack([y, x], axis=1).astype(np.float64),
                energy_ev=energy, distance_m=distance, pixel_size_m=pixel, probe=probe,
                truth=truth, truth_pixel_size_m=truth_px, metadata=meta)
    if frames:
        scan.validate(p)
    return scan
