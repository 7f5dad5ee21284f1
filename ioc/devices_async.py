"""An ophyd-async device (pvAccess) for the workflow, built from the PV table.

Signals use ``pva://`` PVs; enum PVs get a :class:`StrictEnum` made from the
same state strings the IOC serves, so a wrong state name fails on connect
rather than at the beamline.
"""

from __future__ import annotations

import re
from typing import Any

from ophyd_async.core import Device, SignalR, SignalRW, StrictEnum
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from ptychoflow.ioc.naming import attr_name
from ptychoflow.pvnames import CONTROL, PVSpec


def _enum(spec: PVSpec) -> type[StrictEnum]:
    name = attr_name(spec.suffix).title().replace("_", "")
    members = [(re.sub(r"\W", "_", s).upper(), s) for s in spec.enums]
    return StrictEnum(name, members)  # type: ignore[call-arg,return-value]


def _datatype(spec: PVSpec) -> Any:
    if spec.enums:
        return _enum(spec)
    if spec.record in ("ai", "ao"):
        return float
    if spec.record in ("longin", "longout"):
        return int
    return str


class WorkflowAsync(Device):
    """The ptychoflow control IOC over pvAccess (ophyd-async)."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.signals: dict[str, SignalR[Any]] = {}
        for spec in CONTROL:
            pv = f"pva://{prefix}{spec.suffix}"
            sig: SignalR[Any] | SignalRW[Any] = (
                epics_signal_rw(_datatype(spec), pv) if spec.access == "W"
                else epics_signal_r(_datatype(spec), pv))
            setattr(self, attr_name(spec.suffix), sig)
            self.signals[spec.suffix] = sig
        super().__init__(name=name)
