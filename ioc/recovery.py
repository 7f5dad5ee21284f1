"""After a crash: interrupted runs marked Failed, and what they left half-written removed.

A ``kill -9`` (or a power cut) stops a run in the middle of a stage. The
registry already records every transition as it happens, so the run's history
is whole; what is not whole is the stage's folder: a transfer's hidden
``.NAME.part``, a solver's or an exporter's ``*.part``, outputs of a stage
that never finished. When a stage fails while the IOC runs, the orchestrator
removes its folder; after a crash nobody did, so the next start does it here,
before anything runs, and says what it removed. Files of finished stages stay:
they are what the registry's results point at.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.stagetable import STAGES

log = logging.getLogger(__name__)

# where the stages of a run write (see Orchestrator.run), and the shared outputs
WORK_FOLDERS = ("runs", "models", "training")


def run_dir(work: Path, run_id: int) -> Path:
    """The folder of run ``run_id``'s stage outputs."""
    return work / "runs" / f"run-{run_id:05d}"


@dataclass
class Recovered:
    """What a start found and undid: interrupted runs (id -> state) and removed paths."""

    runs: dict[int, str] = field(default_factory=dict)
    removed: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log and Message_RBV."""
        where = ", ".join(f"run {i} in {s}" for i, s in self.runs.items())
        return (f"interrupted: {where}; removed {len(self.removed)} partial output(s): "
                + ", ".join(p.name for p in self.removed[:5])
                + (" ..." if len(self.removed) > 5 else ""))


def recover(registry: Registry, work: Path) -> Recovered:
    """Mark the runs a crash left active as Failed; remove their unfinished stage folders
    and every ``*.part`` file under the work folders (nothing is running at a start).
    """
    ids = registry.recover()
    done = Recovered()
    stage_of = {s.state: s.name for s in STAGES}
    for run_id in ids:
        run = registry.run(run_id)
        states = [e["state"] for e in (run or {}).get("events", [])]
        state = states[-2] if len(states) >= 2 else "start"  # the last is the Failed just set
        done.runs[run_id] = state
        stage = stage_of.get(state)
        folder = run_dir(work, run_id) / stage if stage else None
        if folder is not None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            done.removed.append(folder)
    for sub in WORK_FOLDERS:
        for part in sorted((work / sub).rglob("*.part")) if (work / sub).exists() else []:
            try:
                part.unlink()
                done.removed.append(part)
            except OSError as exc:  # a folder named *.part, or a read-only copy
                log.warning("could not remove %s left by a crash: %s", part, exc)
    if done.runs or done.removed:
        log.warning("after a crash: %s", done.summary())
    return done
