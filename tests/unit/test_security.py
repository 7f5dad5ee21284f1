"""Security rules a user relies on: no shell anywhere, edge writes guarded, secrets unsaid.

The shell scan reads every module with ``ast`` (no import, no execution). The
edge's write guard is checked on its own (peer addresses, host forms, roles) and
through a real p4p server in this process, whose client sends this process's OS
user ("ca" authentication) from loopback.
"""

from __future__ import annotations

import argparse
import ast
import getpass
import grp
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import responses

from ptychoflow.edge.output.pvaserver import EdgeServer, WriteGuard, peer_address
from ptychoflow.pvnames import EDGE

ROOT = Path(__file__).resolve().parents[2]
CODE = ("ptychoflow", "ioc", "edge", "remote", "benchmarks")

SHELL_FUNCTIONS = {"os.system", "os.popen", "subprocess.getoutput",
                   "subprocess.getstatusoutput", "asyncio.create_subprocess_shell"}


# ---- no shell ---------------------------------------------------------------------------
def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from the module's imports (``sp`` -> ``subprocess``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def shell_calls(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: call`` for every call of this module that may run a shell."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        shell = next((k.value for k in node.keywords if k.arg == "shell"), None)
        shell_on = shell is not None and not (isinstance(shell, ast.Constant)
                                              and shell.value is False)
        if (name in SHELL_FUNCTIONS or name.endswith(".subprocess_shell")
                or (name.startswith("subprocess.") and shell_on)):
            found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: {name}(...)")
    return found


def test_no_module_runs_a_shell() -> None:
    modules = sorted(p for folder in CODE for p in (ROOT / folder).rglob("*.py"))
    assert len(modules) > 100  # the scan sees the code, not an empty folder
    found = [hit for path in modules for hit in shell_calls(path)]
    assert found == [], ("a shell parses its command line: pass an argument list to "
                         "subprocess without shell=True instead of:\n" + "\n".join(found))


@pytest.mark.parametrize("code", [
    'import subprocess\nsubprocess.run("ls " + x, shell=True)',
    'import subprocess as sp\nsp.Popen(cmd, shell=1)',
    'from subprocess import check_output\ncheck_output(cmd, shell=True)',
    'import subprocess\nsubprocess.run(cmd, shell=flag)',  # not provably off
    'import os\nos.system("ls")',
    'import os.path\nos.popen("ls")',
    'from os import system as run\nrun("ls")',
    'import subprocess\nsubprocess.getoutput("ls")',
    'from subprocess import getstatusoutput\ngetstatusoutput("ls")',
    'import asyncio\nasyncio.create_subprocess_shell("ls")',
    'loop.subprocess_shell(factory, "ls")',
])
def test_the_scan_finds_a_shell(tmp_path: Path, code: str) -> None:
    (tmp_path / "m.py").write_text(code + "\n")
    assert len(shell_calls(tmp_path / "m.py", tmp_path)) == 1


@pytest.mark.parametrize("code", [
    'import subprocess\nsubprocess.run(["ls", x])',
    'import subprocess\nsubprocess.run(["ls"], shell=False)',
    'import platform\nplatform.system()',
    'import asyncio\nasyncio.create_subprocess_exec("ls", x)',
    'x = "os.system"',
])
def test_the_scan_leaves_argument_lists_alone(tmp_path: Path, code: str) -> None:
    (tmp_path / "m.py").write_text(code + "\n")
    assert shell_calls(tmp_path / "m.py", tmp_path) == []


# ---- the edge's write guard -------------------------------------------------------------
@pytest.mark.parametrize(("peer", "address"), [
    ("127.0.0.1:5075", "127.0.0.1"), ("10.1.2.3:40000", "10.1.2.3"),
    ("[::1]:5075", "::1"), ("[::ffff:10.1.2.3]:5075", "10.1.2.3"),
    ("[fe80::1%eth0]:5075", "fe80::1"),
])
def test_a_peer_is_read_as_an_address(peer: str, address: str) -> None:
    assert peer_address(peer) == ip_address(address)


@pytest.mark.parametrize("peer", ["", "console1:5075", "garbage"])
def test_an_unreadable_peer_is_no_address(peer: str) -> None:
    assert peer_address(peer) is None


def _fake_dns(table: dict[str, str]) -> Callable[[str], set[Any]]:
    def resolve(host: str) -> set[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return {ip_address(table[host])}
    return resolve


def test_empty_lists_let_anyone_write_from_anywhere() -> None:
    guard = WriteGuard()
    assert not guard.limited
    assert guard.refusal("anyone", "192.0.2.9:1234") is None


def test_an_unlisted_user_is_refused_with_the_setting_to_change() -> None:
    guard = WriteGuard(["operator"])
    assert guard.refusal("operator", "192.0.2.9:1234") is None
    why = guard.refusal("mallory", "192.0.2.9:1234")
    assert why == ("write refused for user 'mallory' on host 192.0.2.9: user 'mallory' is not "
                   "in writers of the edge; to allow it, add it to writers in the [edge] "
                   "section of ptychoflow.toml (or --writers) and restart the edge")


def test_a_role_admits_the_members_of_that_group_only() -> None:
    guard = WriteGuard(["role/beamline"])
    assert guard.refusal("bob", "10.0.0.1:1", lambda: {"users", "beamline"}) is None
    assert "writers" in (guard.refusal("eve", "10.0.0.1:1", lambda: {"users"}) or "")


def test_a_listed_user_needs_no_group_lookup() -> None:
    def roles() -> set[str]:
        raise AssertionError("roles looked up for a listed user")
    assert WriteGuard(["bob", "role/beamline"]).refusal("bob", "10.0.0.1:1", roles) is None


def test_hosts_are_compared_by_the_addresses_their_names_resolve_to() -> None:
    guard = WriteGuard(hosts=["console1", "10.0.0.9"], resolve=_fake_dns({"console1": "10.0.0.5"}))
    assert guard.refusal("anyone", "10.0.0.5:1") is None
    assert guard.refusal("anyone", "10.0.0.9:1") is None
    why = guard.refusal("anyone", "10.0.0.6:1") or ""
    assert "host 10.0.0.6 is not in writer_hosts" in why and "(or --writer-hosts)" in why
    assert "is not in writers" not in why


def test_a_user_and_host_both_unlisted_name_both_settings() -> None:
    guard = WriteGuard(["operator"], ["10.0.0.9"])
    why = guard.refusal("eve", "10.0.0.6:1") or ""
    assert "user 'eve' is not in writers and host 10.0.0.6 is not in writer_hosts" in why
    assert "add it to writers / writer_hosts" in why and "--writers / --writer-hosts" in why


@pytest.mark.parametrize("listed", ["localhost", "127.0.0.1", "::1", "LOCALHOST",
                                    socket.gethostname()])
@pytest.mark.parametrize("peer", ["127.0.0.1:1", "127.0.1.1:1", "[::1]:1",
                                  "[::ffff:127.0.0.1]:1"])
def test_every_loopback_form_admits_every_loopback_client(listed: str, peer: str) -> None:
    guard = WriteGuard(hosts=[listed], resolve=_fake_dns({"localhost": "127.0.0.1",
                                                          "LOCALHOST": "127.0.0.1"}))
    assert guard.refusal("anyone", peer) is None


def test_loopback_clients_are_refused_when_only_other_hosts_are_listed() -> None:
    guard = WriteGuard(hosts=["192.0.2.7"])
    assert "writer_hosts" in (guard.refusal("anyone", "127.0.0.1:1") or "")


def test_a_host_that_does_not_resolve_is_logged_and_matches_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    guard = WriteGuard(hosts=["nowhere.invalid"], resolve=_fake_dns({}))
    assert guard.unresolved == ["nowhere.invalid"]
    assert "writer_hosts: nowhere.invalid does not resolve" in caplog.text
    assert "writer_hosts" in (guard.refusal("anyone", "10.0.0.1:1") or "")


def test_writers_come_as_lists_from_the_flags_or_the_toml_file() -> None:
    from ptychoflow.config import ConfigError, add_arguments, resolve
    from ptychoflow.edge.settings import EdgeSettings

    parser = argparse.ArgumentParser()
    add_arguments(parser, EdgeSettings)
    args = parser.parse_args(["--writers", "operator", "role/b33", "--writer-hosts", "console1"])
    settings = resolve(EdgeSettings, "edge", args, {"edge": {"writers": ["ignored"]}})
    assert (settings.writers, settings.writer_hosts) == (["operator", "role/b33"], ["console1"])
    assert resolve(EdgeSettings, "edge", None, {}).writers == []  # default: anyone writes
    for bad in ("operator", ["two words"], [""], [1]):
        with pytest.raises(ConfigError, match=r"writers must be a list of names without "
                                              r'spaces, e.g. writers = \["operator"\]'):
            resolve(EdgeSettings, "edge", None, {"edge": {"writers": bad}})


@pytest.fixture
def edge_server() -> Iterator[Callable[..., tuple[EdgeServer, Any, list[int]]]]:
    """An EdgeServer on isolated loopback ports with ``Edge:Enable`` handled; a client."""
    from p4p.client.thread import Context

    from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix

    made: list[tuple[EdgeServer, Any]] = []

    def start(guard: WriteGuard, say_refused: Callable[[], bool] | None = None
              ) -> tuple[EdgeServer, Any, list[int]]:
        conf = pva_conf(isolated_env())
        server = EdgeServer(random_prefix(), conf, guard, say_refused)
        puts: list[int] = []
        server.on_put(EDGE.enable, puts.append)
        ctx = Context("pva", conf=conf, useenv=False)
        made.append((server, ctx))
        return server, ctx, puts

    yield start
    for server, ctx in made:
        ctx.close()
        server.close()


def test_the_edge_server_refuses_an_unlisted_user_and_says_so(edge_server: Any) -> None:
    from p4p.client.thread import RemoteError

    # Message_RBV speaks at the 1st and 5th refusal: a retrying client cannot flood it
    gate = iter([True, False, False, False, True])
    server, ctx, puts = edge_server(WriteGuard(["someone-else"]), lambda: next(gate))
    enable, message = EDGE.enable.name(server.prefix), EDGE.message.name(server.prefix)
    me = getpass.getuser()
    refused = (f"Edge:Enable: write refused for user '{me}' on host 127.0.0.1: user '{me}' "
               "is not in writers of the edge; to allow it, add it to writers in the [edge] "
               "section of ptychoflow.toml (or --writers) and restart the edge")
    with pytest.raises(RemoteError) as info:
        ctx.put(enable, 0, timeout=5)
    assert str(info.value) == refused
    assert puts == [] and ctx.get(enable, timeout=5) == 1  # nothing took effect; reads open
    assert ctx.get(message, timeout=5) == refused
    server.post_scalar(EDGE.message, "something else")
    for _ in range(3):
        with pytest.raises(RemoteError):
            ctx.put(enable, 1, timeout=5)
    assert ctx.get(message, timeout=5) == "something else"
    with pytest.raises(RemoteError):
        ctx.put(enable, 0, timeout=5)
    assert ctx.get(message, timeout=5) == refused + " (3 more refused before this)"
    assert server.refused == 5 and puts == [] and ctx.get(enable, timeout=5) == 1


@pytest.mark.parametrize("writer", ["me", "role/my-group"])
def test_the_edge_server_lets_a_listed_user_or_group_member_write(
        edge_server: Any, writer: str) -> None:
    writer = {"me": getpass.getuser(),
              "role/my-group": f"role/{grp.getgrgid(os.getgid()).gr_name}"}[writer]
    server, ctx, puts = edge_server(WriteGuard(["someone-else", writer], ["localhost"]))
    ctx.put(EDGE.enable.name(server.prefix), 0, timeout=5)
    assert puts == [0] and ctx.get(EDGE.enable.name(server.prefix), timeout=5) == 0
    assert server.refused == 0


# ---- credentials --------------------------------------------------------------------------
# Globus login (service account) is covered in test_globus_auth.py:
# test_service_account_login_stores_tokens_0600_and_prints_none (no token or secret in
# stdout, stderr or the DEBUG log; token file 0600) and
# test_token_file_open_to_others_is_set_to_0600_with_a_warning. These add the paths an
# IOC takes at start and the help that prints every default.
SECRET = "S3CRET-never-shown-7f3a"


@responses.activate  # nothing registered: any request to Globus would fail the test
def test_a_client_secret_is_not_shown_by_help_errors_or_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from ptychoflow import cli
    from ptychoflow.ioc.globus_auth import (
        CLIENT_SECRET_ENV,
        AuthSettings,
        CredentialsError,
        token_folder,
        transfer_client,
    )

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(CLIENT_SECRET_ENV, SECRET)
    for command in (["ioc", "--help"], ["login", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(command)
    seen = [capsys.readouterr()]
    with pytest.raises(CredentialsError) as half:  # id missing: says which, not the secret
        transfer_client(AuthSettings(token_dir=str(tmp_path / "tokens")))
    monkeypatch.delenv(CLIENT_SECRET_ENV)
    creds = tmp_path / "client.json"
    creds.write_text(json.dumps({"client_id": "5e1ec700-0000-4000-8000-000000000002",
                                 "client_secret": SECRET}))
    creds.chmod(0o644)
    with pytest.raises(CredentialsError) as open_file:
        transfer_client(AuthSettings(credentials_file=str(creds), token_dir=str(tmp_path)))
    creds.chmod(0o600)
    auth = AuthSettings(credentials_file=str(creds), token_dir=str(tmp_path / "tokens"))
    client = transfer_client(auth)  # builds the service account's app; no network yet
    seen.append(capsys.readouterr())
    texts = [s.out + s.err for s in seen] + [caplog.text, str(half.value),
                                             str(open_file.value), repr(auth), repr(client)]
    assert all(SECRET not in t for t in texts)
    assert stat.S_IMODE(token_folder(auth).stat().st_mode) == 0o700
