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

import errno
import logging
import re
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


# how a full disk reads where no errno says so: numpy's short write, SQLite, a remote worker's
# exception that came back as text
FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|database or disk is full"
                       r"|\d+ requested and \d+ written")


def no_space(exc: BaseException, work: Path) -> str | None:
    """A failure caused by a full disk, said so: which folder, how much is free, what to do.

    A full disk shows up as ``OSError`` ENOSPC (or EDQUOT, over quota) somewhere in the
    chain of causes (a transfer's copy), or only in an error's text (numpy's short write,
    SQLite, an exception a remote worker sent back). The folder named is the file's, where
    the error knows it, else the work folder every stage writes under.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        coded = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        if coded or FULL_TEXT.search(str(cause)):
            name = getattr(cause, "filename", None)
            folder = Path(name).parent if isinstance(name, str) else work
            try:
                free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
            except OSError:
                free = "free space unknown"
            why = (cause.strerror if isinstance(cause, OSError) and cause.strerror
                   else str(cause))
            return f"the disk holding {folder} is full ({free}; {why}); free space there"
        cause = cause.__cause__ or cause.__context__
    return None
