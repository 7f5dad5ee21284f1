"""The simulator streams frames that independent pvAccess clients read correctly.

A p4p monitor (in this process) and a pvapy monitor (its own process) both watch
``Pva1:Image`` while the simulator acquires a scan; both must see every frame
in order, with the right shape, dtype and position attributes, and all of it
must agree with the scan file written at the same time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from p4p.client.thread import Context

from ptychoflow.epicsenv import pva_conf
from ptychoflow.ntnda import read_frame
from ptychoflow.scanfile import read_scan
from tests.conftest import wait_for_pva

pytestmark = pytest.mark.system

N = 150


def _start_pvapy(pv: str, env: dict[str, str], out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "pvapy_monitor.py"), pv, str(N), "60",
         str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stdout.read()
    return proc


def test_p4p_and_pvapy_receive_every_frame(tmp_path: Path, epics_env, prefix,  # noqa: ANN001
                                           start_server) -> None:  # noqa: ANN001
    out = tmp_path / "scans"
    server = start_server(["sim", "--prefix", prefix, "--frames", str(N), "--size", "64",
                           "--rate", "300", "--out", str(out), "--wait", "--delay", "0"],
                          epics_env, "sim")
    wait_for_pva(epics_env, prefix + "cam1:Acquire", server=server)

    frames = []
    done = threading.Event()

    def on_frame(value) -> None:  # noqa: ANN001
        f = read_frame(value)
        if f.unique_id == 0:
            return
        frames.append(f)
        if len(frames) >= N:
            done.set()

    pvapy_out = tmp_path / "pvapy.json"
    pvapy = _start_pvapy(prefix + "Pva1:Image", epics_env, pvapy_out)
    with Context("pva", conf=pva_conf(epics_env), useenv=False, nt=False) as ctx:
        sub = ctx.monitor(prefix + "Pva1:Image", on_frame, request="record[queueSize=1000]")
        time.sleep(1.0)  # both subscriptions established
        ctx.put(prefix + "cam1:Acquire", 1)
        assert done.wait(60), f"p4p got {len(frames)} of {N} frames\n{server.log()}"
        deadline = time.monotonic() + 20
        while ctx.get(prefix + "cam1:Acquire")["value"] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        filename = str(ctx.get(prefix + "HDF1:FullFileName_RBV")["value"])
        counter = int(ctx.get(prefix + "cam1:ArrayCounter_RBV")["value"])
        sub.close()
    pvapy.wait(60)

    # the file written while streaming is complete and holds the same frames
    assert filename.endswith(".h5") and Path(filename).exists()
    assert not list(out.glob("*.part"))
    scan = read_scan(filename)
    assert scan.n_frames == N == counter

    assert [f.unique_id for f in frames] == list(range(1, N + 1))
    for i, f in enumerate(frames):
        assert f.array.shape == (64, 64) and f.array.dtype == np.uint16
        np.testing.assert_array_equal(f.array, scan.data[i])
        assert f.attributes["PositionX"] == pytest.approx(scan.positions[i, 1], abs=1e-15)
        assert f.attributes["PositionY"] == pytest.approx(scan.positions[i, 0], abs=1e-15)
    stamps = [f.timestamp for f in frames]
    assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
    assert abs(stamps[0] - time.time()) < 120

    got = json.loads(pvapy_out.read_text())
    assert [g["uniqueId"] for g in got] == list(range(1, N + 1))
    for i, g in enumerate(got):
        assert g["kind"] == "ushortValue" and g["dims"] == [64, 64] and g["n"] == 64 * 64
        assert g["sum"] == int(scan.data[i].ravel()[:256].astype(np.int64).sum())
        assert g["PositionX"] == pytest.approx(scan.positions[i, 1], abs=1e-15)
        assert g["PositionY"] == pytest.approx(scan.positions[i, 0], abs=1e-15)


def test_replay_of_the_siemens_star(tmp_path: Path, epics_env, prefix,  # noqa: ANN001
                                    start_server) -> None:  # noqa: ANN001
    from tests.conftest import SIEMENS

    server = start_server(["sim", "--prefix", prefix, "--replay", str(SIEMENS), "--rate", "0",
                           "--out", str(tmp_path), "--wait", "--delay", "0"], epics_env, "replay")
    wait_for_pva(epics_env, prefix + "cam1:Acquire", server=server)
    ids: list[int] = []
    done = threading.Event()

    def on_frame(value) -> None:  # noqa: ANN001
        uid = int(value["uniqueId"])
        if uid:
            ids.append(uid)
            if uid == 516:
                done.set()

    with Context("pva", conf=pva_conf(epics_env), useenv=False, nt=False) as ctx:
        sub = ctx.monitor(prefix + "Pva1:Image", on_frame, request="record[queueSize=1000]")
        time.sleep(0.5)
        ctx.put(prefix + "cam1:Acquire", 1)
        assert done.wait(60), server.log()
        sub.close()
        time.sleep(0.5)
        name = str(ctx.get(prefix + "HDF1:FullFileName_RBV")["value"])
    deadline = time.monotonic() + 20
    while not Path(name).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    replayed = read_scan(name)
    assert replayed.data.shape == (516, 128, 128)
    assert ids == list(range(1, 517)), f"lost {516 - len(ids)} frames"


def test_bad_puts_are_refused(epics_env, prefix, start_server) -> None:  # noqa: ANN001
    server = start_server(["sim", "--prefix", prefix, "--frames", "10", "--size", "64",
                           "--wait", "--out", ""], epics_env, "sim")
    wait_for_pva(epics_env, prefix + "cam1:Acquire", server=server)
    with Context("pva", conf=pva_conf(epics_env), useenv=False) as ctx:
        with pytest.raises(Exception, match="AcquireRate"):
            ctx.put(prefix + "cam1:AcquireRate", -5.0)
        with pytest.raises(Exception, match="cam1:Acquire takes 0"):
            ctx.put(prefix + "cam1:Acquire", 7)
        assert ctx.get(prefix + "cam1:AcquireRate") == 100.0
        assert server.alive()
