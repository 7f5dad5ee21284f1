"""rPIE while the scan is acquired: the reconstruct stage follows the chunks as a writer
flushes them, reports the live phase during acquisition, and ends as close to the truth
as a reconstruction of the finished file.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.chunks import ChunkPolicy, stream_folder
from ptychoflow.livephase import decode
from ptychoflow.remote import stages
from ptychoflow.remote.quality import reconstruction_vs_truth
from ptychoflow.remote.recon import Reconstruction, read_reconstruction
from ptychoflow.scanfile import Scan, ScanWriter, read_scan
from ptychoflow.sim.physics import simulate_scan
from ptychoflow.stages import Reporter

EPOCHS = 20


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, item: dict[str, Any]) -> None:
        self.items.append({**item, "at": time.perf_counter()})


def acquire(scan: Scan, path: Path, rate: float, closed: list[float]) -> None:
    w = ScanWriter(path, scan.frame_shape, scan.data.dtype, energy_ev=scan.energy_ev,
                   distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
                   probe=scan.probe, truth=scan.truth,
                   truth_pixel_size_m=scan.truth_pixel_size_m, metadata=scan.metadata,
                   expected_frames=scan.n_frames, chunks=ChunkPolicy(24))
    t0 = time.perf_counter()
    for i in range(scan.n_frames):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        w.append(scan.data[i], *scan.positions[i])
    closed.append(time.perf_counter())
    w.close()


def correlation(rec: Reconstruction, scan: Scan) -> float:
    return reconstruction_vs_truth(rec, scan)["correlation"]


@pytest.mark.timeout(600)
def test_a_scan_reconstructed_while_acquired_ends_as_good_as_after_the_fact(
        tmp_path: Path) -> None:
    import ptychi.api  # noqa: F401 - a compute worker that is up before the scan starts

    scan = simulate_scan(n_frames=144, size=64, seed=5)
    data = tmp_path / "data"
    path = data / "scan_0001.h5"
    closed: list[float] = []
    writer = threading.Thread(target=acquire, args=(scan, path, 12.0, closed))  # 12 s
    writer.start()
    while not list(stream_folder(path).glob("*.chunk-00001.h5")):
        time.sleep(0.05)
    events = Events()
    params = {"recon_epochs": EPOCHS, "stream_dir": str(stream_folder(path)),
              "stream_stem": "scan_0001", "stream_idle_s": 60, "stream_final_epochs": 5,
              "stream_live_s": 0.5, "recon_cxi": False}
    work = tmp_path / "stream"
    work.mkdir()
    result = stages.reconstruct(str(stream_folder(path)), str(work), params,
                                Reporter("reconstruct", events))
    writer.join()

    # the live phase arrived while frames were still being acquired, and it is an image
    live = [e for e in events.items if e.get("live_phase")]
    assert live and live[0]["at"] < closed[0], "no live phase before the last frame"
    assert decode(live[-1]["live_phase"]).ndim == 2
    assert any("while acquiring" in str(e.get("message")) for e in events.items)
    # the stage's result is a whole scan file the later stages read like a transferred one
    whole = read_scan(result["path"])
    np.testing.assert_array_equal(whole.data, scan.data)
    assert result["streaming"] and result["scan_path"] == result["path"]
    rec_stream = read_reconstruction(result["reconstruction"])
    assert rec_stream.settings["streaming"] and rec_stream.settings["stream_steps"] >= 2

    # the finished file reconstructed from scratch with the configured epochs
    after = tmp_path / "after"
    after.mkdir()
    r_after = stages.reconstruct(str(path), str(after), {"recon_epochs": EPOCHS,
                                                         "recon_cxi": False})
    rec_after = read_reconstruction(r_after["reconstruction"])
    c_stream, c_after = correlation(rec_stream, scan), correlation(rec_after, scan)
    assert c_after > 0.9  # the comparison means something
    assert c_stream >= c_after - 0.01, (c_stream, c_after)
