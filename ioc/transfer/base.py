"""The contract of a transfer back end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ptychoflow.stages import Reporter


class TransferError(RuntimeError):
    """A transfer that failed for good (after its retries); the message names the cause."""


@dataclass(frozen=True)
class Moved:
    """One file that arrived (or was already there, identical)."""

    path: str
    """Where the file now is, as its consumer (compute stage, edge) opens it."""
    bytes: int
    seconds: float
    sha256: str = ""
    skipped: bool = False
    """An identical file was already at the destination; nothing was sent."""

    @property
    def rate_mb_s(self) -> float:
        """Throughput of this file (0 when skipped)."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 and not self.skipped else 0.0


class Transfer(Protocol):
    """What the orchestrator needs from a transfer back end.

    Constructed as ``cls(settings, table)``: the IOC's settings and the back
    end's TOML table (``[transfer.local]``, ``[transfer.globus]``), or ``None``
    where the configuration has none. Both methods report through ``progress``
    (fraction, message, ``rate_mb_s=``) and stop with
    :class:`~ptychoflow.stages.Cancelled` when it is cancelled; nothing
    half-written is left visible at the destination in any case.
    """

    name: str
    section: str
    """Its TOML table, ``kind.name`` (e.g. ``compute.parsl``)."""

    def __init__(self, settings: Any, table: dict[str, Any] | None) -> None: ...

    @property
    def compute_work(self) -> str:
        """The work folder as stages on the compute site open it (run folders, models,
        the training set live under it there).
        """

    def check(self) -> None:
        """Raise :class:`~ptychoflow.ioc.compute.BackendNotConfigured` (naming the TOML
        section to fill in) or :class:`TransferError` if this back end cannot run now.
        """

    def scan_to_compute(self, scan: Path, run_name: str, progress: Reporter) -> Moved:
        """Send one complete scan file to the compute site's folder of run ``run_name``
        (``<work>/runs/<run_name>/transfer/``); ``Moved.path`` is the file as stages see it.
        """

    def model_to_edge(self, files: Sequence[str], progress: Reporter) -> list[Moved]:
        """Send a model and its card (paths as the compute site wrote them) to the edge's
        model folder; the first ``Moved.path`` is what ``Edge:Model:Load`` is given.
        """

    def close(self) -> None:
        """Release clients and threads."""
