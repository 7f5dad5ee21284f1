"""Python attribute names for the control PVs, shared by the ophyd and ophyd-async devices.

``Workflow:State_RBV`` → ``workflow_state``, ``Train:ValFraction`` →
``train_val_fraction``: the suffix without ``_RBV``, each part in snake case,
so a device reads like the PV table and plans can name settings either way.
"""

from __future__ import annotations

import re

from ptychoflow.pvnames import CONTROL, PVSpec


def attr_name(suffix: str) -> str:
    """The device attribute of a control PV suffix."""
    parts = suffix.removesuffix("_RBV").split(":")
    return "_".join(re.sub(r"(?<!^)(?=[A-Z])", "_", p).lower() for p in parts)


ATTRS: dict[str, PVSpec] = {attr_name(s.suffix): s for s in CONTROL}
assert len(ATTRS) == len(CONTROL), "two control PVs map to one attribute name"


def spec_for(key: str) -> PVSpec:
    """The spec for an attribute name or a PV suffix; the error lists the choices."""
    if key in ATTRS:
        return ATTRS[key]
    for spec in CONTROL:
        if spec.suffix == key:
            return spec
    raise KeyError(f"{key!r} is not a control PV; choose one of {sorted(ATTRS)}")
