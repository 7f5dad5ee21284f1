"""The ophyd and ophyd-async devices are declared field by field; the PV table says what
they must hold: every control PV, under its attribute name, writable exactly when the PV
is, of the PV's type, and nothing else.
"""

from __future__ import annotations

import typing
from typing import Any

import numpy as np
import pytest
from ophyd import EpicsSignal, EpicsSignalRO, Kind
from ophyd_async.core import Array1D, SignalR, SignalRW, StrictEnum
from ophyd_async.epics.core import PvSuffix

from ptychoflow.ioc.devices import WorkflowDevice
from ptychoflow.ioc.devices_async import WorkflowAsync
from ptychoflow.pvnames import CONTROL, PVSpec, attr_name


def _python_type(spec: PVSpec) -> Any:
    return {"ai": float, "ao": float, "longin": int, "longout": int,
            "waveform": Array1D[np.float32]}.get(spec.record, str)


def test_the_ophyd_device_has_one_component_per_control_pv():
    assert list(WorkflowDevice.component_names) == [attr_name(s.suffix) for s in CONTROL]
    for spec in CONTROL:
        cpt = getattr(WorkflowDevice, attr_name(spec.suffix))
        assert cpt.suffix == spec.suffix
        assert cpt.cls is (EpicsSignal if spec.access == "W" else EpicsSignalRO), spec.suffix
        # put_complete: a plan learns of a refusal when set() ends, not by waiting forever
        assert cpt.kwargs.get("put_complete", False) is (spec.access == "W"), spec.suffix
        assert cpt.kwargs.get("string", False) is (spec.record in ("lso", "lsi")), spec.suffix
        kind = (Kind.config if spec.autosave
                else Kind.hinted if spec is CONTROL.workflow_state else Kind.normal)
        assert cpt.kind == kind, spec.suffix


def test_the_ophyd_async_device_has_one_typed_field_per_control_pv():
    hints = typing.get_type_hints(WorkflowAsync, include_extras=True)
    fields = {name: hint for name, hint in hints.items()
              if typing.get_origin(hint) is typing.Annotated}
    assert list(fields) == [attr_name(s.suffix) for s in CONTROL]
    for spec in CONTROL:
        signal, *extras = typing.get_args(fields[attr_name(spec.suffix)])
        assert extras == [PvSuffix(spec.suffix)]
        assert typing.get_origin(signal) is (SignalRW if spec.access == "W" else SignalR)
        (datatype,) = typing.get_args(signal)
        if spec.enums:
            assert issubclass(datatype, StrictEnum), spec.suffix
            assert [e.value for e in datatype] == list(spec.enums), spec.suffix
        else:
            assert datatype == _python_type(spec), spec.suffix


def test_the_ophyd_async_signals_address_the_table_pvs_over_pva():
    device = WorkflowAsync("T1:")
    for spec in CONTROL:
        sig = getattr(device, attr_name(spec.suffix))
        assert type(sig) is (SignalRW if spec.access == "W" else SignalR)
        assert sig.source == "pva://" + spec.name("T1:")
    assert device.signals == {s.suffix: getattr(device, attr_name(s.suffix)) for s in CONTROL}


@pytest.mark.parametrize("spec", [s for s in CONTROL if s.enums], ids=lambda s: s.suffix)
def test_an_enum_names_its_states_as_the_ioc_serves_them(spec: PVSpec):
    device = WorkflowAsync("T1:")
    datatype = getattr(device, attr_name(spec.suffix))._connector.backend.datatype
    assert tuple(e.value for e in datatype) == spec.enums
