"""A reconstruction (object, probe, positions) as CXI, laid out as ptychodus' CXI product.

ptychodus (github.com/AdvancedPhotonSource/ptychodus,
``src/ptychodus/plugins/cxi_file.py``, ``CXIProductFileIO``) reads and writes a
reconstruction as CXI 1.6 like this, and this writer follows it so that
ptychodus opens our reconstructions as its own:

- ``/entry_1/image_1/data`` the probe, complex (1, 1, H, W), ``axes``
  ``coherent:incoherent:y:x``, ``data_type`` "amplitude", ``data_space`` "real";
- ``/entry_1/image_2/data`` the object, complex (1, H, W), ``axes``
  ``layer:y:x``, ``data_type`` "electron density", ``data_space`` "real";
- ``image_N/image_size`` (width, height, 0) in metres;
- ``/entry_1/instrument_1/source_1/illumination`` a soft link to the probe (where
  CXI readers such as ptychodus' older probe reader and SHARP look for it), and
  ``source_1/probe`` another; ``source_1/energy`` in J; ``detector_1/distance``;
- ``/entry_1/sample_1/geometry_1/translation`` (N, 3) the probe positions (x, y, 0)
  in metres, linked as ``/entry_1/data_1/translation``;
- ``/entry_1/ptychodus/`` ptychodus' own fields: pixel sizes, the object's centre
  in position coordinates, the position indexes and the loss per epoch;
- ``/entry_1/object`` and ``/entry_1/probe``: soft links to ``image_2`` and
  ``image_1``, so the file reads plainly in ``h5ls``.

Axes and sign are those of :mod:`ptychoflow.formats._cxi`: array rows are y,
columns x, and ``translation`` is (x, y) of the probe on the object, unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ptychoflow import __version__
from ptychoflow.formats._cxi import CXI_VERSION
from ptychoflow.formats._h5 import ELECTRON_VOLT_J, atomic_h5

PROBE_IMAGE = "/entry_1/image_1"
OBJECT_IMAGE = "/entry_1/image_2"


def _image(f: h5py.File, where: str, data: np.ndarray, axes: str, kind: str,
           pixel_m: float) -> None:
    image = f.create_group(where)
    ds = image.create_dataset("data", data=data.astype(np.complex64))
    ds.attrs["axes"] = axes
    image.create_dataset("data_type", data=kind)
    image.create_dataset("data_space", data="real")
    h, w = data.shape[-2:]
    image.create_dataset("image_size", data=np.array([w * pixel_m, h * pixel_m, 0.0]))
    image["source_1"] = h5py.SoftLink("/entry_1/instrument_1/source_1")
    image["detector_1"] = h5py.SoftLink("/entry_1/instrument_1/detector_1")


def write_cxi_reconstruction(path: str | os.PathLike[str], *, object_: np.ndarray,
                             probe: np.ndarray, pixel_size_m: float, positions_px: np.ndarray,
                             origin_px: tuple[int, int], energy_ev: float, distance_m: float,
                             detector_pixel_size_m: float, errors: Sequence[float] = (),
                             title: str = "", note: str = "") -> Path:
    """Write a reconstruction as CXI atomically (``NAME.cxi.part`` renamed); returns the path.

    ``positions_px`` are (y, x) object pixels relative to ``origin_px``, the
    object pixel of position (0, 0), as :mod:`ptychoflow.remote.recon` keeps them.
    """
    final = Path(path)
    if object_.ndim != 2 or probe.ndim != 2:
        raise ValueError(f"object and probe must be 2-D, got {object_.shape} and {probe.shape}")
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with atomic_h5(final) as f:
        f.create_dataset("cxi_version", data=CXI_VERSION)
        entry = f.create_group("entry_1")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("start_time", data=now)
        if title:
            entry.create_dataset("title", data=title)
        instrument = entry.create_group("instrument_1")
        source = instrument.create_group("source_1")
        source.create_dataset("energy", data=energy_ev * ELECTRON_VOLT_J).attrs["units"] = "J"
        detector = instrument.create_group("detector_1")
        for name, v in (("distance", distance_m), ("x_pixel_size", detector_pixel_size_m),
                        ("y_pixel_size", detector_pixel_size_m)):
            detector.create_dataset(name, data=float(v)).attrs["units"] = "m"
        _image(f, PROBE_IMAGE, probe[None, None], "coherent:incoherent:y:x", "amplitude",
               pixel_size_m)
        _image(f, OBJECT_IMAGE, object_[None], "layer:y:x", "electron density", pixel_size_m)
        source["illumination"] = h5py.SoftLink(f"{PROBE_IMAGE}/data")
        source["probe"] = h5py.SoftLink(f"{PROBE_IMAGE}/data")
        entry["probe"] = h5py.SoftLink(PROBE_IMAGE)
        entry["object"] = h5py.SoftLink(OBJECT_IMAGE)
        pos = np.asarray(positions_px, np.float64) * pixel_size_m
        xyz = np.zeros((len(pos), 3))
        xyz[:, 0], xyz[:, 1] = pos[:, 1], pos[:, 0]
        geometry = entry.create_group("sample_1").create_group("geometry_1")
        geometry.create_dataset("translation", data=xyz).attrs["units"] = "m"
        entry.create_group("data_1")["translation"] = h5py.SoftLink(
            "/entry_1/sample_1/geometry_1/translation")
        process = entry.create_group("process_1")
        process.create_dataset("program", data="ptychoflow")
        process.create_dataset("version", data=__version__)
        process.create_dataset("date", data=now)
        if note:
            process.create_dataset("note", data=note)
        # ptychodus' namespace: what its reader needs to place the object and positions
        h, w = object_.shape
        extra = {"probe_position_indexes": np.arange(len(pos), dtype=np.int64),
                 "probe_pixel_width_m": pixel_size_m, "probe_pixel_height_m": pixel_size_m,
                 "object_pixel_width_m": pixel_size_m, "object_pixel_height_m": pixel_size_m,
                 # ptychodus maps x to pixel (x - centre) / px + width / 2; ours to
                 # origin + x / px: the same when centre = (width / 2 - origin) * px
                 "object_center_x_m": (w / 2 - origin_px[1]) * pixel_size_m,
                 "object_center_y_m": (h / 2 - origin_px[0]) * pixel_size_m}
        if len(errors):
            extra["loss_epochs"] = np.arange(len(errors), dtype=np.int64)
            extra["loss_values"] = np.asarray(errors, np.float64)
        pt = entry.create_group("ptychodus")
        for name, v in extra.items():
            pt.create_dataset(name, data=v)
    return final
