"""The control IOC's records, built from :data:`ptychoflow.pvnames.CONTROL`.

:func:`record_fields` is the one mapping from a :class:`PVSpec` to EPICS record
fields. The running IOC builds its pythonSoftIOC records from it and
:func:`database_text` writes the same fields as ``db/ptychoflow.db``
(``python -m ptychoflow.ioc.records > db/ptychoflow.db``), so the record
database in the repository is the interface the IOC serves (a system test reads
the fields back over CA and compares).

Drive limits are published as ``LOPR``/``HOPR`` (which CA clients see as the
control limits) and not as ``DRVL``/``DRVH``: those would clamp an
out-of-range put and accept it, while the IOC must refuse it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ptychoflow.pvnames import CONTROL, PVSpec

MBB_PREFIXES = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV",
                "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
EPICS_TYPE = {"lso": "waveform", "lsi": "waveform"}
READONLY_ASG = "READONLY"


def string_nelm(spec: PVSpec) -> int:
    """Element count of a long-string record: room for one character more than allowed.

    A CA client that sends a longer string is truncated by the server to NELM;
    the extra slot lets the IOC see that the string was too long and refuse it
    instead of storing a silently shortened path.
    """
    return spec.length + 2


def _num(x: float) -> str:
    """A number as EPICS db syntax accepts it (no ``1e+06``)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def record_fields(spec: PVSpec) -> dict[str, str]:
    """EPICS fields (DESC, EGU, limits, states...) of one control PV, as strings."""
    f: dict[str, str] = {"DESC": spec.desc[:39]}  # DESC holds 40 bytes with the NUL
    kind = spec.record
    if kind in ("ai", "ao", "longin", "longout"):
        if spec.egu:
            f["EGU"] = spec.egu
        if kind in ("ai", "ao"):
            f["PREC"] = str(spec.prec)
        if spec.low is not None and spec.high is not None:
            f["LOPR"] = _num(spec.low)
            f["HOPR"] = _num(spec.high)
    elif kind in ("bi", "bo"):
        f["ZNAM"], f["ONAM"] = spec.enums
    elif kind in ("mbbi", "mbbo"):
        for i, state in enumerate(spec.enums):
            f[f"{MBB_PREFIXES[i]}ST"] = state
            f[f"{MBB_PREFIXES[i]}VL"] = str(i)
    elif kind in ("lsi", "lso"):
        f["NELM"] = str(string_nelm(spec))
        f["FTVL"] = "CHAR"
    elif kind == "waveform":  # a float image, NDStdArrays style (sizes in their own PVs)
        f["NELM"] = str(spec.length)
        f["FTVL"] = "FLOAT"
        if spec.egu:
            f["EGU"] = spec.egu
    else:
        raise ValueError(f"{spec.suffix}: record type {kind} is not a control record")
    if spec.access == "R":
        f["ASG"] = READONLY_ASG
    return f


def database_text(table: tuple[PVSpec, ...] = CONTROL) -> str:
    """The record database of the control interface, with ``$(P)`` as prefix."""
    out = ["# ptychoflow control IOC record database.",
           "# Generated from ptychoflow/pvnames.py CONTROL by",
           "#   python -m ptychoflow.ioc.records > db/ptychoflow.db",
           "# The IOC (pythonSoftIOC) serves these records over CA and PVA and adds its",
           "# own device support fields (DTYP/INP/OUT/SCAN). Do not edit by hand.", ""]
    for spec in table:
        out.append(f'record({EPICS_TYPE.get(spec.record, spec.record)}, "$(P){spec.suffix}") {{')
        for key, value in record_fields(spec).items():
            out.append(f'    field({key}, "{value}")')
        if spec.record in ("lsi", "lso"):
            out.append('    info(Q:form, "String")')
        if spec.autosave:
            out.append('    info(autosaveFields, "VAL")')
        out.append("}")
    return "\n".join(out) + "\n"


def autosave_request(table: tuple[PVSpec, ...] = CONTROL) -> str:
    """The autosave request file: the settings that survive a restart."""
    lines = ["# ptychoflow control IOC: settings restored at start (autosave request).",
             "# Generated from ptychoflow/pvnames.py CONTROL (autosave=True)."]
    lines += [f"$(P){s.suffix}" for s in table if s.autosave]
    return "\n".join(lines) + "\n"


Validator = Callable[[PVSpec, Any], bool]
Updater = Callable[[Any], Any]


def create_records(prefix: str, initial: dict[str, Any], validate: Validator,
                   on_update: dict[str, Updater],
                   always_update: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Create the softioc records (before ``LoadDatabase``); returns them by suffix.

    ``validate(spec, value)`` decides every client put of a writable PV.
    """
    from softioc import builder

    records: dict[str, Any] = {}
    for spec in CONTROL:
        name = spec.name(prefix)
        fields: dict[str, Any] = record_fields(spec)
        value = initial.get(spec.suffix, spec.initial)
        kind = spec.record
        if spec.access == "W":
            fields["validate"] = (lambda s: lambda _rec, v: validate(s, v))(spec)
            fields["always_update"] = spec.suffix in always_update
            if spec.suffix in on_update:
                fields["on_update"] = on_update[spec.suffix]
        if kind in ("lsi", "lso"):
            del fields["NELM"], fields["FTVL"]
            make = builder.longStringIn if kind == "lsi" else builder.longStringOut
            rec = make(name, initial_value=str(value), length=string_nelm(spec), **fields)
        elif kind == "waveform":
            del fields["NELM"], fields["FTVL"]
            rec = builder.WaveformIn(name, length=spec.length, datatype=np.float32,
                                     initial_value=np.zeros(1, np.float32), **fields)
        else:
            make = {"ai": builder.aIn, "ao": builder.aOut, "bi": builder.boolIn,
                    "bo": builder.boolOut, "mbbi": builder.mbbIn, "mbbo": builder.mbbOut,
                    "longin": builder.longIn, "longout": builder.longOut}[kind]
            cast = float if kind in ("ai", "ao") else int
            rec = make(name, initial_value=cast(value), **fields)
        records[spec.suffix] = rec
    return records


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "db"
    sys.stdout.write(autosave_request() if what == "req" else database_text())
