"""Scan files as beamlines write them, all read into one :class:`~ptychoflow.scanfile.Scan`.

:func:`ptychoflow.scanfile.read_scan` hands every path to :func:`read_any`, so
every caller (the remote stages, ``ptychoflow sim --replay``, the IOC) takes
every layout here:

- ``_native`` — ptychoflow's own HDF5 layout (DESIGN.md, "Files");
- ``_cxi`` — CXI (cxidb.org, spec 1.6) as ptychodus, PyNX and CDTools use it;
  :func:`write_cxi` exports a scan;
- ``_velociprobe`` — the APS Velociprobe's Eiger master file, data files and
  positions file, after ptychodus' ``aps33id_velociprobe`` reader;
  :func:`write_velociprobe` writes one (tests, demonstrations);
- ``_cxi_product`` — :func:`write_cxi_reconstruction`: object and probe as
  CXI, in ptychodus' product layout;
- ``_registry`` — :data:`FORMATS` and the dispatch (content first, then name);
- ``_h5`` — units, named errors and atomic ``.part`` writes they all share.

Positions are always ours: (y, x) in metres, relative to the object's centre,
array rows y and columns x; each module says how its layout maps onto that.
"""

from ptychoflow.formats._cxi import write_cxi
from ptychoflow.formats._cxi_product import write_cxi_reconstruction
from ptychoflow.formats._registry import (
    CXI,
    FORMATS,
    NATIVE,
    SCAN_SUFFIXES,
    SIEMENS_STAR,
    VELOCIPROBE,
    ScanFormat,
    check_scan_file,
    detect_format,
    read_any,
)
from ptychoflow.formats._velociprobe import write_velociprobe

__all__ = [
    "CXI",
    "FORMATS",
    "NATIVE",
    "SCAN_SUFFIXES",
    "SIEMENS_STAR",
    "VELOCIPROBE",
    "ScanFormat",
    "check_scan_file",
    "detect_format",
    "read_any",
    "write_cxi",
    "write_cxi_reconstruction",
    "write_velociprobe",
]
