"""Streaming rPIE through the IOC, with real processes: the detector simulator writes its scan
in chunks (``--stream-frames``) into the data root of an IOC in Auto mode with
Recon:Streaming On. The run reconstructs while the detector is still acquiring, the live
phase appears on the Recon:Phase PVs (CA, areaDetector's NDStdArrays) before the scan ends,
and the run then trains and exports on the whole scan as usual; the complete scan file that
appears at the end does not start a second run.

The stages are the shipped ones (pty-chi on the CPU, tiny epochs); the scan is small (64x64
frames) and slow (about 19 s of acquisition), so the reconstruction has time to follow it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ioc_helpers import wait_for
from test_ioc_workflow import StateLog, message, run_id, state, wait_final

from ptychoflow.epicsenv import isolated_env, pva_conf
from tests.conftest import ServerProcess, wait_for_pva

pytest.importorskip("torch")
pytest.importorskip("ptychi")
pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

FRAMES, RATE, CHUNK = 192, 10.0, 32  # ~19 s of acquisition; chunks of 32 or more
REAL_STAGES = {name: f"ptychoflow.remote.stages:{name}"
               for name in ("reconstruct", "train", "export")}


class CaWatch:
    """Every value a pyepics (Channel Access) monitor sees of one PV, with what the detector
    had done when it arrived (``acquiring()`` at that moment)."""

    def __init__(self, pvname: str, acquiring: Any) -> None:
        import epics

        self.seen: list[tuple[int, bool]] = []
        self.acquiring = acquiring
        self.pv = epics.PV(pvname, callback=self._cb, auto_monitor=True)
        assert self.pv.wait_for_connection(10), f"{pvname} did not connect over CA"

    def _cb(self, value: Any = None, **_: Any) -> None:
        self.seen.append((int(value), self.acquiring()))

    def close(self) -> None:
        self.pv.clear_callbacks()
        self.pv.disconnect()


def _live_image(ioc: Any) -> tuple[int, int, np.ndarray] | None:
    """Width, height and data of one live image over CA (``None`` if a new image of another
    size arrived between the reads: the object grows as chunks arrive)."""
    import epics

    def size() -> tuple[int, int]:
        return (int(epics.caget(ioc.pv("Recon:Phase:ArraySize0_RBV"), timeout=5)),
                int(epics.caget(ioc.pv("Recon:Phase:ArraySize1_RBV"), timeout=5)))

    before = size()
    data = np.asarray(epics.caget(ioc.pv("Recon:Phase:ArrayData"), timeout=5))
    return (*before, data) if size() == before else None


def test_a_scan_being_acquired_is_reconstructed_live_and_then_trains_once(
        iocs: Any, pva: Any, epics_env: dict[str, str], tmp_path: Path) -> None:
    import epics
    from p4p.client.thread import Context

    ioc = iocs.start(stages=REAL_STAGES)
    sim_env = isolated_env()
    prefix = "STRM" + tmp_path.name[-6:].replace("_", "") + ":"
    sim = ServerProcess(
        [ioc.proc.args[0], "-m", "ptychoflow.cli", "sim", "--prefix", prefix,
         "--frames", str(FRAMES), "--size", "64", "--rate", str(RATE), "--step", "4e-7",
         "--probe-diameter", "36", "--out", str(ioc.data), "--name", "live",
         "--stream-frames", str(CHUNK), "--wait", "--delay", "0"],
        sim_env, tmp_path / "sim.log")
    detector = Context("pva", conf=pva_conf(sim_env), useenv=False)
    whole = ioc.data / "live_0001.h5"  # what the simulator's writer renames at the end
    watches: list[CaWatch] = []
    try:
        wait_for_pva(sim_env, prefix + "cam1:Acquire", server=sim)

        def counter() -> int:
            return int(detector.get(prefix + "cam1:ArrayCounter_RBV"))

        def acquiring() -> bool:
            return not whole.exists()

        # the operator's settings, through Channel Access
        for suffix, value in (("Recon:Streaming", 1), ("Recon:Epochs", 4),
                              ("Train:Epochs", 2), ("Workflow:Auto", 1)):
            assert epics.caput(ioc.pv(suffix), value, wait=True, timeout=10) == 1, suffix
        assert epics.caget(ioc.pv("Recon:Streaming"), as_string=True) == "On"
        states = StateLog(pva, ioc.pv("Workflow:State_RBV"))
        uid = CaWatch(ioc.pv("Recon:Phase:UniqueId_RBV"), acquiring)
        watches.append(uid)
        detector.put(prefix + "cam1:Acquire", 1)

        # the run reconstructs while the detector is still acquiring
        wait_for(lambda: state(pva, ioc) == "Reconstructing", 60, "Reconstructing", ioc)
        frames_then = counter()
        assert acquiring() and frames_then < FRAMES, (frames_then, message(pva, ioc))
        assert run_id(pva, ioc) == 1
        assert str(epics.caget(ioc.pv("Scan:Path"), as_string=True)).endswith("live_0001.stream")

        # the live phase arrives over CA before the acquisition ends
        wait_for(lambda: any(v > 0 for v, _ in uid.seen), 60, "a live phase image", ioc)
        live = [(v, during) for v, during in uid.seen if v > 0]
        assert live[0][1], f"the first live image came after the scan ended: {uid.seen}"
        width, height, data = wait_for(lambda: _live_image(ioc), 10, "one image's PVs", ioc)
        assert width > 0 and height > 0 and width * height <= 128 * 128, (width, height)
        assert data.shape == (width * height,) and np.isfinite(data).all()  # NORD: one image
        assert np.ptp(data) > 0 and np.abs(data).max() <= math.pi + 1e-2  # a phase image

        # the detector ends; the run goes on to a model, on the whole scan
        wait_for(lambda: whole.exists(), 60, "the complete scan file", ioc)
        assert wait_final(pva, ioc, 150, run=1) == "Done", message(pva, ioc) + ioc.log()
        states.close()
        assert states.states == ["Idle", "Transferring", "Reconstructing", "Training",
                                 "Deploying", "Done"]
        assert counter() == FRAMES, sim.log()  # the detector sent the whole scan
        time.sleep(4 * 0.2 + 0.5)  # a few more looks at the data root by Auto mode
        assert run_id(pva, ioc) == 1  # the complete live_0001.h5 was not taken again
        assert int(pva.get(ioc.pv("Workflow:QueuedScans_RBV"))) == 0
        ids = [v for v, _ in uid.seen]
        assert ids == sorted(ids) and len(set(ids) - {0}) >= 2, ids

        db = sqlite3.connect(ioc.work / "registry.sqlite")
        rows = db.execute("SELECT scan, state, results FROM runs").fetchall()
        db.close()
        ((scan, final, results_text),) = rows
        results = json.loads(results_text)
        assert scan.endswith("live_0001.stream") and final == "Done"
        folder = ioc.data / "live_0001.stream"
        manifest = json.loads((folder / "live_0001.chunks.json").read_text())
        assert manifest["complete"] and manifest["frames"] == FRAMES
        assert results["streaming"] is True and results["chunks"] == manifest["chunks"] >= 2
        # the transfer counts every chunk and the manifest, not the first chunk only
        assert results["bytes"] == sum(f.stat().st_size for f in folder.iterdir())
        assert Path(results["path"]).name == "live_0001.h5"  # assembled at the compute site
        assert results["version"] == 1
    finally:
        for w in watches:
            w.close()
        detector.close()
        sim.stop()
