"""Bluesky plans for the workflow; they work with the ophyd (CA) and the ophyd-async (PVA) device.

``process_scan`` is what a beamline scan plan calls after it wrote a scan file:
apply settings, point ``Scan:Path`` at the file, start, and wait for the run
to end. A refused setting or start, and a run that ends Failed or Aborted,
raise :class:`WorkflowError` carrying the IOC's own ``Message_RBV`` text.

``record_edge_map`` is the edge's: arm it, acquire one scan with the detector
simulator, and record the stitched map of that scan in one event.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from os import PathLike
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg

from ptychoflow.ioc.naming import spec_for
from ptychoflow.pvnames import CONTROL, PVSpec, attr_name

if TYPE_CHECKING:
    from ptychoflow.ioc.devices_edge import EdgeDetector, SimDetector

Plan = Generator[Msg, Any, Any]


class WorkflowError(RuntimeError):
    """The IOC refused a request, or a run ended Failed or Aborted."""


def _index(spec: PVSpec, value: Any) -> Any:
    """Enum values as state indexes (ophyd reads ints, ophyd-async reads names)."""
    if not spec.enums:
        return value
    if isinstance(value, str):
        return spec.enums.index(str(getattr(value, "value", value)))
    return int(value)


def _name(spec: PVSpec, value: Any) -> Any:
    if spec.enums and not isinstance(value, str):
        return spec.enums[int(value)]
    return value


def _read(workflow: Any, spec: PVSpec) -> Plan:
    value = yield from bps.rd(getattr(workflow, attr_name(spec.suffix)))
    return _index(spec, value)


def _message(workflow: Any) -> Plan:
    text = yield from _read(workflow, CONTROL.workflow_message)
    return str(text)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def set_setting(workflow: Any, key: str, value: Any) -> Plan:
    """Set one writable PV (by attribute name or suffix) and make sure the IOC took it."""
    spec = spec_for(key)
    if spec.access != "W":
        raise WorkflowError(f"{spec.suffix} is read-only")
    sig = getattr(workflow, attr_name(spec.suffix))
    try:
        yield from bps.mv(sig, _name(spec, value))
    except Exception as exc:
        msg = yield from _message(workflow)
        raise WorkflowError(f"{spec.suffix} = {value!r} refused: {msg or exc}") from exc
    got = yield from _read(workflow, spec)
    if not _same(got, _index(spec, _name(spec, value))):
        msg = yield from _message(workflow)
        raise WorkflowError(f"{spec.suffix} = {value!r} refused: {msg}")


def process_scan(workflow: Any, path: str | PathLike[str], *, timeout: float | None = None,
                 poll_s: float = 0.1, **settings: Any) -> Plan:
    """Process one scan file with the workflow; returns ``{run_id, state, message}``.

    ``settings`` name writable PVs by attribute (``recon_epochs=20``) or
    suffix; enum settings take the state name or its index.
    """
    for key, value in settings.items():
        yield from set_setting(workflow, key, value)
    start = CONTROL.workflow_start
    yield from set_setting(workflow, CONTROL.scan_path.suffix, str(path))
    before = yield from _read(workflow, CONTROL.workflow_run_id)
    try:
        yield from bps.mv(workflow.workflow_start, "Start")
    except Exception as exc:
        msg = yield from _message(workflow)
        raise WorkflowError(f"{start.suffix} refused: {msg or exc}") from exc
    run = yield from _read(workflow, CONTROL.workflow_run_id)
    started = yield from _read(workflow, start)
    msg = yield from _message(workflow)
    if run == before and (started == 0 or msg.startswith(f"Refused: {start.suffix}")):
        raise WorkflowError(f"{start.suffix} refused: {msg}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = yield from _read(workflow, CONTROL.workflow_run_id)
        busy = yield from _read(workflow, CONTROL.workflow_busy)
        if run > before and busy == 0:
            break
        if deadline is not None and time.monotonic() > deadline:
            msg = yield from _message(workflow)
            raise WorkflowError(f"run did not end within {timeout} s; last message: {msg}")
        yield from bps.sleep(poll_s)
    state = CONTROL.workflow_state.enums[(yield from _read(workflow, CONTROL.workflow_state))]
    msg = yield from _message(workflow)
    if state != "Done":
        raise WorkflowError(f"run {run} ended {state}: {msg}")
    return {"run_id": run, "state": state, "message": msg}


def record_edge_map(edge: EdgeDetector, detector: SimDetector, *, rate: float | None = None,
                    settle_s: float = 30.0, poll_s: float = 0.1,
                    md: dict[str, Any] | None = None) -> Plan:
    """One run, one event: the edge's map of one acquisition; returns ``{frames, caught_up}``.

    Stages both devices (a new map, counters from zero), sets the simulator's
    frame rate when ``rate`` is given, starts an acquisition
    (``cam1:Acquire`` = 1) and waits until the simulator puts it back to 0,
    then waits up to ``settle_s`` seconds for the edge to deal with every frame
    sent (:meth:`~ptychoflow.ioc.devices_edge.EdgeDetector.wait_caught_up`) and
    records one event with the map, its pixel size and origin, the edge's
    counters for the scan and the frames the simulator sent. An edge that did
    not catch up still gets its event (a map of most of a scan beats none):
    ``caught_up`` is then False and the counters say what is missing. The
    edge must already follow the simulator's image PV (``Edge:Input``).
    Aborting the plan stops the acquisition (``unstage``).
    """
    result: dict[str, Any] = {}

    @bpp.stage_decorator([edge, detector])
    @bpp.run_decorator(md={"plan_name": "record_edge_map", **(md or {})})
    def inner() -> Plan:
        if rate is not None:
            yield from bps.mv(detector.cam1_acquire_rate, rate)
        yield from bps.mv(detector.cam1_acquire, 1)
        while (yield from bps.rd(detector.cam1_acquire)):
            yield from bps.sleep(poll_s)
        frames = int((yield from bps.rd(detector.cam1_array_counter)))
        (done,) = yield from bps.wait_for([lambda: edge.wait_caught_up(frames, settle_s, poll_s)])
        yield from bps.trigger_and_read([edge, detector])
        result.update(frames=frames, caught_up=bool(done.result()))

    yield from inner()  # returns the run's uid, not what the run found
    return result
