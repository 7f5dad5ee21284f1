"""Local transfer: a verified copy on this host's (or a shared) file system.

The default back end. A copy goes to a hidden ``.NAME.part`` beside the
destination, is checked against the source's sha256, and only then renamed,
so the destination holds the whole file or nothing. A destination that is
already identical (same size and sha256) is not copied again. An ``OSError``
(a full disk, a network file system that went away) is retried with a
doubling wait before the transfer fails, naming the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychoflow.config import resolve, setting
from ptychoflow.ioc.transfer.base import Moved, TransferError
from ptychoflow.modelcard import sha256_file
from ptychoflow.pvnames import CONTROL
from ptychoflow.stages import Cancelled, Reporter

BLOCK = 8 << 20
SECTION = "transfer.local"


@dataclass
class LocalTransferSettings:
    """``[transfer.local]``: retries and where models go for the edge."""

    retries: int = setting(3, "attempts after the first before a transfer fails")
    backoff_s: float = setting(1.0, "wait before the first retry; doubles each time (s)")
    edge_model_dir: str = setting("", "the edge's model folder (empty: the edge loads models "
                                      "where export wrote them, a shared folder)")

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0")

    @classmethod
    def from_table(cls, table: dict[str, Any] | None) -> LocalTransferSettings:
        """Settings from the TOML table; unknown keys and bad values raise ConfigError."""
        return resolve(cls, SECTION, None, {SECTION: table or {}})


def copy_verified(src: Path, dest: Path, progress: Reporter, retries: int = 3,
                  backoff_s: float = 1.0) -> Moved:
    """Copy ``src`` to ``dest`` atomically and verified; skip it if already identical."""
    if not src.is_file():
        raise TransferError(f"{src}: no such file to transfer; check {CONTROL.scan_path.suffix}")
    if src.name.endswith(".part"):
        raise TransferError(f"{src}: still being written (*.part); wait until it is renamed")
    size = src.stat().st_size
    t0 = time.perf_counter()
    want = sha256_file(src, progress.check)
    if dest.is_file() and dest.stat().st_size == size and sha256_file(dest, progress.check) == want:
        return Moved(str(dest), size, time.perf_counter() - t0, want, skipped=True)
    wait = backoff_s
    for attempt in range(retries + 1):
        try:
            _copy_once(src, dest, size, want, progress)
            return Moved(str(dest), size, time.perf_counter() - t0, want)
        except Cancelled:
            raise
        except (OSError, TransferError) as exc:
            if attempt == retries:
                raise TransferError(f"copying {src.name} to {dest.parent} failed after "
                                    f"{retries + 1} attempt(s): {exc}") from exc
            progress(None, f"copy of {src.name} failed ({exc}); retrying in {wait:.0f} s")
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def _copy_once(src: Path, dest: Path, size: int, want: str, progress: Reporter) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    t0 = time.perf_counter()
    done = 0
    try:
        with src.open("rb") as fi, tmp.open("wb") as fo:
            while block := fi.read(BLOCK):
                fo.write(block)
                h.update(block)
                done += len(block)
                dt = time.perf_counter() - t0
                progress(done / max(size, 1), rate_mb_s=done / 1e6 / dt if dt > 0 else 0.0)
            fo.flush()
            os.fsync(fo.fileno())
        if h.hexdigest() != want or tmp.stat().st_size != size:
            raise TransferError(f"{src.name}: the copy's sha256 differs from the source's "
                                "(the source changed while it was copied?)")
        shutil.copystat(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class LocalTransfer:
    """Copies into the run folder (and, if configured, models into the edge's folder)."""

    name = "Local"
    section = SECTION

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None:
        self.settings = settings
        self.cfg = LocalTransferSettings.from_table(table)

    @property
    def compute_work(self) -> str:
        """The compute site shares this host's work folder."""
        return str(self.settings.work_path)

    def check(self) -> None:
        """Local copies need no configuration; the edge's model folder must be writable."""
        if self.cfg.edge_model_dir:
            folder = Path(self.cfg.edge_model_dir).expanduser()
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise TransferError(f"[transfer.local] edge_model_dir {folder} is not a "
                                    "writable folder; create it or fix the setting")

    def scan_to_compute(self, scan: Path, run_name: str, progress: Reporter) -> Moved:
        """Copy the scan into ``<work>/runs/<run_name>/transfer/``."""
        dest = Path(self.settings.work_path) / "runs" / run_name / "transfer" / scan.name
        return copy_verified(scan, dest, progress, self.cfg.retries, self.cfg.backoff_s)

    def model_to_edge(self, files: Sequence[str], progress: Reporter) -> list[Moved]:
        """Copy model and card into the edge's folder (or leave them where they are)."""
        if not self.cfg.edge_model_dir:
            return [Moved(f, Path(f).stat().st_size, 0.0, skipped=True) for f in files]
        folder = Path(self.cfg.edge_model_dir).expanduser()
        # the card goes first: the edge checks a model against its card when it loads it
        moved = {f: copy_verified(Path(f), folder / Path(f).name, progress, self.cfg.retries,
                                  self.cfg.backoff_s) for f in reversed(files)}
        return [moved[f] for f in files]

    def close(self) -> None:
        """Nothing to release."""
