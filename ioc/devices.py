"""An ophyd ``Device`` (Channel Access) for the workflow, built from the PV table.

Writable signals use ``put_complete=True``: their ``set`` finishes when the IOC
has processed the put, so a plan can read the value back and find a refusal
(over CA the IOC restores the old value and explains why in ``Message_RBV``)
instead of waiting forever for a read-back that will never come.
"""

from __future__ import annotations

from typing import Any

from ophyd import Component, Device, EpicsSignal, EpicsSignalRO, Kind

from ptychoflow.ioc.naming import attr_name
from ptychoflow.pvnames import CONTROL, PVSpec


def _component(spec: PVSpec) -> Component:
    kw: dict[str, Any] = {"string": spec.record in ("lso", "lsi")}
    if spec.autosave:
        kw["kind"] = Kind.config
    elif spec.suffix == "Workflow:State_RBV":
        kw["kind"] = Kind.hinted
    if spec.access == "W":
        return Component(EpicsSignal, spec.suffix, put_complete=True, **kw)
    return Component(EpicsSignalRO, spec.suffix, **kw)


WorkflowDevice: type[Device] = type(
    "WorkflowDevice", (Device,),
    {"__doc__": "The ptychoflow control IOC over Channel Access (ophyd).",
     **{attr_name(s.suffix): _component(s) for s in CONTROL}})


def workflow_device(prefix: str, name: str = "workflow", **kwargs: Any) -> Device:
    """The workflow device for the IOC serving ``prefix`` (e.g. ``PTYCHO:``)."""
    return WorkflowDevice(prefix, name=name, **kwargs)
