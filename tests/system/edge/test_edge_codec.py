"""The edge takes frames compressed as areaDetector's NDCodec sends them through NDPluginPva.

The simulator compresses its frames (``ptychoflow sim --codec``); a real
``ptychoflow edge`` must predict from each exactly what it predicts from the
uncompressed frame, and count a frame that does not decompress as a bad frame,
saying which codec failed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.ntnda import make_frame
from ptychoflow.preprocess import Preprocess
from ptychoflow.pvnames import DETECTOR, EDGE
from ptychoflow.sim.cli import SimSettings, load_scan
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args

pytestmark = pytest.mark.system

N = 40  # frames of the simulated scan


@pytest.mark.parametrize("codec", ["lz4", "bslz4", "blosc"])
def test_compressed_stream_gives_the_predictions_of_the_uncompressed_frames(
        start_server, source_env: dict[str, str], edge_env: dict[str, str], prefix: str,
        collector: Collector, model_dir: Path, codec: str) -> None:
    sim = start_server(["sim", "--prefix", prefix, "--frames", str(N), "--size", "64",
                        "--rate", "200", "--out", "", "--wait", "--delay", "0",
                        "--codec", codec], source_env, name="sim")
    edge = start_server(edge_args(prefix, DETECTOR.pva1_image.name(prefix),
                                  model_dir / "model-v1.onnx", "--no-stitch"),
                        edge_env, name="edge")
    wait_for_pva(source_env, DETECTOR.cam1_acquire.name(prefix), server=sim)
    wait_for_pva(edge_env, EDGE.processed.name(prefix), server=edge)
    collector.wait_value(EDGE.message.name(prefix), lambda m: m.startswith("connected to"))
    collector.watch(EDGE.phase.name(prefix))
    collector.put(DETECTOR.cam1_acquire.name(prefix), 1)

    got = collector.wait_for(EDGE.phase.name(prefix), lambda f: len(f) >= N)
    assert [f.unique_id for f in got] == list(range(1, N + 1))  # none lost, none twice
    # the same scan, uncompressed, through the model's preprocessing (model-v1: identity)
    scan = load_scan(SimSettings(frames=N, size=64))
    expected = Preprocess(input_size=32, intensity="linear")(scan.data)
    for f in got:
        np.testing.assert_allclose(f.array, expected[f.unique_id - 1].reshape(32, 32),
                                   rtol=1e-6, atol=1e-6)
    collector.wait_value(EDGE.processed.name(prefix), lambda v: v == N)
    assert collector.get(EDGE.bad_frames.name(prefix)) == 0
    assert collector.get(EDGE.dropped.name(prefix)) == 0
    assert "compressed: " + codec in sim.log()
    assert edge.alive() and sim.alive()


def test_pvapy_streaming_an_hdf5_files_bitshuffle_chunks_is_decoded(
        tmp_path: Path, source_env: dict[str, str], edge_env: dict[str, str], prefix: str,
        start_server, collector: Collector, model_dir: Path) -> None:
    """pvapy-ad-sim-server -hcm sends the chunks of a bitshuffle/LZ4 HDF5 dataset as they are
    stored (with the HDF5 filter's header) and codec.parameters as a {value: int} structure."""
    import bitshuffle.h5
    import h5py

    frames = np.random.default_rng(2).poisson(20.0, (5, 32, 32)).astype(np.uint16)
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1, 32, 32),
                         compression=bitshuffle.h5.H5FILTER,
                         compression_opts=(0, bitshuffle.h5.H5_COMPRESS_LZ4))
    # pvapy's (pvAccessCPP) server does not answer searches over the name-server TCP
    # connection: the edge finds it by a UDP search to the source's search port
    search = source_env["EPICS_PVA_BROADCAST_PORT"]
    edge_env["EPICS_PVA_ADDR_LIST"] = f"127.0.0.1 127.0.0.1:{search}"
    edge_env["EPICS_PVA_NAME_SERVERS"] = edge_env["EPICS_PVA_NAME_SERVERS"].split()[0]
    pv = prefix + "Ad:Image"
    exe = shutil.which("pvapy-ad-sim-server") or str(
        Path(sys.executable).with_name("pvapy-ad-sim-server"))
    # it reads the dataset's shape through h5py too, which needs the filter as a plugin
    env = {**source_env, "HDF5_PLUGIN_PATH": str(Path(bitshuffle.h5.__file__).parent / "plugin")}
    log = (tmp_path / "adsim.log").open("wb")
    ad = subprocess.Popen([exe, "-if", str(path), "-hds", "/data", "-hcm", "-cn", pv,
                           "-fps", "50", "-rt", "60", "-std", "1", "-shd", "0", "-dc"],
                          env=env,
                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_pva(edge_env, pv)
        edge = start_server(edge_args(prefix, pv, model_dir / "model-v1.onnx", "--no-stitch"),
                            edge_env, name="edge")
        wait_for_pva(edge_env, EDGE.processed.name(prefix), server=edge)
        collector.watch(EDGE.phase.name(prefix))
        got = collector.wait_for(EDGE.phase.name(prefix), lambda f: len(f) >= 20)
    finally:
        ad.terminate()
        ad.wait(10)
        log.close()
    assert "compressor: bslz4" in (tmp_path / "adsim.log").read_text()  # sent compressed
    expected = Preprocess(input_size=32, intensity="linear")(frames).reshape(5, 32, 32)
    for f in got:  # each prediction is that of one of the file's frames, exactly
        assert min(float(np.abs(f.array - e).max()) for e in expected) < 1e-5, f.unique_id
    assert collector.get(EDGE.bad_frames.name(prefix)) == 0
    assert edge.alive()


def _corrupt_bslz4(uid: int) -> Any:
    """A bslz4 frame of counts cut short on the way: compressedSize says the whole length."""
    counts = np.random.default_rng(uid).poisson(50.0, (32, 32)).astype(np.uint16)
    v = make_frame(counts, uid, codec="bslz4")
    assert len(v["value"]) > 500
    v["value"] = ("ubyteValue", v["value"][:-5])
    return v


def test_a_frame_that_does_not_decompress_is_a_bad_frame_naming_its_codec(
        start_server, edge_env: dict[str, str], prefix: str, source: FrameSource,
        collector: Collector, model_dir: Path) -> None:
    edge = start_server(edge_args(prefix, source.pv, model_dir / "model-v1.onnx",
                                  "--no-stitch"), edge_env, name="edge")
    wait_for_pva(edge_env, EDGE.processed.name(prefix), server=edge)
    collector.wait_value(EDGE.message.name(prefix), lambda m: m.startswith("connected to"))
    collector.watch(EDGE.phase.name(prefix))
    said: list[str] = []
    sub = collector.ctx.monitor(EDGE.message.name(prefix),
                                lambda v: said.append(str(v["value"])),
                                request="record[queueSize=100]")
    unknown = make_frame(np.ones((32, 32), np.uint16), 4, codec="lz4")
    unknown["codec.name"] = "zstd"
    sent = [make_frame(np.full((32, 32), 1, np.uint16), 1, codec="bslz4"),
            make_frame(np.full((32, 32), 2, np.uint16), 2, codec="blosc"),
            _corrupt_bslz4(3),
            unknown,
            make_frame(np.full((32, 32), 5, np.uint16), 5, codec="lz4")]
    for v in sent:
        source.shared.post(v)
        time.sleep(0.02)

    got = collector.wait_for(EDGE.phase.name(prefix), lambda f: len(f) >= 3)
    collector.wait_value(EDGE.bad_frames.name(prefix), lambda v: v == 2)
    assert [f.unique_id for f in got] == [1, 2, 5]
    for f in got:
        np.testing.assert_allclose(f.array, f.unique_id)
    deadline = time.monotonic() + 10
    while not any("codec 'bslz4'" in m for m in said) and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.close()
    bad = [m for m in said if "bad frame" in m]
    assert any("codec 'bslz4'" in m and "corrupted or truncated" in m for m in bad), said
    # each undecodable frame took its id: nothing counted as lost before the edge
    assert collector.get(EDGE.missed.name(prefix)) == 0
    assert collector.get(EDGE.dropped.name(prefix)) == 0
    assert edge.alive()
