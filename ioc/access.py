"""Access security: everyone reads; only the configured users and hosts write.

The IOC writes an ACF from its settings at start and hands it to EPICS base
(``asSetFilename``) before ``iocInit``; base then enforces it for Channel Access
and pvxs' QSRV enforces the same rules for pvAccess. Read-back records sit in
the ``READONLY`` group so no client can overwrite a status PV.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from ptychoflow.ioc.records import READONLY_ASG


def _quoted(names: Sequence[str]) -> str:
    for n in names:
        if not n or '"' in n or "\\" in n or "\n" in n:
            raise ValueError(f"user or host name {n!r} cannot be used in an ACF")
    return ", ".join(f'"{n}"' for n in names)


def acf_text(writers: Sequence[str] = (), hosts: Sequence[str] = ()) -> str:
    """The access-security file for ``writers`` (users) and ``hosts``; empty = no limit."""
    lines = ["# ptychoflow control IOC access security.",
             "# Generated from the [ioc] settings writers / writer_hosts at IOC start.",
             "# Everyone may read; writing the control PVs needs a listed user on a",
             "# listed host; the read-back PVs are read-only for everyone.", ""]
    conds = []
    if writers:
        lines.append(f"UAG(writers) {{ {_quoted(writers)} }}")
        conds.append("UAG(writers)")
    if hosts:
        lines.append(f"HAG(writer_hosts) {{ {_quoted(hosts)} }}")
        conds.append("HAG(writer_hosts)")
    if conds:
        lines.append("")
    write_rule = "    RULE(1, WRITE)"
    if conds:
        write_rule += " { " + " ".join(conds) + " }"
    lines += ["ASG(DEFAULT) {", "    RULE(1, READ)", write_rule, "}", "",
              f"ASG({READONLY_ASG}) {{", "    RULE(1, READ)", "}"]
    return "\n".join(lines) + "\n"


def write_acf(path: Path, writers: Sequence[str], hosts: Sequence[str]) -> Path:
    """Write the ACF atomically (a half-written ACF would lock everybody out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(acf_text(writers, hosts))
    os.replace(tmp, path)
    return path


def install_acf(path: Path) -> None:
    """Tell EPICS base to load ``path`` at ``iocInit`` (must be called before it)."""
    from epicscorelibs.ioc import dbCore

    fn = dbCore.asSetFilename
    fn.argtypes = (ctypes.c_char_p,)
    fn.restype = ctypes.c_int
    if fn(str(path).encode()) != 0:
        raise RuntimeError(f"EPICS refused the access security file {path}")


EXAMPLE_WRITERS = ("operator",)
EXAMPLE_HOSTS = ("console1.beamline",)

if __name__ == "__main__":
    # db/ptychoflow.acf: the file the IOC writes for writers = ["operator"],
    # writer_hosts = ["console1.beamline"] (python -m ptychoflow.ioc.access > db/ptychoflow.acf)
    import sys

    sys.stdout.write(acf_text(EXAMPLE_WRITERS, EXAMPLE_HOSTS))
