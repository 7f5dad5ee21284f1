"""pty-chi tasks built, stepped and read out for :mod:`ptychoflow.remote.recon`.

Kept apart from the solver interface so that reconstruction from scratch
(:class:`~ptychoflow.remote.recon.PtychiSolver`) and reconstruction while the
scan is still arriving (:mod:`ptychoflow.remote.streaming`, which grows the
object and keeps the probe between chunks) build their tasks the same way:
the solver is pty-chi's, unchanged; only its start and its data differ.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from ptychoflow.remote.recon import (
    ReconSettings,
    Reconstruction,
    ReconstructionError,
    auto_batch_size,
    initial_probe,
    object_shape_for,
)
from ptychoflow.scanfile import Scan


@contextlib.contextmanager
def torch_state() -> Iterator[None]:
    """pty-chi sets torch's global default device and dtype; put them back afterwards."""
    import torch

    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    det = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_default_device(device)
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(det)


def grow_object(obj: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``obj`` padded with clear object (1+0j) to at least ``shape``, origin kept.

    Both shapes are even (:func:`object_shape_for`), so padding the same on both
    sides keeps the centre pixel, scan position (0, 0), where it was.
    """
    big = (max(shape[0], obj.shape[0]), max(shape[1], obj.shape[1]))
    pad = [((big[i] - obj.shape[i]) // 2,) * 2 for i in range(2)]
    return np.pad(obj.astype(np.complex64), pad, constant_values=1 + 0j)


def ptychi_task(scan: Scan, s: ReconSettings, warm: Reconstruction | None = None) -> Any:
    """A pty-chi task for ``scan``; ``warm`` starts it from an earlier object and probe.

    A warm task (streaming: more frames of the same scan) grows the object to hold
    the new positions and updates the probe from its first epoch, the probe being
    the earlier task's estimate rather than a guess.
    """
    import ptychi.api as api
    import torch
    from ptychi.api.task import PtychographyTask

    pos = scan.positions_px()
    shape = object_shape_for(pos, scan.frame_shape, s.margin_px, s.object_size,
                             str(scan.metadata.get("path", "<scan>")))
    options_cls = {"rPIE": api.RPIEOptions, "ePIE": api.EPIEOptions,
                   "LSQML": api.LSQMLOptions, "DM": api.DMOptions}[s.algorithm]
    o = options_cls()
    # Frames are centred (zero frequency in the middle); pty-chi's far-field model
    # puts zero frequency at the corner, and fft_shift=True shifts the data to match.
    o.data_options.data = scan.data.astype(np.float32, copy=False)
    o.data_options.fft_shift = True
    o.data_options.wavelength_m = scan.wavelength_m
    o.object_options.initial_guess = (grow_object(warm.object, shape) if warm is not None
                                      else np.ones(shape, np.complex64))[None]
    o.object_options.pixel_size_m = scan.object_pixel_size_m
    o.probe_options.initial_guess = (warm.probe if warm is not None
                                     else initial_probe(scan))[None, None]
    o.probe_options.optimizable = s.probe_update
    o.probe_options.optimization_plan.start = 0 if warm is not None else s.probe_update_start
    if s.step_size is not None:
        o.object_options.step_size = s.step_size
        o.probe_options.step_size = s.step_size
    if s.alpha is not None and hasattr(o.object_options, "alpha"):
        o.object_options.alpha = s.alpha
        o.probe_options.alpha = s.alpha
    o.probe_position_options.optimizable = False
    ro = o.reconstructor_options
    ro.num_epochs = s.epochs
    batch = s.batch_size or auto_batch_size(pos, o.probe_options.initial_guess[0, 0])
    ro.batch_size = min(batch, scan.n_frames)
    ro.random_seed = s.seed
    ro.batching_mode = api.BatchingModes.UNIFORM
    ro.allow_nondeterministic_algorithms = False
    use_gpu = s.device in ("gpu", "cuda") or (s.device == "auto" and torch.cuda.is_available())
    if use_gpu and not torch.cuda.is_available():
        raise ReconstructionError("device=gpu was asked for but torch sees no CUDA GPU; "
                                  "set device to cpu or auto")
    ro.default_device = api.Devices.GPU if use_gpu else api.Devices.CPU
    if s.algorithm == "DM" and hasattr(ro, "chunk_length"):
        ro.chunk_length = min(100, scan.n_frames)
    task: Any = PtychographyTask(o, probe_position_y_px=pos[:, 0],
                                 probe_position_x_px=pos[:, 1])
    task.reconstructor.pbar.disable = True
    task.ptychoflow_batch_size = ro.batch_size  # recorded in the result's settings
    return task


def run_epoch(task: Any, s: ReconSettings, errors: list[float]) -> float:
    """One epoch of ``task``; its data error is appended to ``errors``; divergence raises."""
    import torch

    task.run(1)
    epoch = len(errors) + 1
    err = float(task.reconstructor.loss_tracker.table.iloc[-1].loss)
    if not math.isfinite(err) or not bool(torch.isfinite(task.get_data("object")).all()):
        raise ReconstructionError(
            f"{s.algorithm} diverged at epoch {epoch}: the data error is {err} "
            "and the object holds NaN/inf; lower batch_size, step_size or alpha, "
            "or check the frames' geometry (energy, distance, pixel size)")
    if errors and err > 1e4 * min(errors):
        raise ReconstructionError(
            f"{s.algorithm} diverged at epoch {epoch}: the data error grew from "
            f"{min(errors):.3g} to {err:.3g}; lower batch_size, step_size or alpha")
    errors.append(err)
    return err


def task_result(task: Any, scan: Scan, s: ReconSettings, errors: list[float],
                seconds: float) -> Reconstruction:
    """The task's object and probe as a :class:`Reconstruction`."""
    pos = np.stack([task.get_probe_positions_y(as_numpy=True),
                    task.get_probe_positions_x(as_numpy=True)], axis=1)
    return Reconstruction(
        object=np.asarray(task.get_data_to_cpu("object", as_numpy=True)[0], np.complex64),
        probe=np.asarray(task.get_data_to_cpu("probe", as_numpy=True)[0, 0], np.complex64),
        positions_px=np.asarray(pos, np.float64), pixel_size_m=scan.object_pixel_size_m,
        errors=list(errors), seconds=seconds,
        settings={**asdict(s), "batch_size_used": int(task.ptychoflow_batch_size)})


@contextlib.contextmanager
def quiet_ptychi() -> Iterator[None]:
    """pty-chi logs a line per epoch at INFO; the stage reports progress itself."""
    lg = logging.getLogger("ptychi")
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # pty-chi reads its loss with float(tensor) inside autograd: harmless, noisy
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad",
                                    category=UserWarning)
            yield
    finally:
        lg.setLevel(old)




def task_object(task: Any) -> np.ndarray:
    """The task's current object (its first slice) as a numpy array."""
    return np.asarray(task.get_data_to_cpu("object", as_numpy=True)[0])
