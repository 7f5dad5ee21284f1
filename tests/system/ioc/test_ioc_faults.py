"""Faults the IOC must survive with nothing lost: kill -9 in every stage, a full disk.

Each test checks the outcome, not only that the IOC came back: the registry
holds every run and model, the interrupted run is Failed naming its stage,
settings are restored, nothing half-written is left under the work folder,
and a new run goes to Done.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ioc_helpers import make_scan
from test_ioc_restart import fresh_context
from test_ioc_workflow import message, put_start, state, wait_final

from ptychoflow.scanfile import Scan, write_scan

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
        assert _parts(again.work) == []
    finally:
        pva.close()
