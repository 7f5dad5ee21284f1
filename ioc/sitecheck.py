"""Is the compute site able to run what this host sends it?

Stages travel as pickled references to ptychoflow's functions and their
arguments: a site on another Python minor version, another ptychoflow or
another NumPy major version fails to unpickle them, minutes into a run. The IOC
asks the site once (:func:`ptychoflow.remote.sitecheck.site_report`, run through
the back end itself) before the first run on a back end and refuses with the
list of what differs; ``ptychoflow remote check`` shows the same list by hand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from ptychoflow.remote.sitecheck import site_report


@dataclass(frozen=True)
class Difference:
    """One way the site differs from this host."""

    what: str
    here: Any
    there: Any
    breaking: bool

    def __str__(self) -> str:
        mark = " (breaks unpickling)" if self.breaking else ""
        return f"{self.what}: here {self.here}, there {self.there}{mark}"


def _minor(version: Any) -> str:
    return ".".join(str(version).split(".")[:2]) if version else str(version)


def _major(version: Any) -> str:
    return str(version).split(".")[0] if version else str(version)


def differences(here: dict[str, Any], there: dict[str, Any]) -> list[Difference]:
    """What differs, breaking differences first."""
    out = []
    if here["python"] != there.get("python"):
        out.append(Difference("python", here["python"], there.get("python"),
                              _minor(here["python"]) != _minor(there.get("python"))))
    theirs = there.get("packages") or {}
    for name, mine in here["packages"].items():
        other = theirs.get(name)
        if mine == other:
            continue
        breaking = (name == "ptychoflow" or (name == "numpy" and _major(mine) != _major(other))
                    or (name in ("torch", "ptychi") and other is None))
        out.append(Difference(name, mine, other, breaking))
    return sorted(out, key=lambda d: not d.breaking)


def check_site(compute: Any, timeout: float = 300.0) -> tuple[dict[str, Any], list[Difference]]:
    """Run the report on ``compute`` (started) and compare it with this host."""
    there = compute.submit(site_report, "", "", {}, None).result(timeout)
    return there, differences(site_report(), there)


def refusal(compute_name: str, diffs: list[Difference]) -> str | None:
    """The Start refusal for breaking differences, or ``None``."""
    breaking = [str(d) for d in diffs if d.breaking]
    if not breaking:
        return None
    return (f"the {compute_name} compute site cannot run this host's stages: "
            + "; ".join(breaking) + "; install the same versions there (ptychoflow remote "
            f"check --backend {compute_name.lower()} lists them)")


def main(args: argparse.Namespace) -> int:
    """``ptychoflow remote check``: print the site's report and what differs."""
    from ptychoflow.config import load_file, resolve
    from ptychoflow.ioc.compute import COMPUTES, table_of
    from ptychoflow.ioc.settings import IocSettings

    name = {"parsl": "Parsl", "globus-compute": "GlobusCompute"}[args.backend]
    tables = load_file(getattr(args, "config", None))
    settings = resolve(IocSettings, "ioc", None, tables)
    cls = COMPUTES[name]
    compute = cls(settings, table_of(tables, *cls.section.split(".")))
    compute.check()
    compute.start()
    try:
        there, diffs = check_site(compute, args.timeout)
    finally:
        compute.shutdown()
    if args.json:
        print(json.dumps({"site": there, "differences": [d.__dict__ for d in diffs]}))
    else:
        print(f"{name} site {there.get('host')}: Python {there.get('python')}, "
              f"{there.get('cpus')} CPUs, devices {', '.join(there.get('devices') or [])}")
        for line in [str(d) for d in diffs] or ["the same Python and packages as this host"]:
            print(f"  {line}")
    return 1 if refusal(name, diffs) else 0
