"""ophyd-async devices (pvAccess) for the edge and the detector simulator, for Bluesky plans.

Both are declared PV by PV from the tables: :class:`EdgeDetector` has one typed
field per :data:`~ptychoflow.pvnames.EDGE` PV, :class:`SimDetector` one per
:data:`~ptychoflow.pvnames.DETECTOR` PV, named as the table names them, and
``tests/unit/test_devices_edge.py`` checks them against the tables.

The edge is a live detector: it turns every frame that reaches it into a phase
image and a stitched map whether or not a plan asks. So :class:`EdgeDetector`
is armed, not triggered: ``stage()`` starts a new map (a put to
``Edge:Stitched:Reset``) and notes the frame counters, ``trigger()`` returns
at once, and ``read()`` gives the map as it stands with its pixel size and
origin, the counters since ``stage()`` and the serving model's version. A
plan that wants the map of a whole scan waits for the edge to catch up
(:meth:`EdgeDetector.wait_caught_up`) before it reads, as
:func:`ptychoflow.ioc.plans.record_edge_map` does.

ophyd-async's NTNDArray signals give the image but not its attributes (its
pvAccess request asks for ``value`` and ``dimension`` only), and the map's
pixel size and origin must describe the very image they come with. So the map
is read with one pvAccess get of the whole NTNDArray, decoded by
:func:`ptychoflow.ntnda.read_frame` like every other consumer of edge images.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Annotated as A
from typing import Any, Protocol

import numpy as np
from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import (
    AsyncStatus,
    SignalMetadata,
    SignalR,
    SignalRW,
    StandardReadable,
    make_datakey,
)
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import EpicsDevice, PvSuffix

from ptychoflow.ntnda import Frame, read_frame
from ptychoflow.pvnames import DETECTOR, EDGE, PVSpec

#: The counters a reading reports per scan (counted from ``stage()``).
COUNTERS: tuple[PVSpec, ...] = (EDGE.processed, EDGE.missed, EDGE.dropped, EDGE.bad_frames,
                                EDGE.unplaced)
#: The stitched map's NDAttributes (set by the edge's publisher) and their reading keys.
MAP_ATTRIBUTES = {"PixelSize": ("pixel_size", float, "m"),
                  "OriginX": ("origin_x", float, "m"),
                  "OriginY": ("origin_y", float, "m"),
                  "Frames": ("frames", int, "")}


class PvaGetter(Protocol):
    """What the device needs of a pvAccess client: p4p's asyncio ``Context`` (``nt=False``)."""

    def get(self, name: str, request: str | None = None) -> Awaitable[Any]:
        """The PV's current value (p4p's ``Value``)."""
        ...


_FIELDS = {spec.suffix: field for field, spec in EDGE._asdict().items()}


def _pv(signal: SignalR[Any]) -> str:
    """The PV a declared signal reads: its source without the ``pva://`` protocol."""
    return signal.source.split("://", 1)[-1]


def _units(units: str) -> SignalMetadata:
    return SignalMetadata(units=units) if units else SignalMetadata()


class EdgeDetector(EpicsDevice, StandardReadable):
    """The edge service (``ptychoflow edge``) as a Bluesky detector over pvAccess.

    ``read()`` holds, under ``{name}-stitched``, the stitched phase map as a 2-D
    float32 array (``describe()``: ``dtype`` "array", ``shape`` [rows, cols]);
    ``{name}-stitched_pixel_size``, ``_origin_x``, ``_origin_y`` (metres, the
    map's first pixel) and ``_frames`` (frames on the map) from its attributes;
    the counters of :data:`COUNTERS` since ``stage()`` (totals when not staged);
    and ``{name}-model_version``. ``Edge:Input`` is its configuration.

    ``context`` is the pvAccess client the map is read with; by default a p4p
    asyncio ``Context`` made from the process's EPICS variables at first use,
    as ophyd-async makes its own.
    """

    phase: A[SignalR[np.ndarray], PvSuffix(EDGE.phase.suffix)]
    amplitude: A[SignalR[np.ndarray], PvSuffix(EDGE.amplitude.suffix)]
    stitched: A[SignalR[np.ndarray], PvSuffix(EDGE.stitched.suffix)]
    stitched_reset: A[SignalRW[int], PvSuffix(EDGE.stitched_reset.suffix)]
    enable: A[SignalRW[int], PvSuffix(EDGE.enable.suffix)]
    input: A[SignalRW[str], PvSuffix(EDGE.input.suffix), Format.CONFIG_SIGNAL]
    model_load: A[SignalRW[str], PvSuffix(EDGE.model_load.suffix)]
    model_version: A[SignalR[int], PvSuffix(EDGE.model_version.suffix), Format.UNCACHED_SIGNAL]
    frame_rate: A[SignalR[float], PvSuffix(EDGE.frame_rate.suffix)]
    latency: A[SignalR[float], PvSuffix(EDGE.latency.suffix)]
    processed: A[SignalR[int], PvSuffix(EDGE.processed.suffix)]
    missed: A[SignalR[int], PvSuffix(EDGE.missed.suffix)]
    dropped: A[SignalR[int], PvSuffix(EDGE.dropped.suffix)]
    bad_frames: A[SignalR[int], PvSuffix(EDGE.bad_frames.suffix)]
    unplaced: A[SignalR[int], PvSuffix(EDGE.unplaced.suffix)]
    consistency: A[SignalR[float], PvSuffix(EDGE.consistency.suffix)]
    message: A[SignalR[str], PvSuffix(EDGE.message.suffix)]

    def __init__(self, prefix: str, name: str = "", context: PvaGetter | None = None) -> None:
        self._context = context
        self._at_stage: dict[str, int] = {}
        self._shape: tuple[int, ...] | None = None  # of the map last read, for describe()
        super().__init__(prefix=f"pva://{prefix}", name=name)

    # ---- arming ------------------------------------------------------------------------
    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Start a new map and count frames from here.

        The edge applies the reset before it places the next frame, so every frame
        that arrives after ``stage()`` returns is on the new map.
        """
        await super().stage()
        await self.stitched_reset.set(1)
        self._at_stage = await self._totals()

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        """Report totals again: the counters are no longer those of one scan."""
        await super().unstage()
        self._at_stage = {}

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Complete at once: the edge runs continuously, a read takes the map as it stands."""

    # ---- what a scan has done ----------------------------------------------------------
    def _counters(self) -> list[SignalR[int]]:
        return [getattr(self, _FIELDS[spec.suffix]) for spec in COUNTERS]

    async def _totals(self) -> dict[str, int]:
        values = await asyncio.gather(*(s.get_value() for s in self._counters()))
        return {s.name: int(v) for s, v in zip(self._counters(), values, strict=True)}

    async def counts(self) -> dict[str, int]:
        """The counters since ``stage()`` by signal name (``edge-processed``...)."""
        totals = await self._totals()
        return {k: v - self._at_stage.get(k, 0) for k, v in totals.items()}

    async def wait_caught_up(self, frames: int, timeout: float, poll_s: float = 0.1) -> bool:
        """Wait until the edge has dealt with ``frames`` frames since ``stage()``; whether it did.

        Dealt with: processed, or counted as missed, dropped or bad; and the map
        published after the last of them (its ``uniqueId`` is the latest
        prediction's). The edge posts its counters twice a second and the map
        at most ten times a second, so this takes up to about half a second
        after the last frame. ``False`` after ``timeout`` seconds: frames lost
        at the end of a scan are never counted (no later frame shows the gap),
        and a map stays behind when the edge has no pixel size to stitch with.
        """
        deadline = time.monotonic() + timeout
        while True:
            counts = await self.counts()
            accounted = sum(counts[s.name] for s in
                            (self.processed, self.missed, self.dropped, self.bad_frames))
            if accounted >= frames and await self._map_is_current():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)

    async def _map_is_current(self) -> bool:
        request = "field(uniqueId)"
        phase, stitched = await asyncio.gather(self._get(_pv(self.phase), request),
                                               self._get(_pv(self.stitched), request))
        return int(phase["uniqueId"]) == int(stitched["uniqueId"])

    # ---- the map -----------------------------------------------------------------------
    async def _get(self, pv: str, request: str | None = None) -> Any:
        if self._context is None:
            from p4p.client.asyncio import Context

            self._context = Context("pva", nt=False)
        return await self._context.get(pv, request=request)

    async def read_map(self) -> Frame:
        """The stitched map with its attributes, from one get of ``Edge:Stitched``."""
        frame = read_frame(await self._get(_pv(self.stitched)))
        self._shape = frame.array.shape
        return frame

    def _map_key(self, attribute: str = "") -> str:
        if not attribute:
            return self.stitched.name
        return f"{self.stitched.name}_{MAP_ATTRIBUTES[attribute][0]}"

    async def read(self) -> dict[str, Reading]:
        """The map, its pixel size and origin, the counters since ``stage()``, the model."""
        frame, counters, rest = await asyncio.gather(
            self.read_map(), asyncio.gather(*(s.read(cached=False) for s in self._counters())),
            super().read())
        stamp = frame.timestamp if frame.timestamp > 0 else time.time()
        out: dict[str, Reading] = {self._map_key(): Reading(value=frame.array, timestamp=stamp)}
        for attribute, (_, kind, _) in MAP_ATTRIBUTES.items():
            value = kind(frame.attributes.get(attribute, 0))
            out[self._map_key(attribute)] = Reading(value=value, timestamp=stamp)
        for reading in counters:
            for key, r in reading.items():
                out[key] = Reading(value=int(r["value"]) - self._at_stage.get(key, 0),
                                   timestamp=r["timestamp"])
        return {**out, **rest}

    async def describe(self) -> dict[str, DataKey]:
        """The keys of :meth:`read`; the map's shape is that of the map last read."""
        if self._shape is None:
            await self.read_map()
        assert self._shape is not None
        source = self.stitched.source
        shape_only = np.zeros(self._shape, np.float32)  # make_datakey wants a value
        out = {self._map_key(): make_datakey(np.ndarray, shape_only, source,
                                             _units(EDGE.stitched.egu))}
        for attribute, (_, kind, units) in MAP_ATTRIBUTES.items():
            out[self._map_key(attribute)] = make_datakey(kind, kind(0), f"{source} {attribute}",
                                                         _units(units))
        counters = await asyncio.gather(*(s.describe() for s in self._counters()))
        for keys in counters:
            out.update(keys)
        return {**out, **(await super().describe())}


class SimDetector(EpicsDevice, StandardReadable):
    """The detector simulator (``ptychoflow sim``) over pvAccess: acquire, rate, counters.

    ``read()`` gives the frames sent by the last acquisition, its measured rate
    and the scan file written; the requested rate is its configuration.
    ``unstage()`` stops an acquisition still running, so a plan that is
    aborted leaves the detector idle (the frames sent so far are saved).
    """

    pva1_image: A[SignalR[np.ndarray], PvSuffix(DETECTOR.pva1_image.suffix)]
    cam1_acquire: A[SignalRW[int], PvSuffix(DETECTOR.cam1_acquire.suffix)]
    cam1_acquire_rate: A[SignalRW[float], PvSuffix(DETECTOR.cam1_acquire_rate.suffix),
                         Format.CONFIG_SIGNAL]
    cam1_array_counter: A[SignalR[int], PvSuffix(DETECTOR.cam1_array_counter.suffix),
                          Format.UNCACHED_SIGNAL]
    cam1_array_rate: A[SignalR[float], PvSuffix(DETECTOR.cam1_array_rate.suffix),
                       Format.UNCACHED_SIGNAL]
    hdf1_full_file_name: A[SignalR[str], PvSuffix(DETECTOR.hdf1_full_file_name.suffix),
                           Format.UNCACHED_SIGNAL]

    def __init__(self, prefix: str, name: str = "") -> None:
        super().__init__(prefix=f"pva://{prefix}", name=name)

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        """Stop any acquisition still running (a put of 0 to an idle detector does nothing)."""
        await super().unstage()
        await self.cam1_acquire.set(0)
