"""APS Velociprobe scans (33-ID-C, formerly 2-ID-D): Eiger master file + data files + positions.

Follows ptychodus' reader of this instrument,
``src/ptychodus/plugins/aps33id_velociprobe/aps33id_velociprobe_diffraction_file.py``
and ``aps33id_velociprobe_position_file.py`` (github.com/AdvancedPhotonSource/ptychodus,
commit 7ccf5817), where the layout is:

- the master file ``flyNNN_master.h5`` (Dectris Eiger/NeXus): ``/entry/data/data_000001``,
  ``data_000002``, ... external links to ``flyNNN_data_00000k.h5:/entry/data/data``
  (frames in link-name order); ``/entry/instrument/detector/``: ``detector_distance``,
  ``x_pixel_size``, ``y_pixel_size`` (m), ``beam_center_x``, ``beam_center_y`` (pixels),
  ``bit_depth_readout``, and ``detectorSpecific/photon_energy`` (eV), ``nimages``,
  ``ntrigger``, ``x_pixels_in_detector``, ``y_pixels_in_detector`` (the frames' own
  shape is used here, which also holds for a detector read out in a region);
  ``/entry/sample/goniometer/chi`` (degrees);
- the positions file, comma-separated, ``#`` lines skipped, at least 8 columns:
  column 1 x (nm, integer), column 2 y of the laser interferometer (nm), column 5
  y of the position encoder (nm, negated), column 7 the trigger (frame) number.

As ptychodus does: the laser-interferometer y is used (its first registered
reader); positions are centred on their mean and x is scaled by cos(chi); frame
``i`` (counted from 0 over the data files) takes the first row whose trigger is
``i``, and frames without a row, or rows without a frame, are dropped (counted
in ``metadata``). Beyond ptychodus, which leaves cropping to the user: frames are
cropped to the largest even square centred on the beam centre, at most
:data:`MAX_FRAME_PX` pixels, and uint32 pixels at 0xFFFFFFFF (the Eiger's mark
for a masked or defective pixel) are set to 0, as pty-chi's loader zeroes
counts above 1e7.

The positions file is looked for next to the master file (``flyNNN_0.txt``),
then in the beamline's tree, ``<base>/ptycho/flyNNN/`` beside ``<base>/positions/``
(where pty-chi's ``load_data_velo`` reads it). Axes: detector rows are y and
columns x; the file's x and y are ours, unchanged in sign.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ptychoflow.formats._h5 import (
    ENERGY_UNITS_EV,
    LENGTH_UNITS,
    Source,
    atomic_h5,
    dataset,
    positive,
    scalar,
    square_pixel,
    text,
    values,
    with_unit,
)
from ptychoflow.scan import Scan, ScanFileError

NAME = "APS Velociprobe"
EXPECTS = ("an Eiger master file *_master.h5 with /entry/data/data_NNNNNN links and "
           "/entry/instrument/detector/detectorSpecific, plus its positions file "
           "<scan>_0.txt (ptychodus' APS_Velociprobe layout)")
SUFFIXES = ("_master.h5",)
MAX_FRAME_PX = 512
COL_X, COL_Y_LASER, COL_Y_ENCODER, COL_TRIGGER = 1, 2, 5, 7
DET = "entry/instrument/detector"
_LINK = re.compile(r"data_\d{6}$")


def sniff(f: h5py.File) -> bool:
    """An Eiger master file: its data links or its detectorSpecific group."""
    if isinstance(f.get(f"{DET}/detectorSpecific"), h5py.Group):
        return True
    data = f.get("entry/data")
    return isinstance(data, h5py.Group) and any(_LINK.match(k) for k in data.keys())


def scan_name(master: Path) -> str:
    """``fly001`` of ``fly001_master.h5``."""
    return master.name.removesuffix(".h5").removesuffix(".hdf5").removesuffix("_master")


def position_candidates(master: Path) -> list[Path]:
    """Where the positions file of ``master`` may be, in the order they are tried."""
    name = f"{scan_name(master)}_0.txt"
    d = master.parent
    return [d / name, d / "positions" / name, d.parent / "positions" / name,
            d.parent.parent / "positions" / name]


def positions_file(master: Path) -> Path:
    """The positions file of a master file, or an error listing where it was looked for."""
    for p in position_candidates(master):
        if p.is_file():
            return p
    tried = ", ".join(str(p) for p in position_candidates(master))
    raise ScanFileError(master, f"no positions file; looked for {tried}")


def _links(f: h5py.File, master: Path) -> list[tuple[Path, str]]:
    group = f.get("entry/data")
    if not isinstance(group, h5py.Group):
        raise ScanFileError(master, "missing group /entry/data (the links to the data files)")
    out = []
    for name in sorted(group.keys()):
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            out.append((master.parent / link.filename, str(link.path)))
    if not out:
        raise ScanFileError(master, "/entry/data holds no external links to data files "
                                    "(data_000001, ...); is this a master file?")
    return out


def preflight(master: Path) -> None:
    """Every file the scan needs is there (the IOC asks before a run)."""
    try:
        with h5py.File(master, "r") as f:
            files = _links(f, master)
    except OSError as exc:
        raise ScanFileError(master, f"not a readable Eiger master file ({exc})") from exc
    for file, _ in files:
        if not file.is_file():
            raise ScanFileError(master, f"data file {file} is missing")
    positions_file(master)


@dataclass(frozen=True)
class Positions:
    """The positions file, as ptychodus reads it: one row per trigger, first row wins."""

    trigger: np.ndarray
    yx_m: np.ndarray  # centred on the mean of all rows, x scaled by cos(chi)


def read_positions(path: Path, chi_deg: float) -> Positions:
    """Parse a Velociprobe positions file (see the module docstring)."""
    rows: list[tuple[int, float, float]] = []
    try:
        with path.open(newline="") as fh:
            for n, row in enumerate(csv.reader(fh, delimiter=","), 1):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                if len(row) <= COL_TRIGGER:
                    raise ScanFileError(path, f"line {n} has {len(row)} columns; a Velociprobe "
                                              f"positions file has at least {COL_TRIGGER + 1}")
                rows.append((int(row[COL_TRIGGER]), int(row[COL_X]) * 1e-9,
                             int(row[COL_Y_LASER]) * 1e-9))
    except ScanFileError:
        raise
    except ValueError as exc:
        raise ScanFileError(path, f"not a Velociprobe positions file ({exc}); columns 1, 2 "
                                  "and 7 must be integers (nm, nm, trigger)") from exc
    except OSError as exc:
        raise ScanFileError(path, f"cannot read the positions file ({exc})") from exc
    if not rows:
        raise ScanFileError(path, "the positions file holds no positions")
    a = np.asarray(rows, dtype=np.float64)
    x = (a[:, 1] - a[:, 1].mean()) * np.cos(np.deg2rad(chi_deg))
    y = a[:, 2] - a[:, 2].mean()
    trigger, first = np.unique(a[:, 0].astype(np.int64), return_index=True)  # sorted
    return Positions(trigger, np.stack([y[first], x[first]], axis=1))


def _crop(shape: tuple[int, ...], centre_yx: tuple[float, float], path: Source) -> \
        tuple[slice, slice]:
    cy, cx = (int(round(c)) for c in centre_yx)
    half = min(cy, shape[0] - cy, cx, shape[1] - cx, MAX_FRAME_PX // 2)
    if half < 1:
        raise ScanFileError(path, f"beam centre ({cx}, {cy}) px lies outside or on the edge of "
                                  f"the {shape[1]}x{shape[0]} detector")
    return slice(cy - half, cy + half), slice(cx - half, cx + half)


def _frames(files: list[tuple[Path, str]], master: Path, centre_yx: tuple[float, float],
            load: bool) -> tuple[np.ndarray, tuple[slice, slice]]:
    parts: list[np.ndarray] = []
    rows = cols = slice(None)
    for file, key in files:
        try:
            with h5py.File(file, "r") as g:
                ds = dataset(g, (key,), file, "the detector frames of this data file")
                if ds.ndim != 3:
                    raise ScanFileError(file, f"{key} must be (N, H, W), got {ds.shape}")
                if not parts:
                    rows, cols = _crop(ds.shape[1:], centre_yx, master)
                if load:
                    parts.append(values(ds, file, (slice(None), rows, cols)))
                else:
                    h, w = len(range(*rows.indices(ds.shape[1]))), \
                        len(range(*cols.indices(ds.shape[2])))
                    parts.append(np.zeros((ds.shape[0], h, w), ds.dtype))
        except FileNotFoundError as exc:
            raise ScanFileError(master, f"data file {file} is missing") from exc
        except OSError as exc:
            raise ScanFileError(file, f"not a readable data file ({exc}); was it truncated or "
                                      "copied before the detector finished?") from exc
    if len({p.shape[1:] for p in parts}) > 1:
        raise ScanFileError(master, "the data files hold frames of different sizes")
    return np.concatenate(parts), (rows, cols)


def read(path: Path, frames: bool = True) -> Scan:
    """Read a Velociprobe scan from its master file (see the module docstring)."""
    try:
        with h5py.File(path, "r") as f:
            files = _links(f, path)
            spec = f"{DET}/detectorSpecific"
            energy = positive(with_unit(dataset(f, (f"{spec}/photon_energy",), path,
                                                "photon energy in eV"), path, ENERGY_UNITS_EV,
                                        "eV"), f"/{spec}/photon_energy", path)
            distance = positive(with_unit(dataset(f, (f"{DET}/detector_distance",), path,
                                                  "sample-detector distance in m"), path,
                                          LENGTH_UNITS, "m"), f"/{DET}/detector_distance", path)
            px = [positive(with_unit(dataset(f, (f"{DET}/{a}_pixel_size",), path,
                                             "detector pixel size in m"), path, LENGTH_UNITS,
                                     "m"), f"/{DET}/{a}_pixel_size", path) for a in "xy"]
            centre = tuple(scalar(dataset(f, (f"{DET}/beam_center_{a}",), path,
                                          "beam centre in pixels"), path) for a in "yx")
            chi = f.get("entry/sample/goniometer/chi")
            chi_deg = float(values(chi, path).ravel()[0]) if isinstance(chi, h5py.Dataset) \
                else 0.0
            if isinstance(chi, h5py.Dataset) and text(chi.attrs.get("units", "degree")) not in (
                    "degree", "deg"):
                raise ScanFileError(path, f"/entry/sample/goniometer/chi has unit "
                                          f"{text(chi.attrs['units'])!r}; expected degree")
    except ScanFileError:
        raise
    except (OSError, KeyError) as exc:
        raise ScanFileError(path, f"not a readable Eiger master file ({exc}); was it truncated "
                                  "or copied before the detector finished?") from exc
    pixel = square_pixel(px[0], px[1], f"/{DET}", path)
    data, (rows, cols) = _frames(files, path, (centre[0], centre[1]), frames)
    if frames and data.dtype == np.uint32:
        data[data == np.iinfo(np.uint32).max] = 0
    pos_path = positions_file(path)
    pos = read_positions(pos_path, chi_deg)
    common = np.intersect1d(np.arange(len(data)), pos.trigger)
    if not len(common):
        raise ScanFileError(path, f"no frame has a position: the triggers in {pos_path} "
                                  f"({pos.trigger.min()}..{pos.trigger.max()}) match none of "
                                  f"the {len(data)} frames (0..{len(data) - 1})")
    which = np.searchsorted(pos.trigger, common)
    meta = {"source_format": NAME, "positions_file": str(pos_path), "chi_deg": chi_deg,
            "data_files": len(files), "frames_without_position": len(data) - len(common),
            "positions_without_frame": len(pos.trigger) - len(common),
            "crop": f"rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}"}
    scan = Scan(data=data[common] if len(common) < len(data) else data,
                positions=pos.yx_m[which], energy_ev=energy, distance_m=distance,
                pixel_size_m=pixel, metadata=meta)
    if frames:
        scan.validate(path)
    return scan


def _ascii(s: str) -> np.bytes_:
    return np.bytes_(s)  # fixed-length ASCII, as the Eiger writes (ptychodus compares bytes)


def write_velociprobe(folder: str | os.PathLike[str], scan: Scan, *, name: str = "fly001",
                      frames_per_file: int = 100, pad: tuple[int, int, int, int] = (0, 0, 0, 0),
                      origin_nm: tuple[int, int] = (0, 0), chi_deg: float = 0.0) -> Path:
    """Write ``scan`` as the Velociprobe's beamline writes it; returns the master file.

    For tests and demonstrations: ``folder/ptycho/NAME/NAME_master.h5`` and its
    data files, and ``folder/positions/NAME_0.txt``, each written atomically.
    ``pad`` (top, bottom, left, right) embeds the frames in a larger detector with
    the beam centre on the frames' centre; ``origin_nm`` (x, y) offsets the stage.
    """
    base = Path(folder)
    scan_dir = base / "ptycho" / name
    n, (h, w) = scan.n_frames, scan.frame_shape
    top, bottom, left, right = pad
    det_shape = (h + top + bottom, w + left + right)
    links = []
    for k, start in enumerate(range(0, n, frames_per_file), 1):
        block = scan.data[start:start + frames_per_file]
        full = np.zeros((len(block), *det_shape), scan.data.dtype)
        full[:, top:top + h, left:left + w] = block
        data_name = f"{name}_data_{k:06d}.h5"
        with atomic_h5(scan_dir / data_name) as g:
            g.create_dataset("entry/data/data", data=full, chunks=(1, *det_shape))
        links.append((f"data_{k:06d}", data_name))
    master = scan_dir / f"{name}_master.h5"
    with atomic_h5(master) as f:
        for link, data_name in links:
            f[f"entry/data/{link}"] = h5py.ExternalLink(data_name, "/entry/data/data")
        det = f.create_group(DET)
        for key, value, unit in (
                ("detector_distance", scan.distance_m, "m"),
                ("x_pixel_size", scan.pixel_size_m, "m"), ("y_pixel_size", scan.pixel_size_m, "m"),
                ("beam_center_x", left + w // 2, "pixel"), ("beam_center_y", top + h // 2, "pixel"),
                ("bit_depth_readout", 8 * scan.data.dtype.itemsize, None)):
            ds = det.create_dataset(key, data=value)
            if unit:
                ds.attrs["units"] = _ascii(unit)
        spec = det.create_group("detectorSpecific")
        spec.create_dataset("photon_energy", data=scan.energy_ev).attrs["units"] = _ascii("eV")
        for key, value in (("nimages", 1), ("ntrigger", n),
                           ("x_pixels_in_detector", det_shape[1]),
                           ("y_pixels_in_detector", det_shape[0])):
            spec.create_dataset(key, data=value)
        chi = f.create_dataset("entry/sample/goniometer/chi", data=[chi_deg])
        chi.attrs["units"] = _ascii("degree")
    x_nm = np.rint(scan.positions[:, 1] / np.cos(np.deg2rad(chi_deg)) * 1e9).astype(int)
    y_nm = np.rint(scan.positions[:, 0] * 1e9).astype(int)
    x_nm, y_nm = x_nm + origin_nm[0], y_nm + origin_nm[1]
    lines = ["# time, x (nm), y laser interferometer (nm), -, -, y encoder (nm, negated), -, "
             "trigger"]
    lines += [f"{i * 1000},{x},{y},0,0,{-y},0,{i}"
              for i, (x, y) in enumerate(zip(x_nm, y_nm, strict=True))]
    pos = base / "positions" / f"{name}_0.txt"
    pos.parent.mkdir(parents=True, exist_ok=True)
    part = pos.with_name(pos.name + ".part")
    part.write_text("\n".join(lines) + "\n")
    os.replace(part, pos)
    return master
