"""Control PVs by device attribute name, for plans that name a setting either way.

The rule (``Workflow:State_RBV`` → ``workflow_state``) is
:func:`ptychoflow.pvnames.attr_name`, which also names the attributes of
:data:`~ptychoflow.pvnames.CONTROL` itself, so ``CONTROL.workflow_state``, the
devices' ``workflow.workflow_state`` and a plan's ``workflow_state=`` agree.
"""

from __future__ import annotations

from ptychoflow.pvnames import CONTROL, PVSpec, attr_name

__all__ = ["ATTRS", "attr_name", "spec_for"]

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
