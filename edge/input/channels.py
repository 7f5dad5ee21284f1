"""Scan positions from EPICS channels: two motor readbacks, or one position stream.

Both feed a :class:`~ptychoflow.edge.input.matching.LivePositions`, which
matches them to frames by time or uniqueId (the rules are there).

* **Motor readbacks** (``--position-x-pv``/``--position-y-pv``): two scalar
  PVs such as a motor record's ``.RBV``, each update stamped by its IOC. A
  bare name is read over pvAccess with p4p, the edge's client library (an
  NTScalar: ``value``, ``timeStamp``, ``alarm``); ``ca://NAME`` reads it over
  Channel Access (``pva://NAME`` says pvAccess explicitly).
* **A position stream** (``--position-stream-pv``, pvAccess): each update
  carries one or more rows, an NTTable (or any structure, its columns at the
  top or under ``value``, scalars or arrays) with columns for x and y (names
  configurable, ``PositionX``/``PositionY`` also accepted) and either
  ``uniqueId`` (frames then match exactly by id) or ``timestamp`` (POSIX
  seconds, as the frames' ``dataTimeStamp``). A single-row structure without
  either column is timed by the update's own ``timeStamp``.

A sample whose alarm severity is INVALID, or that carries no time stamp, is
left out and said once in ``Message_RBV``: a readback the IOC itself does not
trust must not place frames.

**Channel Access library: caproto.** p4p speaks pvAccess only (its ``ca``
provider is not built in its wheels), so CA needs a second library. caproto
is pure Python: it installs on any CPU the edge runs on (a Jetson is aarch64,
for which pyepics's wheel carries no ``libca``: it ships x86-64, 32-bit ARM,
macOS and Windows builds only) and loads no second copy of EPICS's libCom
next to the one p4p's pvxs uses. Its threading client subscribes with
``DBR_TIME`` types and hands the time stamp over already converted from the
EPICS epoch (1990) to POSIX seconds. Motor readbacks come at most at a few
kHz, far below what pure-Python CA decodes. It is imported only when a
``ca://`` name is given.

Each lane process runs its own intake and so subscribes to the position
channels itself: two more monitors per lane, cheap beside a lane's frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ptychoflow.edge.input.matching import LivePositions
from ptychoflow.edge.input.monitor import monitor_request

INVALID = 3  # alarm severity: the IOC does not trust the value
SCHEMES = ("pva", "ca")
X_FALLBACK, Y_FALLBACK = "PositionX", "PositionY"
TIME_COLUMN, ID_COLUMN = "timestamp", "uniqueId"
QUEUE_SIZE = 256  # updates the server holds for a position channel while the edge is busy

Sample = tuple[float, float]  # (POSIX time, value)


def split_name(name: str) -> tuple[str, str]:
    """(scheme, bare name) of ``ca://NAME``, ``pva://NAME`` or a bare (pvAccess) name."""
    scheme, sep, bare = name.partition("://")
    if not sep:
        return "pva", name
    if scheme not in SCHEMES or not bare:
        raise ValueError(f"position channel {name!r}: use NAME or pva://NAME (pvAccess), "
                         "or ca://NAME (Channel Access)")
    return scheme, bare


def pva_sample(value: Any) -> Sample | str:
    """(time, value) of an NTScalar update, or why it cannot place frames."""
    try:
        sev = int(value["alarm.severity"])
    except (KeyError, TypeError, ValueError):
        sev = 0
    if sev >= INVALID:
        return "its alarm severity is INVALID"
    try:
        t = (float(value["timeStamp.secondsPastEpoch"])
             + float(value["timeStamp.nanoseconds"]) * 1e-9)
    except (KeyError, TypeError, ValueError):
        t = 0.0
    if t <= 0:
        return "it carries no time stamp"
    try:
        v = float(value["value"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"its value is not one number ({exc})"
    return (t, v) if np.isfinite(v) else f"its value {v} is not finite"


def ca_sample(response: Any) -> Sample | str:
    """(time, value) of a caproto ``DBR_TIME`` subscription response, or why not."""
    meta = response.metadata
    if int(meta.severity) >= INVALID:
        return "its alarm severity is INVALID"
    t = float(meta.timestamp)  # caproto converts the EPICS epoch to POSIX seconds
    if meta.secondsSinceEpoch == 0:
        return "it carries no time stamp"
    try:
        v = float(response.data[0])
    except (IndexError, TypeError, ValueError) as exc:
        return f"its value is not a number ({exc})"
    return (t, v) if np.isfinite(v) else f"its value {v} is not finite"


@dataclass(frozen=True)
class Rows:
    """Rows of a position stream update: x, y and their uniqueIds or POSIX times."""

    xs: np.ndarray
    ys: np.ndarray
    times: np.ndarray | None = None
    ids: np.ndarray | None = None


def _field(container: Any, names: tuple[str, ...]) -> np.ndarray | None:
    for name in names:
        try:
            raw = container[name]
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        return np.atleast_1d(np.asarray(raw, dtype=np.float64))
    return None


def table_rows(value: Any, x_column: str = "x", y_column: str = "y") -> Rows | str:
    """The rows of a stream update (see the module doc), or why it has none usable."""
    container = value
    try:
        inner = value["value"]
        if hasattr(inner, "keys") and (x_column in inner.keys() or X_FALLBACK in inner.keys()):
            container = inner
    except (KeyError, TypeError, ValueError):
        pass
    xs = _field(container, (x_column, X_FALLBACK))
    ys = _field(container, (y_column, Y_FALLBACK))
    if xs is None or ys is None:
        return (f"no {x_column}/{y_column} (or {X_FALLBACK}/{Y_FALLBACK}) columns; "
                "set --position-x-column/--position-y-column")
    ids, times = _field(container, (ID_COLUMN,)), _field(container, (TIME_COLUMN,))
    if ids is None and times is None and xs.size == 1:  # one row: the update's own time
        t = _stamp(value, "secondsPastEpoch") + _stamp(value, "nanoseconds") * 1e-9
        if t <= 0:
            return (f"no {TIME_COLUMN} or {ID_COLUMN} column, and the update carries no "
                    "time stamp")
        times = np.array([t])
    if ids is None and times is None:
        return f"no {TIME_COLUMN} (POSIX seconds) or {ID_COLUMN} column"
    cols = [c for c in (xs, ys, ids, times) if c is not None]
    if len({c.size for c in cols}) != 1:
        return f"columns of different lengths {[c.size for c in cols]}"
    keep = np.isfinite(xs) & np.isfinite(ys)
    if ids is not None:
        return Rows(xs[keep], ys[keep], ids=ids[keep].astype(np.int64))
    assert times is not None
    keep &= np.isfinite(times)
    return Rows(xs[keep], ys[keep], times=times[keep])


def _stamp(value: Any, part: str) -> float:
    try:
        return float(value[f"timeStamp.{part}"])
    except (KeyError, TypeError, ValueError):
        return 0.0


class Client(Protocol):
    """One protocol's client for the position channels of one intake."""

    def scalar(self, name: str, on_sample: Callable[[Sample | str], None],
               on_status: Callable[[str], None]) -> None:
        """Follow a scalar readback: each update as a sample (or why it is not one)."""
        ...

    def close(self) -> None:
        """Stop following everything."""
        ...


class PvaClient:
    """pvAccess through p4p (the client library of the whole edge)."""

    def __init__(self, conf: Mapping[str, str] | None) -> None:
        from p4p.client.thread import Context

        self.ctx = (Context("pva", nt=False) if conf is None
                    else Context("pva", conf=dict(conf), useenv=False, nt=False))
        self.subs: list[Any] = []

    def monitor(self, name: str, on_value: Callable[[Any], None],
                on_status: Callable[[str], None]) -> None:
        """Follow ``name``; updates to ``on_value``, (dis)connections said to ``on_status``."""
        up = [False]

        def cb(value: Any) -> None:
            if isinstance(value, Exception):
                if up[0]:
                    up[0] = False
                    on_status(f"position channel {name} went away ({type(value).__name__})")
                return
            if not up[0]:
                up[0] = True
                on_status(f"position channel {name} connected")
            on_value(value)

        self.subs.append(self.ctx.monitor(name, cb, request=monitor_request(QUEUE_SIZE),
                                          notify_disconnect=True))

    def scalar(self, name: str, on_sample: Callable[[Sample | str], None],
               on_status: Callable[[str], None]) -> None:
        """Follow an NTScalar readback."""
        self.monitor(name, lambda v: on_sample(pva_sample(v)), on_status)

    def close(self) -> None:
        for s in self.subs:
            s.close()
        self.ctx.close()


class CaClient:
    """Channel Access through caproto's threading client (why caproto: the module doc)."""

    def __init__(self, conf: Mapping[str, str] | None) -> None:
        from caproto.threading.client import Context

        del conf  # CA reads the EPICS_CA_* environment, as every CA client does
        self.ctx = Context()
        self.subs: list[Any] = []
        self._callbacks: list[Any] = []  # caproto keeps weak references only

    def scalar(self, name: str, on_sample: Callable[[Sample | str], None],
               on_status: Callable[[str], None]) -> None:
        """Follow a readback with DBR_TIME updates."""

        def state(pv: Any, state: str) -> None:
            on_status(f"position channel ca://{name} {state}")

        def cb(sub: Any, response: Any) -> None:
            on_sample(ca_sample(response))

        (pv,) = self.ctx.get_pvs(name, connection_state_callback=state, timeout=None)
        sub = pv.subscribe(data_type="time")
        sub.add_callback(cb)
        self._callbacks += [state, cb]
        self.subs.append(sub)

    def close(self) -> None:
        for s in self.subs:
            s.clear()
        self.ctx.disconnect()


CLIENTS: dict[str, Callable[[Mapping[str, str] | None], Client]] = {
    "pva": PvaClient, "ca": CaClient}


class PositionChannels:
    """The position channels of one intake, feeding ``live``; :meth:`close` stops them."""

    def __init__(self, live: LivePositions, message: Callable[[str], None],
                 conf: Mapping[str, str] | None) -> None:
        self.live = live
        self.message = message
        self.conf = conf
        self.clients: dict[str, Client] = {}
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def _client(self, scheme: str) -> Client:
        if scheme not in self.clients:
            self.clients[scheme] = CLIENTS[scheme](self.conf)
        return self.clients[scheme]

    def _once(self, key: str, text: str) -> None:
        """Say a per-update problem once per channel and kind (it would come at every update)."""
        with self._lock:
            if key in self._said:
                return
            self._said.add(key)
        self.message(text)

    def motors(self, x_pv: str, y_pv: str) -> None:
        """Follow two readbacks, x and y."""
        for axis, name in enumerate((x_pv, y_pv)):
            scheme, bare = split_name(name)

            def on_sample(s: Sample | str, axis: int = axis, name: str = name) -> None:
                if isinstance(s, str):
                    self._once(name + s, f"position readback {name}: sample left out, "
                                         f"{s} (said once)")
                else:
                    self.live.add(axis, *s)

            self._client(scheme).scalar(bare, on_sample, self.message)

    def stream(self, pv: str, x_column: str, y_column: str) -> None:
        """Follow a position stream (pvAccess only: CA carries no tables)."""
        scheme, bare = split_name(pv)
        if scheme != "pva":
            raise ValueError(f"position stream {pv}: a stream is an NTTable, which only "
                             "pvAccess carries; give its pvAccess name")

        def on_value(value: Any) -> None:
            rows = table_rows(value, x_column, y_column)
            if isinstance(rows, str):
                self._once(rows, f"position stream {pv}: update left out, {rows} (said once)")
                return
            self.live.add_rows(rows.xs, rows.ys, times=rows.times,
                               ids=None if rows.ids is None else rows.ids.tolist())

        client = self._client("pva")
        assert isinstance(client, PvaClient)
        client.monitor(bare, on_value, self.message)

    def close(self) -> None:
        """Stop following every channel."""
        for c in self.clients.values():
            c.close()
        self.clients = {}
