"""Faults the IOC must survive with nothing lost: kill -9 in every stage, a full disk.

Each test checks the outcome, not only that the IOC came back: the registry
holds every run and model, the interrupted run is Failed naming its stage,
settings are restored, nothing half-written is left under the work folder,
and a new run goes to Done.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from ioc_helpers import make_scan, wait_for
from test_ioc_restart import fresh_context
from test_ioc_workflow import message, put_start, state, wait_final

from ptychoflow.epicsenv import isolated_env, random_prefix
from ptychoflow.pvnames import EDGE
from ptychoflow.scanfile import Scan, write_scan
from tests.conftest import ServerProcess, wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

# stages that take a minute over a scan named slow*, half-writing their output meanwhile
SLOW = {"Reconstructing": {"reconstruct": "ioc_test_stages:reconstruct_slow"},
        "Training": {"train": "ioc_test_stages:train_slow_half"},
        "Deploying": {"export": "ioc_test_stages:export_slow"},
        "Transferring": {}}  # a scan big enough that its copy takes a while
SETTINGS = {"Recon:Epochs": 3, "Train:Epochs": 4, "Train:ValFraction": 0.25}
BIG_SCAN_MB = 256


def _big_scan(path: Path) -> Path:
    n, size = BIG_SCAN_MB * (1 << 20) // (128 * 128 * 2), 128
    data = np.random.default_rng(1).integers(0, 1000, (n, size, size), dtype=np.uint16)
    return write_scan(path, Scan(data=data, positions=np.zeros((n, 2)), energy_ev=8800.0,
                                 distance_m=2.0, pixel_size_m=75e-6))


def run_message(ioc: Any, run_id: int) -> str:
    """The message the registry holds for run ``run_id``."""
    db = sqlite3.connect(ioc.work / "registry.sqlite")
    try:
        return str(db.execute("SELECT message FROM runs WHERE id=?", (run_id,)).fetchone()[0])
    finally:
        db.close()


def _parts(work: Path) -> list[Path]:
    return sorted(p for p in work.rglob("*") if p.name.endswith(".part"))


def _kill_in(ioc: Any, pva: Any, wanted: str, run: int) -> None:
    """kill -9 once run ``run`` is half-way through writing in state ``wanted``."""
    run_dir = ioc.work / "runs" / f"run-{run:05d}"
    where = {"Transferring": run_dir / "transfer", "Reconstructing": run_dir / "reconstruct",
             "Training": run_dir / "train", "Deploying": ioc.work / "models"}[wanted]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _parts(where):  # mid-write: the worst moment
            assert state(pva, ioc) == wanted
            ioc.kill9()
            return
        time.sleep(0.005)
    raise AssertionError(f"run {run} never wrote in {wanted}: {state(pva, ioc)}\n{ioc.log()}")


@pytest.mark.parametrize("stage", list(SLOW))
def test_kill9_in_each_stage_loses_nothing_and_the_next_run_completes(iocs, pva, stage):
    ioc = iocs.start(stages=SLOW[stage])
    for suffix, v in SETTINGS.items():
        pva.put(ioc.pv(suffix), v)
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "first.h5")))
    assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Done", message(pva, ioc)
    v1 = sorted((ioc.work / "models").iterdir())
    big = stage == "Transferring"
    scan = _big_scan(ioc.data / "big.h5") if big else make_scan(ioc.data / "slow.h5")
    pva.put(ioc.pv("Scan:Path"), str(scan))
    _kill_in(ioc, pva, stage, put_start(pva, ioc))
    assert _parts(ioc.work), "the kill came before anything was half-written"

    again = iocs.start(prefix=ioc.prefix, stages=SLOW[stage])
    pva = fresh_context(again)
    try:
        # settings restored, the registry whole, the interrupted run Failed naming its stage
        assert {s: pva.get(again.pv(s)) for s in SETTINGS} == pytest.approx(SETTINGS)
        assert state(pva, again) == "Failed" and "interrupted" in message(pva, again)
        assert pva.get(again.pv("Model:Version_RBV")) == 1
        db = sqlite3.connect(again.work / "registry.sqlite")
        runs = db.execute("SELECT id, state, message FROM runs ORDER BY id").fetchall()
        models = [r[0] for r in db.execute("SELECT version FROM models")]
        db.close()
        assert [r[:2] for r in runs] == [(1, "Done"), (2, "Failed")]
        assert f"while the run was {stage}" in runs[1][2]
        assert models == [1]
        # nothing half-written left, the finished stages' outputs kept
        assert _parts(again.work) == []
        assert sorted((again.work / "models").iterdir()) == v1
        assert (again.work / "runs" / "run-00001" / "train").is_dir()
        if stage != "Transferring":
            assert (again.work / "runs" / "run-00002" / "transfer" / scan.name).is_file()
        assert "removed" in again.log()
        # and the next run completes, making model v2
        if big:
            scan.unlink()
        pva.put(again.pv("Scan:Path"), str(make_scan(again.data / "third.h5")))
        n = put_start(pva, again)
        assert wait_final(pva, again, 60, run=n) == "Done", message(pva, again)
        assert pva.get(again.pv("Model:Version_RBV")) == 2
        assert again.stop() == 0  # once its report is written
        assert _parts(again.work) == []
    finally:
        pva.close()


# ---- bad scan files -------------------------------------------------------------------------
def _cut(path: Path) -> Path:
    os.truncate(path, path.stat().st_size // 2)
    return path


def _inconsistent(path: Path) -> Path:
    with h5py.File(path, "a") as f:  # 5 x positions for 20 frames
        x = f["entry/instrument/positions/x"][:5]
        del f["entry/instrument/positions/x"]
        f["entry/instrument/positions/x"] = x
    return path


def test_bad_scan_files_are_refused_at_every_stage_naming_the_cause(iocs, pva):
    from p4p.client.thread import RemoteError

    ioc = iocs.start(stages={"reconstruct": "ioc_test_stages:reconstruct_cut_input"})
    good = make_scan(ioc.data / "good.h5", n=20, size=16)
    pva.put(ioc.pv("Scan:Path"), str(good))
    junk = ioc.data / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    # at the put: the header is read, so each is refused with its cause
    for path, cause in [(_cut(make_scan(ioc.data / "cut.h5", n=20, size=16)), "truncated"),
                        (junk, "not a readable HDF5"),
                        (_inconsistent(make_scan(ioc.data / "odd.h5", n=20, size=16)),
                         "positions x (5,) and y (20,) must be equal")]:
        with pytest.raises(RemoteError):
            pva.put(ioc.pv("Scan:Path"), str(path))
        assert cause in message(pva, ioc) and path.name in message(pva, ioc)
        assert pva.get(ioc.pv("Scan:Path")) == str(good)
    # at the start: accepted whole, cut before the run starts
    later = make_scan(ioc.data / "later.h5", n=20, size=16)
    pva.put(ioc.pv("Scan:Path"), str(later))
    _cut(later)
    runs = pva.get(ioc.pv("Workflow:RunId_RBV"))
    with pytest.raises(RemoteError):
        pva.put(ioc.pv("Workflow:Start"), 1)
    assert "truncated" in message(pva, ioc)
    assert pva.get(ioc.pv("Workflow:RunId_RBV")) == runs  # no run
    # in a stage: the compute site's copy cut short before the solver reads it
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "cutsite.h5", n=20, size=16)))
    assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Failed"
    said = run_message(ioc, runs + 1)
    assert said.startswith("Failed in Reconstructing: ScanFileError") and "truncated" in said
    # and a good scan still goes through
    pva.put(ioc.pv("Scan:Path"), str(good))
    assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Done", message(pva, ioc)


# ---- a full disk ----------------------------------------------------------------------------
DISK_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of DISK_MB of its own (tmpfs), so the test can fill it."""
    disk = tmp_path / "work"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up, then give back ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    block = b"\1" * (1 << 16)
    try:
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


class Stream:
    """Frames to the edge at 50 Hz from a thread, until closed."""

    def __init__(self, source: FrameSource) -> None:
        self.source, self.uid, self._stop = source, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ones = np.ones((32, 32), np.float32)
        while not self._stop.wait(0.02):
            self.uid += 1
            self.source.publish(ones, self.uid, {"PositionX": 0.0, "PositionY": 0.0})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_full_disk_fails_the_run_naming_the_folder_and_the_edge_keeps_serving(
        iocs, pva, epics_env, small_disk: Path, tmp_path: Path) -> None:
    # the edge loads its models from the IOC's model folder, on the disk that fills up
    source_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{source_env['EPICS_PVA_SERVER_PORT']}"
    ep = random_prefix()
    source = FrameSource(source_env, ep + "Src:Image")
    models = small_disk / "models"
    models.mkdir()
    edge = ServerProcess([sys.executable, "-m", "ptychoflow.cli", "edge", "--prefix", ep,
                          "--input", source.pv, "--model-dir", str(models), "--threads", "1"],
                         edge_env, tmp_path / "edge.log")
    names = (epics_env["EPICS_PVA_NAME_SERVERS"] +
             f" 127.0.0.1:{edge_env['EPICS_PVA_SERVER_PORT']}")
    ioc = iocs.start(work=small_disk, edge_prefix=ep, extra_env={"EPICS_PVA_NAME_SERVERS": names},
                     stages={"reconstruct": "ioc_test_stages:reconstruct_fills",
                             "export": "ioc_test_stages:export_affine"},
                     tables={"transfer.local": {"retries": 1, "backoff_s": 0.1}})
    edge_pvs = Collector(edge_env)
    stream: Stream | None = None
    try:
        wait_for_pva(edge_env, EDGE.processed.name(ep), timeout=60, server=edge)
        served = lambda: edge_pvs.get(EDGE.model_version.name(ep))  # noqa: E731
        processed = lambda: edge_pvs.get(EDGE.processed.name(ep))  # noqa: E731
        pva.put(ioc.pv("Recon:Epochs"), 2)
        pva.put(ioc.pv("Train:Epochs"), 2)
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "a.h5")))
        assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Done", message(pva, ioc)
        wait_for(lambda: served() == 1, 30, "the edge serving model v1", ioc)
        stream = Stream(source)
        wait_for(lambda: processed() > 10, 30, "the edge processing", ioc)

        # a disk that is all but full: a big scan's copy fails, naming the folder
        filler = _fill(small_disk, leave=1 << 20)
        before = processed()
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "big.h5", n=100, size=128)))
        assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Failed"
        said = run_message(ioc, 2)  # Message_RBV may say next that its report was not written
        assert said.startswith("Failed in Transferring: the disk holding") and \
            str(small_disk) in said and "is full" in said and "free space there" in said, said
        # ... and a stage that writes more than is left fails the same way
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "fill.h5")))
        assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Failed"
        said = run_message(ioc, 3)
        assert said.startswith("Failed in Reconstructing: the disk holding") and \
            "is full" in said, said
        # a setting put on a disk with no room at all applies, and says it is not saved
        _fill(small_disk, leave=0)
        # the failed runs' reports are written off the loop and say so on Message_RBV: let
        # them be said first, so they do not overwrite what the put says
        wait_for(lambda: "run 3 not written" in ioc.log() or "run 3 report" in ioc.log(), 20,
                 "run 3's report", ioc)
        pva.put(ioc.pv("Recon:Epochs"), 3)
        wait_for(lambda: "could not be saved" in message(pva, ioc), 10, "not saved", ioc)
        assert pva.get(ioc.pv("Recon:Epochs")) == 3
        saved = json.loads((small_disk / "autosave.json").read_text())  # still whole
        assert saved["Recon:Epochs"] == 2
        # the edge served all along; nothing half-written; the registry whole
        wait_for(lambda: processed() > before + 50, 30, "the edge still serving", ioc)
        assert edge.alive() and served() == 1
        assert [p for p in small_disk.rglob("*") if p.name.endswith(".part")] == []
        db = sqlite3.connect(small_disk / "registry.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = [r[0] for r in db.execute("SELECT state FROM runs ORDER BY id")]
        db.close()
        assert states == ["Done", "Failed", "Failed"]
        assert not (small_disk / "runs" / "run-00003" / "reconstruct").exists()

        # space returns: the next run completes and its model reaches the edge
        filler.unlink()
        pva.put(ioc.pv("Train:Epochs"), 4)  # a better model than v1, so it is deployed
        pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "c.h5")))
        assert wait_final(pva, ioc, 60, run=put_start(pva, ioc)) == "Done", message(pva, ioc)
        wait_for(lambda: served() == 2, 30, "the edge serving model v2", ioc)
        assert "Traceback" not in edge.log() and "Traceback" not in ioc.log()
    finally:
        if stream is not None:
            stream.close()
        edge_pvs.close()
        edge.stop()
        source.stop()
        ioc.stop()
