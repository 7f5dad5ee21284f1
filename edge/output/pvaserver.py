"""The edge's pvAccess server: every PV of the ``EDGE`` table in ptychoflow.pvnames.

Images are posted as complete NTNDArray values built by
:func:`ptychoflow.ntnda.make_frame` on SharedPVs created without ``nt=``, so
``uniqueId`` and ``dataTimeStamp`` pass through unchanged. Puts to the
writable PVs call the handler registered for that PV (:meth:`EdgeServer.on_put`,
next to the PV it serves); a handler that raises ``ValueError`` fails the put
with its message, so a client sees why. PVs are named by their entry in the
table (``EDGE.phase``), never by a string.

Writes are guarded as the control IOC's access security guards its PVs: a
:class:`WriteGuard` built from the ``writers`` / ``writer_hosts`` settings
refuses a put from any other user or host before it takes effect; reads stay
open to everyone. pvxs tells the handler who writes: ``op.account()`` is the
user name the client sent ("ca" authentication: its OS user, unverified, as in
Channel Access), ``op.roles()`` that user's groups on this host, ``op.peer()``
the client's real address, ``"ip:port"``. So hosts are compared by address, as
p4p's own gateway does: each configured host name is resolved once at start.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from p4p.nt import NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

from ptychoflow.edge.messages import Every
from ptychoflow.ntnda import ImageStream, make_frame
from ptychoflow.pvnames import EDGE, PVSpec

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Gate = Callable[[Any, str], str | None]


def _address(text: str) -> Address:
    """An IP address, IPv4-mapped IPv6 as IPv4 and without a zone (``fe80::1%eth0``)."""
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def peer_address(peer: str) -> Address | None:
    """The client's address from pvxs' ``"ip:port"`` or ``"[ipv6]:port"``; None if unreadable."""
    text = peer.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return _address(text)
    except ValueError:
        return None


def resolve_host(host: str) -> set[Address]:
    """Every address the name ``host`` resolves to; OSError if it has none."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return {_address(str(info[4][0])) for info in infos}


def _own_names() -> set[str]:
    name = socket.gethostname().lower()
    return {name, name.split(".", 1)[0], socket.getfqdn().lower()}


class WriteGuard:
    """Who may write the edge's PVs: a listed user on a listed host; an empty list: anyone.

    ``writers`` are user names, or ``role/GROUP`` for every member of an OS group of
    this host (pvxs' roles, the form p4p's gateway accepts in an ACF). ``hosts`` are
    names or addresses, resolved once here (a name that does not resolve is logged
    and matches nothing). A client on this host may reach the edge over any loopback
    address, whichever form was listed: ``localhost``, ``127.0.0.1``, ``::1``, this
    host's own name or any name that resolves to a loopback address admit every
    loopback client (127.0.0.0/8, ::1).
    """

    def __init__(self, writers: Sequence[str] = (), hosts: Sequence[str] = (),
                 resolve: Callable[[str], set[Address]] = resolve_host) -> None:
        self.writers = tuple(writers)
        self.hosts = tuple(hosts)
        self._users = {w for w in writers if not w.startswith("role/")}
        self._roles = {w.removeprefix("role/") for w in writers if w.startswith("role/")}
        self._addresses: set[Address] = set()
        self._loopback = False
        self.unresolved: list[str] = []
        own = _own_names() if hosts else set()
        for host in hosts:
            try:
                found = self._lookup(host, resolve)
            except (OSError, UnicodeError) as exc:
                log.warning("writer_hosts: %s does not resolve (%s); writes from it are "
                            "refused until the edge restarts with it resolvable", host, exc)
                self.unresolved.append(host)
                found = set()
            self._addresses |= found
            self._loopback |= host.lower() in own or any(a.is_loopback for a in found)

    @staticmethod
    def _lookup(host: str, resolve: Callable[[str], set[Address]]) -> set[Address]:
        try:
            return {_address(host)}  # an address as written
        except ValueError:
            return resolve(host)  # a name

    @property
    def limited(self) -> bool:
        """Whether any write may be refused."""
        return bool(self.writers or self.hosts)

    def summary(self) -> str:
        """Who may write, for the start-up log."""
        return (f"users {list(self.writers) or '<everyone>'} on hosts "
                f"{list(self.hosts) or '<any>'}")

    def refusal(self, account: str, peer: str,
                roles: Callable[[], Iterable[str]] = frozenset) -> str | None:
        """None if ``account`` at ``peer`` may write, else why not and which setting to change.

        ``roles`` is called only when a ``role/`` entry must be looked at.
        """
        addr = peer_address(peer)
        where = str(addr) if addr is not None else repr(peer)
        wrong = []
        if self.writers and account not in self._users and not (
                self._roles and self._roles & set(roles())):
            wrong.append((f"user {account!r} is not in", "writers"))
        if self.hosts and not self._host_allowed(addr):
            wrong.append((f"host {where} is not in", "writer_hosts"))
        if not wrong:
            return None
        why = " and ".join(f"{who} {key}" for who, key in wrong)
        keys = " / ".join(key for _, key in wrong)
        flags = " / ".join("--" + key.replace("_", "-") for _, key in wrong)
        return (f"write refused for user {account!r} on host {where}: {why} of the edge; "
                f"to allow it, add it to {keys} in the [edge] section of ptychoflow.toml "
                f"(or {flags}) and restart the edge")

    def _host_allowed(self, addr: Address | None) -> bool:
        if addr is None:
            return False
        return addr in self._addresses or (self._loopback and addr.is_loopback)


def _open(op: Any, suffix: str) -> str | None:
    return None


class _PutHandler:
    """Converts the put value to the PV's Python type and hands it to the service.

    ``gate(op, suffix)`` runs first: a reason from it refuses the put before anything
    takes effect.
    """

    def __init__(self, fn: Handler | None, suffix: str, cast: Callable[[Any], Any],
                 gate: Gate = _open) -> None:
        self._fn = fn
        self._suffix = suffix
        self._cast = cast
        self._gate = gate

    def put(self, pv: SharedPV, op: Any) -> None:
        if self._fn is None:
            op.done(error=f"{self._suffix} is read-only")
            return
        refused = self._gate(op, self._suffix)
        if refused is not None:
            op.done(error=refused)
            return
        try:
            value = self._cast(_plain(op.value()))
            self._fn(value)
        except (TypeError, ValueError) as exc:
            op.done(error=str(exc))
            return
        pv.post(value)
        op.done()


def _plain(v: Any) -> Any:
    """The bare value of an unwrapped NTScalar (whose str() adds a time stamp)."""
    raw = getattr(v, "raw", None)
    return raw["value"] if raw is not None else v


_CASTS: dict[str, Callable[[Any], Any]] = {"s": str, "d": float, "i": int, "l": int}


class EdgeServer:
    """Serves the edge PVs under ``prefix``.

    Writable ones refuse puts until :meth:`on_put`, and always those ``guard`` refuses
    (default: none); ``say_refused()`` tells whether a refusal is said on Message_RBV
    now (default: at most every :attr:`REFUSED_EVERY_S`), the others are counted in
    the next one said.
    """

    REFUSED_EVERY_S = 2.0
    """Most often a refused write is said on Message_RBV and logged (a client may retry)."""

    def __init__(self, prefix: str, conf: Mapping[str, str] | None = None,
                 guard: WriteGuard | None = None,
                 say_refused: Callable[[], bool] | None = None) -> None:
        self.prefix = prefix
        self.guard = guard if guard is not None else WriteGuard()
        self.refused = 0
        self._unsaid = 0
        self._say_refused = say_refused or Every(self.REFUSED_EVERY_S)
        self._refused_lock = threading.Lock()
        if self.guard.limited:
            log.info("edge PVs writable by %s", self.guard.summary())
        self.pvs: dict[str, SharedPV] = {}
        self._last: dict[str, Any] = {}
        self._streams: dict[str, ImageStream] = {}
        self._handlers: dict[str, _PutHandler] = {}
        for spec in EDGE:
            self.pvs[spec.suffix] = self._make_pv(spec)
        providers = [{spec.name(prefix): self.pvs[spec.suffix] for spec in EDGE}]
        if conf is None:
            self.server = Server(providers=providers)
        else:
            self.server = Server(providers=providers, conf=dict(conf), useenv=False)

    def _make_pv(self, spec: PVSpec) -> SharedPV:
        if spec.record == "NTNDArray":
            return SharedPV(initial=make_frame(np.zeros((1, 1), np.float32), 0, 0.0))
        code = spec.record.split(":", 1)[1]
        initial: Any = str(spec.initial) if code == "s" else spec.initial
        handler = _PutHandler(None, spec.suffix, _CASTS[code], self._refusal)
        if spec.access == "W":
            self._handlers[spec.suffix] = handler
        return SharedPV(handler=handler, nt=NTScalar(code, display=True), initial=initial)

    def on_put(self, spec: PVSpec, fn: Handler) -> None:
        """Call ``fn(value)`` for each put to ``spec`` (a writable PV of the table)."""
        if spec.suffix not in self._handlers:
            raise ValueError(f"{spec.suffix} is not a writable edge PV")
        self._handlers[spec.suffix]._fn = fn

    def _refusal(self, op: Any, suffix: str) -> str | None:
        """Why this put is refused (said on Message_RBV and logged, rate-limited), or None."""
        if not self.guard.limited:
            return None
        try:
            reason = self.guard.refusal(str(op.account()), str(op.peer()), op.roles)
        except Exception as exc:  # fail closed: a write whose author is unknown is refused
            reason = f"write refused: cannot tell who writes ({type(exc).__name__}: {exc})"
        if reason is None:
            return None
        text = f"{suffix}: {reason}"
        with self._refused_lock:
            self.refused += 1
            say = self._say_refused()
            unsaid, self._unsaid = (self._unsaid, 0) if say else (0, self._unsaid + 1)
        if say:
            more = f" ({unsaid} more refused before this)" if unsaid else ""
            self.set_message(text + more, logging.WARNING)
        else:
            log.debug("%s", text)
        return text

    def post_scalar(self, spec: PVSpec, value: Any) -> None:
        """Update a scalar PV, only when the value changed, to spare the clients."""
        last = self._last.get(spec.suffix, object())
        if last != value and not (value != value and last != last):  # NaN: posted once
            self._last[spec.suffix] = value
            self.pvs[spec.suffix].post(value)

    def post_image(self, spec: PVSpec, array: np.ndarray, unique_id: int, timestamp: float,
                   attributes: dict[str, Any] | None = None) -> None:
        """Post a float32 image carrying the source frame's id and time stamp.

        Called from the publishing thread only: each PV's value is refilled, not rebuilt.
        """
        stream = self._streams.setdefault(spec.suffix, ImageStream())
        self.pvs[spec.suffix].post(stream.value(array, unique_id, timestamp, attributes))

    def set_message(self, text: str, level: int = logging.INFO) -> None:
        """``Message_RBV``: the last status or error in words (logged at ``level``)."""
        log.log(level, "%s", text)
        self.pvs[EDGE.message.suffix].post(text[:1024])

    def close(self) -> None:
        """Stop serving."""
        self.server.stop()
