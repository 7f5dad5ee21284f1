"""Who may write a running edge's PVs, and what a put to them may carry.

The edge is ``ptychoflow edge`` in a subprocess; the client is p4p in this process.
pvxs' client names its user by EPICS' ``osiGetUserName`` (the OS account of the
process, "ca" authentication) and no EPICS_PVA_* setting changes that, so "an
unlisted user" is this process's user left out of ``--writers``; its host is the
loopback address it connects from.
"""

from __future__ import annotations

import getpass
import grp
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ME = getpass.getuser()
POS = {"PositionX": 0.0, "PositionY": 0.0}


def _edge(start_server: Any, edge_env: dict[str, str], prefix: str, source: FrameSource,
          model_dir: Path, *flags: str) -> Any:
    edge = start_server(edge_args(prefix, source.pv, model_dir / "model-v1.onnx", *flags),
                        edge_env, name="edge")
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    return edge


def _refused(collector: Collector, pv: str, value: Any, why: str) -> None:
    from p4p.client.thread import RemoteError

    with pytest.raises(RemoteError) as info:
        collector.put(pv, value)
    suffix = pv.split(":", 1)[1]
    assert re.fullmatch(rf"{suffix}: write refused for user '{re.escape(ME)}' on host "
                        rf"127\.0\.0\.1: {why}; to allow it, add it to .* in the \[edge\] "
                        r"section of ptychoflow\.toml \(or --.*\) and restart the edge",
                        str(info.value)), str(info.value)


def _one_frame_predicted(source: FrameSource, collector: Collector, prefix: str, uid: int
                         ) -> float:
    source.publish(np.full((32, 32), 1.0, np.float32), uid, POS)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: any(x.unique_id == uid
                                                                  for x in f))
    return float(next(x for x in got if x.unique_id == uid).array.mean())


def test_an_unlisted_user_is_refused_everywhere_and_nothing_changes(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    assert ME not in ("someone-else", "operator")
    edge = _edge(start_server, edge_env, prefix, source, model_dir,
                 "--writers", "someone-else", "operator")
    why = f"user '{re.escape(ME)}' is not in writers of the edge"
    _refused(collector, prefix + "Edge:Enable", 0, why)
    _refused(collector, prefix + "Edge:Model:Load", "model-v2.onnx", why)
    _refused(collector, prefix + "Edge:Input", prefix + "Other:Image", why)
    _refused(collector, prefix + "Edge:Stitched:Reset", 1, why)
    # reads stay open and show nothing took effect
    assert collector.get(prefix + "Edge:Enable") == 1
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 1
    assert collector.get(prefix + "Edge:Input") == source.pv
    assert collector.get(prefix + "Edge:Message_RBV").startswith(
        f"Edge:Enable: write refused for user '{ME}'")
    collector.watch(prefix + "Edge:Phase")
    assert _one_frame_predicted(source, collector, prefix, 1) == 1.0  # enabled, model v1
    assert "Edge:Enable: write refused" in edge.log()
    assert edge.alive()
    assert edge.stop() == 0


@pytest.mark.parametrize("who", ["user", "group"])
def test_a_listed_user_or_group_member_writes(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path, who: str) -> None:
    writer = ME if who == "user" else f"role/{grp.getgrgid(os.getgid()).gr_name}"
    edge = _edge(start_server, edge_env, prefix, source, model_dir,
                 "--writers", "someone-else", writer, "--writer-hosts", "localhost")
    collector.put(prefix + "Edge:Enable", 0)
    assert collector.get(prefix + "Edge:Enable") == 0
    collector.put(prefix + "Edge:Enable", 1)
    collector.put(prefix + "Edge:Model:Load", "model-v2.onnx")
    collector.wait_value(prefix + "Edge:Model:Version_RBV", lambda v: v == 2)
    collector.watch(prefix + "Edge:Phase")
    assert _one_frame_predicted(source, collector, prefix, 1) == 2.0
    assert "write refused" not in edge.log()
    assert edge.stop() == 0


def test_a_listed_user_on_an_unlisted_host_is_refused(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path) -> None:
    edge = _edge(start_server, edge_env, prefix, source, model_dir,
                 "--writers", ME, "--writer-hosts", "192.0.2.1")  # TEST-NET-1: not loopback
    _refused(collector, prefix + "Edge:Enable", 0,
             r"host 127\.0\.0\.1 is not in writer_hosts of the edge")
    assert collector.get(prefix + "Edge:Enable") == 1
    assert edge.stop() == 0


def shell_payloads(marker: Path) -> list[str]:
    """What a shell would run as ``touch marker``, however the string were pasted in."""
    return [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
            f"| touch {marker}", f"\ntouch {marker}\n", f"&& touch {marker}"]


def test_shell_metacharacters_in_string_pvs_run_nothing(
        start_server, edge_env, prefix, source: FrameSource, collector: Collector,
        model_dir: Path, tmp_path: Path) -> None:
    from p4p.client.thread import RemoteError

    marker = tmp_path / f"pwned-{secrets.token_hex(4)}"
    edge = _edge(start_server, edge_env, prefix, source, model_dir)
    collector.watch(prefix + "Edge:Phase")
    for payload in shell_payloads(marker):
        for pv, value in ((prefix + "Edge:Model:Load", payload),
                          (prefix + "Edge:Model:Load", f"model-v2.onnx{payload}"),
                          (prefix + "Edge:Model:Load", f"{model_dir}/model-v2.onnx{payload}"),
                          (prefix + "Edge:Input", payload),
                          (prefix + "Edge:Input", f"{source.pv}{payload}")):
            try:
                collector.put(pv, value)
            except RemoteError:
                pass  # refused: as good as harmless
            assert edge.alive(), edge.log()
    collector.put(prefix + "Edge:Input", source.pv)  # back to the real detector
    assert _one_frame_predicted(source, collector, prefix, 1) == 1.0  # model v1 still serves
    assert collector.get(prefix + "Edge:Model:Version_RBV") == 1
    assert not marker.exists()
    assert list(tmp_path.rglob(marker.name)) == []
    assert edge.stop() == 0
