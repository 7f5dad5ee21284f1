"""The edge follows real frame sources: the project's simulator and pvapy-ad-sim-server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptychoflow.edge.bench.models import affine_model
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, edge_args

pytestmark = pytest.mark.system


def test_follows_the_simulator(start_server, source_env, edge_env, prefix, collector: Collector,
                               tmp_path: Path) -> None:
    n = 60
    sim = start_server(["sim", "--prefix", prefix, "--frames", str(n), "--size", "64",
                        "--rate", "200", "--out", str(tmp_path / "scans"), "--wait", "--delay",
                        "0"], source_env, name="sim")
    model = affine_model(tmp_path / "models" / "net.onnx", 64)  # no card: sqrt preprocessing
    edge = start_server(edge_args(prefix, prefix + "Pva1:Image", model, "--pixel-size-m",
                                  "1e-8"), edge_env, name="edge")
    wait_for_pva(source_env, prefix + "cam1:Acquire", server=sim)
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    collector.watch(prefix + "Edge:Phase")
    collector.watch(prefix + "Edge:Stitched")
    collector.wait_value(prefix + "Edge:Message_RBV", lambda m: m.startswith("connected to"))
    collector.put(prefix + "cam1:Acquire", 1)
    got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= n, timeout=60)
    assert [f.unique_id for f in got] == list(range(1, n + 1))
    assert got[0].array.shape == (64, 64)
    st = collector.wait_for(prefix + "Edge:Stitched",
                            lambda fr: bool(fr) and fr[-1].attributes.get("Frames") == n)
    assert st[-1].array.shape[0] > 64  # the scan covers more than one frame
    collector.wait_value(prefix + "Edge:Processed_RBV", lambda v: v == n)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    assert collector.get(prefix + "Edge:BadFrames_RBV") == 0


def test_follows_pvapy_ad_sim_server(start_server, source_env, edge_env, prefix,
                                     collector: Collector, tmp_path: Path) -> None:
    # pvapy's (pvAccessCPP) server does not answer searches over the name-server TCP
    # connection: the edge finds it by a UDP search to the source's search port
    search = source_env["EPICS_PVA_BROADCAST_PORT"]
    edge_env["EPICS_PVA_ADDR_LIST"] = f"127.0.0.1 127.0.0.1:{search}"
    edge_env["EPICS_PVA_NAME_SERVERS"] = edge_env["EPICS_PVA_NAME_SERVERS"].split()[0]
    pv = prefix + "ad:Image"
    model = affine_model(tmp_path / "models" / "net.onnx", 64)
    exe = Path(sys.executable).parent / "pvapy-ad-sim-server"
    log = (tmp_path / "pvapy.log").open("wb")
    # source first: the edge's name-server connection retries only every few seconds
    proc = subprocess.Popen([str(exe), "-cn", pv, "-nx", "64", "-ny", "64", "-dt", "uint16",
                             "-fps", "100", "-rt", "60", "-std", "1", "-shd", "0", "-nf", "50"],
                            env=source_env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for_pva(edge_env, pv)
        edge = start_server(edge_args(prefix, pv, model, "--no-stitch"), edge_env, name="edge")
        wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
        collector.watch(prefix + "Edge:Phase")
        got = collector.wait_for(prefix + "Edge:Phase", lambda f: len(f) >= 150, timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        log.close()
    time.sleep(0.5)
    ids = [f.unique_id for f in collector.frames(prefix + "Edge:Phase")]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive: none lost or repeated
    assert got[0].array.shape == (64, 64)
    assert collector.get(prefix + "Edge:Dropped_RBV") == 0
    assert collector.get(prefix + "Edge:BadFrames_RBV") == 0
    assert edge.alive()
