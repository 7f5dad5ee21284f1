"""A scan in chunks: what the writer flushes, what Auto mode sees, what the IOC ships.

The reconstruction that follows the chunks is tested in test_streaming_recon.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.chunks import (
    ChunkError,
    ChunkPolicy,
    complete_chunks,
    manifest_name,
    read_manifest,
    scan_stem,
    stream_folder,
)
from ptychoflow.ioc.runstate import ActiveRun
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.streamship import Shipment
from ptychoflow.ioc.transfer import local
from ptychoflow.ioc.transfer.local import LocalTransfer
from ptychoflow.ioc.validate import check_scan_path
from ptychoflow.ioc.watcher import ScanWatcher
from ptychoflow.livephase import MAX_SIDE, decode, encode, live_phase_values
from ptychoflow.pvnames import CONTROL
from ptychoflow.remote.streaming import ChunkReader
from ptychoflow.scanfile import Scan, ScanWriter, read_scan
from ptychoflow.sim.physics import simulate_scan


@pytest.fixture(scope="module")
def scan() -> Scan:
    return simulate_scan(n_frames=50, size=64, seed=4)


def writer(path: Path, scan: Scan, frames: int = 16) -> ScanWriter:
    return ScanWriter(path, scan.frame_shape, scan.data.dtype, energy_ev=scan.energy_ev,
                      distance_m=scan.distance_m, pixel_size_m=scan.pixel_size_m,
                      probe=scan.probe, truth=scan.truth,
                      truth_pixel_size_m=scan.truth_pixel_size_m,
                      expected_frames=scan.n_frames, chunks=ChunkPolicy(frames))


def write_all(w: ScanWriter, scan: Scan, start: int = 0, stop: int | None = None) -> None:
    for i in range(start, scan.n_frames if stop is None else stop):
        w.append(scan.data[i], *scan.positions[i])


def test_the_writer_flushes_whole_chunks_and_a_manifest_that_adds_up(tmp_path: Path,
                                                                     scan: Scan) -> None:
    w = writer(tmp_path / "scan_0001.h5", scan)
    write_all(w, scan, 0, 20)
    folder = tmp_path / "scan_0001.stream"
    assert stream_folder(w.path) == folder and scan_stem(folder) == "scan_0001"
    assert sorted(complete_chunks(folder, "scan_0001")) == [1]  # 16 frames: one chunk
    assert read_manifest(folder, "scan_0001") is None  # still acquiring
    write_all(w, scan, 20)
    final = w.close()
    chunks = complete_chunks(folder, "scan_0001")
    assert sorted(chunks) == [1, 2, 3, 4]  # 16 + 16 + 16 + the last 2
    m = read_manifest(folder, "scan_0001")
    assert m is not None and m["complete"] and m["chunks"] == 4 and m["frames"] == 50
    parts = [read_scan(chunks[n]) for n in sorted(chunks)]
    np.testing.assert_array_equal(np.concatenate([p.data for p in parts]), scan.data)
    np.testing.assert_allclose(np.concatenate([p.positions for p in parts]), scan.positions)
    assert parts[0].truth is not None and parts[1].truth is None  # the truth travels once
    assert parts[1].probe is not None and parts[0].metadata["expected_frames"] == 50
    np.testing.assert_array_equal(read_scan(final).data, scan.data)  # the whole file too
    assert not list(folder.glob("*.part"))


def test_a_discarded_acquisition_ends_its_chunks_with_the_reason(tmp_path: Path,
                                                                 scan: Scan) -> None:
    w = writer(tmp_path / "scan_0002.h5", scan)
    write_all(w, scan, 0, 17)
    w.discard()
    folder = tmp_path / "scan_0002.stream"
    reader = ChunkReader(folder, "scan_0002", read_scan)
    reader.poll()
    with pytest.raises(ChunkError, match="discarded"):
        assert reader.ended


def test_a_reader_takes_chunks_in_order_and_never_a_partial_copy(tmp_path: Path,
                                                                 scan: Scan) -> None:
    w = writer(tmp_path / "s.h5", scan)
    write_all(w, scan)
    w.close()
    folder = tmp_path / "s.stream"
    second = folder / "s.chunk-00002.h5"
    hidden = folder / ".s.chunk-00002.h5.123.part"  # how a transfer's copy looks mid-way
    second.rename(hidden)
    reader = ChunkReader(folder, "s", read_scan)
    assert reader.poll() == 16 and not reader.ended  # chunk 3 waits for chunk 2
    hidden.rename(second)
    assert reader.poll() == 34 and reader.ended
    np.testing.assert_array_equal(reader.scan().data, scan.data)
    manifest = folder / manifest_name("s")
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "frames": 49}))
    reader = ChunkReader(folder, "s", read_scan)
    reader.poll()
    with pytest.raises(ChunkError, match="manifest says 49"):
        assert reader.ended


def test_auto_mode_takes_a_stream_while_acquiring_and_not_its_file_again(tmp_path: Path,
                                                                        scan: Scan) -> None:
    watcher = ScanWatcher(tmp_path, streaming=True)
    w = writer(tmp_path / "a.h5", scan)
    write_all(w, scan, 0, 20)
    assert watcher.poll() == [tmp_path / "a.stream"]
    assert check_scan_path(str(tmp_path / "a.stream"), tmp_path) is None
    write_all(w, scan, 20)
    w.close()
    assert watcher.poll() == []  # a.h5 is the stream's scan: its run is under way
    # a stream found only once it ended gets a run on its complete file, as before
    w = writer(tmp_path / "b.h5", scan)
    write_all(w, scan)
    w.close()
    assert watcher.poll() == [tmp_path / "b.h5"]
    # streaming off: the chunks are ignored, never taken for scans
    off = ScanWatcher(tmp_path)
    assert off.poll() == [tmp_path / "a.h5", tmp_path / "b.h5"]


def test_the_ioc_ships_chunks_as_they_complete_and_retries_a_cut_one(tmp_path: Path,
                                                                    scan: Scan,
                                                                    monkeypatch: Any) -> None:
    """A copy that fails part way is retried; the compute site's folder only ever holds
    complete chunks (and hidden .part copies), and the run learns where they are at the
    first chunk, long before the scan ends."""
    real = local._copy_once
    cuts: list[str] = []

    def flaky(src: Path, dest: Path, *a: Any) -> None:
        if src.name.endswith("chunk-00002.h5") and not cuts:
            cuts.append(src.name)
            raise OSError(5, "Input/output error (connection lost)")
        real(src, dest, *a)

    monkeypatch.setattr(local, "_copy_once", flaky)
    monkeypatch.setattr(local.time, "sleep", lambda s: None)  # the retry's back-off
    transfer = LocalTransfer(IocSettings(work_root=str(tmp_path / "work")), None)
    w = writer(tmp_path / "data" / "scan_0003.h5", scan)
    write_all(w, scan, 0, 16)
    run = ActiveRun(7, tmp_path, {}, tmp_path / "run")
    ship = Shipment(run, transfer, tmp_path / "data" / "scan_0003.stream", idle_s=30)
    seen: list[list[str]] = []

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await ship.start()
        dest = Path(first["stream_dir"])
        seen.append(sorted(p.name for p in dest.iterdir()))

        def rest() -> None:
            time.sleep(0.3)
            write_all(w, scan, 16)
            w.close()

        t = threading.Thread(target=rest)
        t.start()
        done = await ship.finish()
        t.join()
        return first, done

    first, done = asyncio.run(go())
    dest = Path(first["stream_dir"])
    assert dest == tmp_path / "work" / "runs" / "run-00007" / "transfer"
    assert seen == [["scan_0003.chunk-00001.h5"]] and first["stream_stem"] == "scan_0003"
    assert cuts == ["scan_0003.chunk-00002.h5"]  # cut once, then retried
    assert done["chunks"] == 4
    reader = ChunkReader(dest, "scan_0003", read_scan)
    reader.poll()
    assert reader.ended
    np.testing.assert_array_equal(reader.scan().data, scan.data)
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]


def test_a_stalled_writer_fails_the_shipment_naming_the_cause(tmp_path: Path,
                                                              scan: Scan) -> None:
    transfer = LocalTransfer(IocSettings(work_root=str(tmp_path / "work")), None)
    w = writer(tmp_path / "scan_0004.h5", scan)
    write_all(w, scan, 0, 16)
    ship = Shipment(ActiveRun(8, tmp_path, {}, tmp_path / "run"), transfer,
                    tmp_path / "scan_0004.stream", idle_s=0.5)

    async def go() -> None:
        await ship.start()
        await ship.finish()

    with pytest.raises(Exception, match="no new chunk for 0.5 s after 1"):
        asyncio.run(go())
    w.discard()


def test_the_live_phase_travels_small_and_becomes_ndstdarrays_pvs() -> None:
    phase = np.linspace(-3, 3, 300 * 200).reshape(300, 200)
    record = encode(phase)
    assert json.dumps(record)  # a progress line carries it
    img = decode(record)
    assert img.shape == (100, 66) and max(img.shape) <= MAX_SIDE  # binned by 3
    assert abs(float(img.mean()) - float(phase[:300, :198].mean())) < 0.02
    values = live_phase_values(record, 5)
    assert values[CONTROL.recon_phase_array_size0.suffix] == 66  # width, as areaDetector
    assert values[CONTROL.recon_phase_array_size1.suffix] == 100
    assert values[CONTROL.recon_phase_array_data.suffix].size == 6600
    assert values[CONTROL.recon_phase_unique_id.suffix] == 5
    with pytest.raises(ValueError, match="live phase"):
        decode({"shape": [4, 4], "f16": "AAAA"})
