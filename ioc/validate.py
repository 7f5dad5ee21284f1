"""What each writable control PV accepts, as pure functions (no EPICS here).

pythonSoftIOC's ``DRVL``/``DRVH`` would silently clamp an out-of-range put and
accept it; the IOC instead refuses the put and keeps the old value, so every
rule lives here and the records' ``validate=`` callbacks call it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ptychoflow.chunks import complete_chunks, is_stream_folder, scan_stem
from ptychoflow.formats import check_scan_file
from ptychoflow.pvnames import CONTROL, PVSpec
from ptychoflow.scanfile import ScanFileError


def check_value(spec: PVSpec, value: Any) -> str | None:
    """``None`` if ``value`` is acceptable for ``spec``, else why not (with the fix)."""
    kind = spec.record
    if kind in ("bo", "mbbo"):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{spec.suffix}: {value!r} is not a state index"
        if not 0 <= value < len(spec.enums):
            return (f"{spec.suffix}: {value} is not a valid state; choose one of "
                    + ", ".join(f"{i}={s}" for i, s in enumerate(spec.enums)))
        return None
    if kind in ("longout", "ao"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{spec.suffix}: {value!r} is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{spec.suffix}: {value} is not a finite number"
        if kind == "longout" and value != int(value):
            return f"{spec.suffix}: {value} is not a whole number"
        lo, hi = spec.low, spec.high
        if lo is not None and hi is not None and not lo <= value <= hi:
            return f"{spec.suffix}: {value:g} is out of range; allowed {lo:g} to {hi:g}"
        return None
    if kind == "lso":
        if not isinstance(value, str):
            return f"{spec.suffix}: {value!r} is not a string"
        if len(value) > spec.length:
            return (f"{spec.suffix}: {len(value)} characters is too long; "
                    f"at most {spec.length}")
        if any(ord(c) < 32 for c in value):
            return f"{spec.suffix}: control characters are not allowed"
        return None
    return f"{spec.suffix} is read-only"


def check_scan_path(path: str, data_root: Path) -> str | None:
    """``None`` if ``path`` names a complete scan file under ``data_root`` (or is empty),
    or the ``NAME.stream`` folder of a scan being acquired in chunks.

    Containment is judged on the real path, so neither ``..`` nor a symlink can
    point the workflow at a file outside the data root. The file must be of a
    layout :mod:`ptychoflow.formats` reads (told from its HDF5 structure, else its
    name), with the files that layout needs besides it (a Velociprobe master
    file's data and positions files); its frames are read only by the run.
    """
    if path == "":
        return None
    name = CONTROL.scan_path.suffix
    hint = f"; set data_root in the [ioc] configuration or --data-root (now {data_root})"
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = data_root / candidate
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError) as exc:
        return f"{name} {path!r} cannot be resolved: {exc}"
    root = Path(os.path.realpath(data_root))
    if not real.is_relative_to(root):
        return f"{name} {path} is outside the data root {root}{hint}"
    if path.endswith(".part"):
        return f"{name} {path} is still being written (.part); wait until it is renamed"
    if is_stream_folder(real):  # a scan being acquired in chunks: judged by its first one
        first = complete_chunks(real, scan_stem(real)).get(1)
        if first is None:
            return (f"{name} {path} holds no complete first chunk yet; wait for it or give "
                    "the scan file")
        real = first
    if not real.is_file():
        return f"{name} {path} does not exist or is not a file"
    try:
        check_scan_file(real)
    except ScanFileError as exc:
        return f"{name} {path}: {exc.problem}"
    return None


def resolve_scan_path(path: str, data_root: Path) -> Path:
    """The absolute real path of an accepted ``Scan:Path`` value."""
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = data_root / candidate
    return Path(os.path.realpath(candidate))
