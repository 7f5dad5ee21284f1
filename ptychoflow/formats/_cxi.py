"""CXI scan files (Coherent X-ray Imaging format, cxidb.org, spec 1.6), read and written.

Where things are, as ptychodus (``src/ptychodus/plugins/cxi_file.py``), PyNX
(``save_ptycho_data_cxi``) and CDTools (``tools/data``) read and write them:

- frames: ``/entry_1/data_1/data`` (a soft link), else the dataset itself at
  ``/entry_1/instrument_1/detector_1/data``; (N, H, W) or a raster (A, B, H, W);
- positions: ``/entry_1/sample_1/geometry_1/translation`` (N, 3) in metres,
  columns (x, y, z), also linked as ``/entry_1/data_1/translation``; PyNX
  writes the transpose (3, N), which is accepted;
- photon energy: ``/entry_1/instrument_1/source_1/energy`` in J (else
  ``instrument_1/beam_1/incident_energy`` or ``beam_1/energy``, where
  NXcxi_ptycho files keep it: their ``source_1/energy`` is the storage ring's);
- ``/entry_1/instrument_1/detector_1/distance``, ``x_pixel_size``,
  ``y_pixel_size`` in metres; a ``units`` attribute, where present, is honoured;
- optional: the probe ``/entry_1/instrument_1/source_1/illumination`` and the
  bad-pixel ``/entry_1/instrument_1/detector_1/mask`` (non-zero: bad, zeroed as
  ptychodus does).

Axes and sign, the one place they are decided: frame axis 0 (rows, slow) is y
and axis 1 (columns, fast) is x, in the CXI detector and in our frames alike.
``translation[:, 0]`` is our x (``positions[:, 1]``) and ``translation[:, 1]``
our y (``positions[:, 0]``), with no sign change: the translation is read as
the probe's position on the sample, as ptychodus and PyNX read and write it.
(CDTools reads the spec's "sample translation" literally and negates it; its
files come out rotated by 180 degrees, which a reconstruction does not mind.)

Our scans have positions relative to the object's centre. Files from other
tools hold stage coordinates, so their positions are centred on their mean
(as ptychodus does for stage encoders); files :func:`write_cxi` wrote say so
(``/entry_1/ptychoflow@positions_origin``) and are taken as they are, with
their truth object and metadata, so a scan survives CXI unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptychoflow.formats._h5 import (
    ELECTRON_VOLT_J,
    ENERGY_UNITS_EV,
    LENGTH_UNITS,
    Source,
    atomic_h5,
    dataset,
    positive,
    square_pixel,
    text,
    values,
    with_unit,
)
from ptychoflow.scan import Scan, ScanFileError

NAME = "CXI"
EXPECTS = ("/entry_1/data_1/data (or /entry_1/instrument_1/detector_1/data) frames, "
           "/entry_1/sample_1/geometry_1/translation (N, 3) m, "
           "/entry_1/instrument_1/source_1/energy J, detector_1/distance and "
           "x_pixel_size/y_pixel_size m (.cxi)")
SUFFIXES = (".cxi",)
CXI_VERSION = 160  # spec 1.6, stored as version * 100

DATA = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
TRANSLATION = ("entry_1/sample_1/geometry_1/translation", "entry_1/data_1/translation",
               "entry_1/instrument_1/detector_1/translation")
SOURCE = "entry_1/instrument_1/source_1"
DETECTOR = "entry_1/instrument_1/detector_1"
PROBE = (f"{SOURCE}/illumination", f"{SOURCE}/probe")
ENERGY = (f"{SOURCE}/energy", "entry_1/instrument_1/beam_1/incident_energy",
          "entry_1/instrument_1/beam_1/energy")
PHOTON_EV = (10.0, 1e6)
OURS = "entry_1/ptychoflow"
OBJECT_CENTRE = "object centre"


def sniff(f: h5py.File) -> bool:
    """CXI names its top group ``entry_1``."""
    return isinstance(f.get("entry_1"), h5py.Group)


def _frames(ds: h5py.Dataset, path: Source, load: bool) -> np.ndarray:
    if ds.ndim == 4:  # a raster (A, B, H, W): CXI flattens it, C order like the positions
        shape = (ds.shape[0] * ds.shape[1], *ds.shape[2:])
        return values(ds, path).reshape(shape) if load else np.zeros(shape, ds.dtype)
    if ds.ndim != 3:
        raise ScanFileError(path, f"{ds.name} must be (N, H, W) frames, got shape {ds.shape}")
    return values(ds, path) if load else np.zeros(ds.shape, ds.dtype)


def _translation(f: h5py.File, n: int, path: Source) -> np.ndarray:
    ds = dataset(f, TRANSLATION, path, "the scan positions, (N, 3) in metres")
    t = values(ds, path).astype(np.float64) * _metres(ds, path)
    if t.ndim == 2 and t.shape[0] in (2, 3) and t.shape[1] == n and t.shape[0] != n:
        t = t.T  # PyNX writes (3, N)
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] not in (2, 3):
        raise ScanFileError(path, f"{ds.name} has shape {t.shape}; {n} frames need ({n}, 3) "
                                  "positions (x, y, z) in metres")
    return np.stack([t[:, 1], t[:, 0]], axis=1)  # ours: (y, x)


def _metres(ds: h5py.Dataset, path: Source) -> float:
    """The factor to metres of a length dataset's ``units`` attribute (metres without one)."""
    unit = text(ds.attrs["units"]) if "units" in ds.attrs else "m"
    if unit not in LENGTH_UNITS:
        raise ScanFileError(path, f"{ds.name} has unit {unit!r}; use one of "
                                  f"{sorted(LENGTH_UNITS)}")
    return LENGTH_UNITS[unit]


def _energy_ev(f: h5py.File, path: Source) -> float:
    """The photon energy: ``source_1/energy``, else ``beam_1`` (NXcxi_ptycho, PyNX).

    NXcxi_ptycho keeps the storage ring's energy in ``source_1/energy``; a value
    outside any photon energy used for ptychography is passed over for ``beam_1``'s.
    """
    seen = []
    for key in ENERGY:
        ds = f.get(key)
        if isinstance(ds, h5py.Dataset):
            ev = with_unit(ds, path, ENERGY_UNITS_EV, "J")
            if PHOTON_EV[0] <= ev <= PHOTON_EV[1]:
                return ev
            seen.append(f"/{key} = {ev:g} eV")
    if seen:
        raise ScanFileError(path, f"no photon energy between {PHOTON_EV[0]:g} eV and "
                                  f"{PHOTON_EV[1]:g} eV: {', '.join(seen)}; CXI wants the "
                                  f"photon energy in J in /{SOURCE}/energy")
    ds = dataset(f, ENERGY[:1], path, "the photon energy in J")  # names what is missing
    return positive(with_unit(ds, path, ENERGY_UNITS_EV, "J"), f"/{ENERGY[0]}", path)


def _probe(f: h5py.File, frame: tuple[int, ...], path: Source) -> np.ndarray | None:
    for key in PROBE:
        ds = f.get(key)
        if isinstance(ds, h5py.Dataset) and np.iscomplexobj(np.empty(0, ds.dtype)):
            p = values(ds, path)
            p = p.reshape(-1, *p.shape[-2:])[0] if p.ndim > 2 else p  # first mode
            return p.astype(np.complex64) if p.shape == frame else None
    return None


def read(path: Path, frames: bool = True) -> Scan:
    """Read a CXI file into a :class:`Scan` (see the module docstring for the mapping)."""
    try:
        with h5py.File(path, "r") as f:
            data = _frames(dataset(f, DATA, path, "the diffraction frames"), path, frames)
            positions = _translation(f, data.shape[0], path)
            energy = _energy_ev(f, path)
            distance = positive(with_unit(dataset(f, (f"{DETECTOR}/distance",), path,
                                                  "sample-detector distance in m"),
                                          path, LENGTH_UNITS, "m"), f"/{DETECTOR}/distance", path)
            px = [positive(with_unit(dataset(f, (f"{DETECTOR}/{a}_pixel_size",), path,
                                             "detector pixel size in m"), path, LENGTH_UNITS,
                                     "m"), f"/{DETECTOR}/{a}_pixel_size", path) for a in "xy"]
            pixel = square_pixel(px[0], px[1], f"/{DETECTOR}", path)
            mask = f.get(f"{DETECTOR}/mask")
            if frames and isinstance(mask, h5py.Dataset) and mask.shape == data.shape[1:]:
                data[:, values(mask, path) != 0] = 0  # data is this read's own copy
            probe = _probe(f, data.shape[1:], path)
            ours = f.get(OURS)
            truth = truth_px = None
            meta: dict[str, Any] = {"source_format": NAME}
            if isinstance(ours, h5py.Group):
                centred = text(ours.attrs.get("positions_origin", "")) == OBJECT_CENTRE
                if isinstance(ours.get("truth"), h5py.Dataset):
                    truth = values(ours["truth"], path)
                    if "pixel_size" in ours["truth"].attrs:
                        truth_px = float(ours["truth"].attrs["pixel_size"])
                if isinstance(ours.get("metadata"), h5py.Group):
                    meta = {k: (text(v) if isinstance(v, bytes | str) else v)
                            for k, v in ours["metadata"].attrs.items()}
            else:
                centred = False
    except ScanFileError:
        raise
    except (OSError, KeyError) as exc:
        raise ScanFileError(path, f"not a readable CXI (HDF5) file ({exc}); was it truncated "
                                  "or copied before its writer finished?") from exc
    if not centred:
        positions = positions - positions.mean(axis=0)
    scan = Scan(data=data, positions=positions, energy_ev=energy, distance_m=distance,
                pixel_size_m=pixel, probe=probe, truth=truth, truth_pixel_size_m=truth_px,
                metadata=meta)
    if frames:
        scan.validate(path)
    return scan


def _meta_attr(v: Any) -> Any:
    return v if isinstance(v, str | bytes | int | float | np.generic | np.ndarray) else str(v)


def write_cxi(path: str | os.PathLike[str], scan: Scan) -> Path:
    """Write ``scan`` as a CXI file atomically (``NAME.cxi.part`` renamed); returns the path.

    Other tools find everything where the module docstring says; our truth
    object and metadata go under ``/entry_1/ptychoflow`` so that reading the
    file back gives the same scan.
    """
    final = Path(path)
    if final.suffix != ".cxi":
        raise ScanFileError(final, "CXI files must end in .cxi")
    scan.validate(final)
    with atomic_h5(final) as f:
        f.create_dataset("cxi_version", data=CXI_VERSION)
        entry = f.create_group("entry_1")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("start_time", data=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        instrument = entry.create_group("instrument_1")
        source = instrument.create_group("source_1")
        energy = source.create_dataset("energy", data=scan.energy_ev * ELECTRON_VOLT_J)
        energy.attrs["units"] = "J"
        if scan.probe is not None:
            source.create_dataset("illumination", data=scan.probe.astype(np.complex64))
            source["probe"] = h5py.SoftLink(f"/{SOURCE}/illumination")
        det = instrument.create_group("detector_1")
        frames = det.create_dataset("data", data=scan.data,
                                    chunks=(min(8, scan.n_frames), *scan.frame_shape))
        frames.attrs["axes"] = "translation:y:x"
        for name, v in (("distance", scan.distance_m), ("x_pixel_size", scan.pixel_size_m),
                        ("y_pixel_size", scan.pixel_size_m)):
            det.create_dataset(name, data=float(v)).attrs["units"] = "m"
        xyz = np.zeros((scan.n_frames, 3))
        xyz[:, 0], xyz[:, 1] = scan.positions[:, 1], scan.positions[:, 0]
        geometry = entry.create_group("sample_1").create_group("geometry_1")
        geometry.create_dataset("translation", data=xyz).attrs["units"] = "m"
        data_1 = entry.create_group("data_1")
        data_1["data"] = h5py.SoftLink(f"/{DETECTOR}/data")
        data_1["translation"] = h5py.SoftLink(f"/{TRANSLATION[0]}")
        det["translation"] = h5py.SoftLink(f"/{TRANSLATION[0]}")
        ours = entry.create_group("ptychoflow")
        ours.attrs["positions_origin"] = OBJECT_CENTRE
        if scan.truth is not None:
            t = ours.create_dataset("truth", data=scan.truth.astype(np.complex64))
            if scan.truth_pixel_size_m is not None:
                t.attrs["pixel_size"] = float(scan.truth_pixel_size_m)
        meta = ours.create_group("metadata")
        for k, v in scan.metadata.items():
            if v is not None:
                meta.attrs[k] = _meta_attr(v)
    return final
