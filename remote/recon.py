"""Iterative reconstruction of a scan: rPIE (default), ePIE, LSQML or DM.

The solver is a small back end behind one interface (:class:`Solver`), picked
by ``ReconSettings.engine``: pty-chi (PyTorch, CPU or GPU) always, Tike only
where it is installed with CuPy and a GPU. The result is a
:class:`Reconstruction`, written to HDF5 atomically by
:func:`write_reconstruction` and, for other ptychography tools, as CXI by
:func:`write_reconstruction_cxi`.

Coordinates: the object array's pixel ``origin_px`` (its centre, ``shape // 2``)
is scan position (0, 0); a frame's centre pixel ``h // 2`` sits on its position.
Training pairs and quality metrics rely on exactly this convention.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from ptychoflow.formats import write_cxi_reconstruction
from ptychoflow.remote._files import atomic_path
from ptychoflow.scanfile import Scan

RECON_FORMAT = "ptychoflow-reconstruction/1"
ALGORITHMS = ("rPIE", "ePIE", "LSQML", "DM")
ENGINES = ("ptychi", "tike")

Progress = Callable[..., None]
log = logging.getLogger(__name__)


class ReconstructionError(RuntimeError):
    """A reconstruction that cannot run or did not converge; the message names the fix."""


@dataclass
class ReconSettings:
    """What the solver needs besides the scan; built from stage parameters."""

    algorithm: str = "rPIE"
    epochs: int = 50
    step_size: float | None = None
    alpha: float | None = None
    batch_size: int = 0
    probe_update: bool = True
    probe_update_start: int = 2
    device: str = "auto"
    engine: str = "ptychi"
    seed: int | None = 0
    object_size: tuple[int, int] | None = None
    margin_px: int = 8

    def __post_init__(self) -> None:
        names = {a.lower(): a for a in ALGORITHMS}
        if str(self.algorithm).lower() not in names:
            raise ValueError(f"unknown reconstruction algorithm {self.algorithm!r}; use one of "
                             f"{', '.join(ALGORITHMS)}")
        self.algorithm = names[str(self.algorithm).lower()]
        if self.epochs < 1:
            raise ValueError(f"recon_epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be at least 1 (0: automatic), got "
                             f"{self.batch_size}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown reconstruction engine {self.engine!r}; use ptychi or tike")
        if self.device not in ("auto", "cpu", "gpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")
        for name in ("step_size", "alpha"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReconSettings:
        """Pick this stage's keys out of the workflow's shared parameter dict."""
        size = params.get("object_size")
        if isinstance(size, int):
            size = (size, size)
        return cls(
            algorithm=str(params.get("algorithm", params.get("recon_algorithm", "rPIE"))),
            epochs=int(params.get("recon_epochs", 50)),
            step_size=_opt_float(params.get("step_size")),
            alpha=_opt_float(params.get("alpha")),
            batch_size=int(params.get("batch_size") or 0),
            probe_update=bool(params.get("probe_update", True)),
            probe_update_start=int(params.get("probe_update_start", 2)),
            device=str(params.get("device", "auto")).lower(),
            engine=str(params.get("recon_engine", "ptychi")).lower(),
            seed=None if params.get("seed", 0) is None else int(params.get("seed", 0)),
            object_size=tuple(size) if size else None,  # type: ignore[arg-type]
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None or v == "" else float(v)


@dataclass
class Reconstruction:
    """An object and probe recovered from one scan."""

    object: np.ndarray
    probe: np.ndarray
    positions_px: np.ndarray
    pixel_size_m: float
    errors: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    source: str = ""

    @property
    def origin_px(self) -> tuple[int, int]:
        """Object pixel of scan position (0, 0)."""
        return self.object.shape[0] // 2, self.object.shape[1] // 2


def object_shape_for(positions_px: np.ndarray, frame: tuple[int, int], margin: int,
                     requested: tuple[int, int] | None = None,
                     source: str = "<scan>") -> tuple[int, int]:
    """Even object size that holds every frame around the centre; refuse a smaller one."""
    reach = np.abs(positions_px).max(axis=0) + np.array(frame) / 2
    need = tuple(int(2 * math.ceil(r + 1)) for r in reach)
    if requested is not None:
        if requested[0] < need[0] or requested[1] < need[1]:
            raise ReconstructionError(
                f"{source}: scan positions reach outside the object: positions plus the "
                f"{frame[0]}x{frame[1]} frame need at least {need[0]}x{need[1]} object pixels "
                f"but object_size is {requested[0]}x{requested[1]}; enlarge object_size or "
                "check the positions' units (metres)")
        return (requested[0] + requested[0] % 2, requested[1] + requested[1] % 2)
    return (need[0] + 2 * margin, need[1] + 2 * margin)


def initial_probe(scan: Scan) -> np.ndarray:
    """The scan's probe, or one guessed from the mean diffraction amplitude.

    Either way its power is set to match the frames under pty-chi's unnormalised
    FFT (counts = ``N*N * sum |probe|^2`` for a clear object), because files differ in
    FFT convention (the simulator's is unitary) and a probe off by orders of
    magnitude makes the first object updates diverge.
    """
    mean = scan.data.astype(np.float64).mean(axis=0)
    if scan.probe is not None:
        probe = scan.probe.astype(np.complex128)
    else:
        probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(np.sqrt(mean))))
    n = probe.shape[0] * probe.shape[1]
    power = float(np.sum(np.abs(probe) ** 2)) * n
    if power > 0 and mean.sum() > 0:
        probe *= np.sqrt(mean.sum() / power)
    return probe.astype(np.complex64)


def auto_batch_size(positions_px: np.ndarray, probe: np.ndarray) -> int:
    """A mini-batch whose probes rarely overlap: half the scanned area over the probe's.

    pty-chi's PIE engines add the updates of all positions of a batch, so
    overlapping probes in one batch multiply the step; dense scans (the
    simulator's spiral) diverge with a fixed batch of 32.
    """
    i2 = np.abs(probe.astype(np.complex128)) ** 2
    area = float(i2.sum() ** 2 / max(float((i2 ** 2).sum()), 1e-300))
    side = math.sqrt(area)
    span = np.ptp(positions_px, axis=0) + side
    return max(1, int(0.5 * span[0] * span[1] / area))


class Solver(Protocol):
    """A reconstruction back end."""

    def run(self, scan: Scan, settings: ReconSettings, progress: Progress | None) -> \
            Reconstruction: ...


class PtychiSolver:
    """pty-chi: rPIE/ePIE/LSQML/DM on CPU or GPU."""

    def run(self, scan: Scan, settings: ReconSettings, progress: Progress | None) -> \
            Reconstruction:
        """Reconstruct one epoch at a time, reporting the data error after each."""
        from ptychoflow.remote.ptychi_task import (
            ptychi_task,
            quiet_ptychi,
            run_epoch,
            task_result,
            torch_state,
        )

        errors: list[float] = []
        t0 = time.perf_counter()
        with torch_state(), quiet_ptychi():
            task = ptychi_task(scan, settings)
            for epoch in range(settings.epochs):
                err = run_epoch(task, settings, errors)
                if progress is not None:
                    progress((epoch + 1) / settings.epochs, epoch=epoch + 1, error=err)
            return task_result(task, scan, settings, errors, time.perf_counter() - t0)


class TikeSolver:
    """Tike's rPIE; only where Tike, CuPy and a GPU are present."""

    def run(self, scan: Scan, settings: ReconSettings, progress: Progress | None) -> \
            Reconstruction:
        """Refuse clearly: the Tike path needs a GPU installation this build does not have."""
        try:
            import cupy  # noqa: F401
            import tike  # noqa: F401
        except ImportError as exc:
            raise ReconstructionError(
                f"recon_engine=tike needs Tike and CuPy on a GPU node ({exc.name} is not "
                "installed); install them there or use recon_engine=ptychi") from exc
        raise ReconstructionError("recon_engine=tike is not wired up in this release; use "
                                  "recon_engine=ptychi (pty-chi is Tike's PyTorch successor)")


SOLVERS: dict[str, Callable[[], Solver]] = {"ptychi": PtychiSolver, "tike": TikeSolver}


def reconstruct_scan(scan: Scan, settings: ReconSettings,
                     progress: Progress | None = None) -> Reconstruction:
    """Run the configured solver on an in-memory scan."""
    rec = SOLVERS[settings.engine]().run(scan, settings, progress)
    rec.source = str(scan.metadata.get("path", ""))
    return rec


def write_reconstruction(path: str | os.PathLike[str], rec: Reconstruction) -> Path:
    """Write the reconstruction HDF5 atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = RECON_FORMAT
        f.attrs["pixel_size_m"] = rec.pixel_size_m
        f.attrs["origin_px"] = np.asarray(rec.origin_px)
        f.attrs["settings"] = json.dumps(rec.settings)
        f.attrs["seconds"] = rec.seconds
        f.attrs["source"] = rec.source
        f.create_dataset("object", data=rec.object)
        f.create_dataset("probe", data=rec.probe)
        f.create_dataset("positions_px", data=rec.positions_px)
        f.create_dataset("error", data=np.asarray(rec.errors, np.float64))
    return Path(path)


def write_reconstruction_cxi(path: str | os.PathLike[str], rec: Reconstruction,
                             scan: Scan) -> Path:
    """Write the reconstruction as CXI (ptychodus' product layout) for other tools.

    The object goes to ``/entry_1/image_2/data``, the probe to
    ``/entry_1/image_1/data`` (linked as ``instrument_1/source_1/illumination``);
    see :mod:`ptychoflow.formats`. Atomic, like :func:`write_reconstruction`.
    """
    return write_cxi_reconstruction(
        path, object_=rec.object, probe=rec.probe, pixel_size_m=rec.pixel_size_m,
        positions_px=rec.positions_px, origin_px=rec.origin_px, energy_ev=scan.energy_ev,
        distance_m=scan.distance_m, detector_pixel_size_m=scan.pixel_size_m,
        errors=rec.errors, title=Path(rec.source).name if rec.source else "",
        note=f"{rec.settings.get('algorithm', '')} reconstruction, {len(rec.errors)} epochs")


def read_reconstruction(path: str | os.PathLike[str]) -> Reconstruction:
    """Read a reconstruction written by :func:`write_reconstruction`."""
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            if f.attrs.get("format") != RECON_FORMAT:
                raise ReconstructionError(f"{p} is not a ptychoflow reconstruction "
                                          f"(format {f.attrs.get('format')!r})")
            return Reconstruction(
                object=f["object"][()], probe=f["probe"][()],
                positions_px=f["positions_px"][()], pixel_size_m=float(f.attrs["pixel_size_m"]),
                errors=[float(e) for e in f["error"][()]],
                settings=json.loads(f.attrs["settings"]), seconds=float(f.attrs["seconds"]),
                source=str(f.attrs["source"]))
    except (OSError, KeyError) as exc:
        raise ReconstructionError(f"{p}: not a readable reconstruction file ({exc}); run "
                                  "'ptychoflow remote reconstruct' again") from exc
