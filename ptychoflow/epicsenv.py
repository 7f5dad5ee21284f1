"""EPICS network settings: read the standard environment, or make an isolated one.

Servers and clients here honour the usual EPICS variables like any EPICS tool.
Tests and benchmarks need the opposite too: a server on loopback with its own
free ports that nothing else can see, and clients that look only there. The
exact set of variables (see shared/EPICS-TESTING.md) lives in
:func:`isolated_env` so every test and benchmark isolates the same way.
"""

from __future__ import annotations

import os
import secrets
import socket
import string
from collections.abc import Mapping, Sequence

PVA_KEYS = ("EPICS_PVA_ADDR_LIST", "EPICS_PVA_AUTO_ADDR_LIST", "EPICS_PVA_SERVER_PORT",
            "EPICS_PVA_BROADCAST_PORT", "EPICS_PVA_NAME_SERVERS", "EPICS_PVAS_INTF_ADDR_LIST",
            "EPICS_PVAS_SERVER_PORT", "EPICS_PVAS_BROADCAST_PORT", "EPICS_PVAS_BEACON_ADDR_LIST",
            "EPICS_PVAS_AUTO_BEACON_ADDR_LIST", "EPICS_PVAS_IGNORE_ADDR_LIST",
            "EPICS_PVA_CONN_TMO")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free for both TCP and UDP on loopback right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def isolated_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose CA and PVA servers and clients see only each other on loopback."""
    env = dict(os.environ if base is None else base)
    ca, rep, pva, bcast = free_port(), free_port(), free_port(), free_port()
    env.update({
        "EPICS_CA_SERVER_PORT": str(ca),
        "EPICS_CA_REPEATER_PORT": str(rep),
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_SERVER_PORT": str(pva),
        "EPICS_PVA_BROADCAST_PORT": str(bcast),
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{pva}",
    })
    return env


def servers_network(servers: Sequence[str], client: str) -> dict[str, dict[str, str]]:
    """One loopback EPICS network for several servers: a PVA port each, all of them name servers.

    Several PVA servers on one host cannot share a UDP search port reliably (a
    unicast search reaches only one socket), so every server gets its own TCP
    port and every client searches all of them directly (EPICS_PVA_NAME_SERVERS).
    Returns each server's environment by name, and under ``"client"`` the one
    for clients (whose server port is ``client``'s).
    """
    base = isolated_env()
    ports = {name: free_port() for name in servers}
    base["EPICS_PVA_NAME_SERVERS"] = " ".join(f"127.0.0.1:{p}" for p in ports.values())
    envs = {name: dict(base, EPICS_PVA_SERVER_PORT=str(port)) for name, port in ports.items()}
    envs["client"] = dict(base, EPICS_PVA_SERVER_PORT=str(ports[client]))
    return envs


def pva_conf(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The EPICS_PVA* subset of ``env`` as a p4p ``Context(conf=..., useenv=False)`` config."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith("EPICS_PVA")}


def random_prefix(stem: str = "PFT") -> str:
    """A PV prefix no other test or server uses, e.g. ``PFTx3k9q:``."""
    tail = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"{stem}{tail}:"
