"""``ptychoflow sim --codec`` sends frames as NDCodec does: a third-party client decodes them.

pvapy's ``AdImageUtility`` (what pvapy's own consumers use on areaDetector
streams) reads ``codec.name``, the data type from ``codec.parameters`` and
``uncompressedSize``, and decompresses with lz4 / bitshuffle / blosc; every
frame it decodes must be the simulator's frame, bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from p4p.client.thread import Context

from ptychoflow.epicsenv import pva_conf
from ptychoflow.pvnames import DETECTOR
from ptychoflow.sim.cli import SimSettings, load_scan
from tests.conftest import wait_for_pva

pytestmark = pytest.mark.system

N = 30

# run in its own process: pvapy reads the EPICS_PVA_* variables of its process
PVAPY_DECODER = """
import sys, threading
import numpy as np
import pvaccess as pva
from pvapy.utility.adImageUtility import AdImageUtility

pv, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got, done, live = {}, threading.Event(), threading.Event()

def on_update(v):
    live.set()
    uid, image, nx, ny, nz, mode, key = AdImageUtility.reshapeNtNdArray(v)
    if uid == 0:
        return
    got[f"{uid}"] = image
    got[f"{uid}:key"] = np.array(key)
    got[f"{uid}:codec"] = np.array(v['codec.name'])
    if sum(1 for k in got if ':' not in k) >= count:
        done.set()

ch = pva.Channel(pv)
ch.get("field(uniqueId)")
ch.subscribe("decode", on_update)
ch.startMonitor("field()")
live.wait(30)
print("ready", flush=True)
done.wait(60)
ch.stopMonitor()
np.savez(out, **got)
"""


@pytest.mark.parametrize("codec", ["lz4", "bslz4", "blosc"])
def test_pvapy_decodes_every_compressed_frame_to_the_simulated_one(
        tmp_path: Path, epics_env: dict[str, str], prefix: str, start_server, codec: str
        ) -> None:
    sim = start_server(["sim", "--prefix", prefix, "--frames", str(N), "--size", "64",
                        "--rate", "100", "--out", "", "--wait", "--delay", "0",
                        "--codec", codec], epics_env, "sim")
    wait_for_pva(epics_env, DETECTOR.cam1_acquire.name(prefix), server=sim)
    out = tmp_path / "pvapy.npz"
    client = subprocess.Popen([sys.executable, "-c", PVAPY_DECODER,
                               DETECTOR.pva1_image.name(prefix), str(N), str(out)],
                              env=epics_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line.strip() == "ready", line + client.stdout.read()
    with Context("pva", conf=pva_conf(epics_env), useenv=False) as ctx:
        ctx.put(DETECTOR.cam1_acquire.name(prefix), 1)
    assert client.wait(90) == 0, client.stdout.read()

    got = np.load(out)
    scan = load_scan(SimSettings(frames=N, size=64))
    uids = sorted(int(k) for k in got.files if ":" not in k)
    assert uids == list(range(1, N + 1))  # none lost, none twice
    for uid in uids:
        assert str(got[f"{uid}:codec"]) == codec
        assert str(got[f"{uid}:key"]) == "ubyteValue"  # sent compressed
        image = got[f"{uid}"]
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, scan.data[uid - 1])
