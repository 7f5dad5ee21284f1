"""Continuous training of PtychoNN on the growing training set.

One round: load every pair in the set, warm-start from the best checkpoint so
far, train with Adam, a one-cycle learning rate (warm-up to 2e-3 over the first
fifth of the round, then annealed to nearly zero) and L1 loss (mixed precision
on a GPU), and keep the network with the lowest validation loss. One cycle per
round, not the earlier triangular2 cycle of 1e-4 to 5e-4: on the demo's scans it
reached in 40 epochs the agreement the cyclic schedule had after 60 (docs/remote.md);
``schedule="cyclic"`` keeps the old one. The bar is the warm-start network's
own loss on today's validation pairs, so a round that does not improve leaves
the previous best in place. Checkpoints are written to a temporary name and
renamed, so a failed or aborted round never corrupts the best one.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptychoflow.remote._files import atomic_path
from ptychoflow.remote.dataset import TrainSet
from ptychoflow.remote.ptychonn import Checkpoint, PtychoNN, PtychoNNConfig
from ptychoflow.remote.recon import Progress

SCHEDULES = ("onecycle", "cyclic")
"""Learning-rate schedules of a round: one warm-up and anneal, or triangular2 cycles."""


class TrainingError(RuntimeError):
    """A training round that cannot run or went wrong; the message names the cause."""


@dataclass
class TrainSettings:
    """Hyper-parameters of one round; recorded in the checkpoint and the model card."""

    epochs: int = 50
    val_fraction: float = 0.1
    batch_size: int = 16
    base_lr: float = 1e-4
    max_lr: float = 2e-3
    half_cycle_epochs: int = 6
    schedule: str = "onecycle"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    warm_start: bool = True
    channels: tuple[int, ...] = (16, 32, 64, 128)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train_epochs must be at least 1, got {self.epochs}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie between 0 and 1, got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"train_batch_size must be at least 1, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSettings:
        """Pick this stage's keys out of the workflow's shared parameter dict."""
        return cls(
            epochs=int(params.get("train_epochs", 50)),
            val_fraction=float(params.get("val_fraction", 0.1)),
            batch_size=int(params.get("train_batch_size", 16)),
            base_lr=float(params.get("base_lr", 1e-4)),
            max_lr=float(params.get("max_lr", 2e-3)),
            half_cycle_epochs=int(params.get("half_cycle_epochs", 6)),
            schedule=str(params.get("schedule", "onecycle")).lower(),
            seed=int(params.get("seed", 0) or 0),
            device=str(params.get("device", "auto")).lower(),
            amp=bool(params.get("amp", True)),
            warm_start=bool(params.get("warm_start", True)),
            channels=tuple(params.get("channels", (16, 32, 64, 128))),
        )


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU where torch sees one, else the CPU."""
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("device=gpu was asked for but torch sees no CUDA GPU; set "
                                "device to cpu or auto")
        return torch.device("cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write a checkpoint atomically."""
    with atomic_path(path) as tmp:
        torch.save({"config": ckpt.config.to_dict(), "state": ckpt.state, "meta": ckpt.meta},
                   tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    import pickle

    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return Checkpoint(PtychoNNConfig.from_dict(d["config"]), d["state"], dict(d["meta"]))
    except (OSError, RuntimeError, KeyError, EOFError, TypeError, pickle.UnpicklingError) \
            as exc:
        raise TrainingError(f"checkpoint {path} is unreadable ({exc}); point checkpoint at "
                            "a good one or remove it to train from scratch") from exc


def _evaluate(model: PtychoNN, x: torch.Tensor, y: torch.Tensor, bs: int,
              device: torch.device, amp: bool) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb, yb = x[i:i + bs].to(device), y[i:i + bs].to(device)
            with torch.autocast(device.type, enabled=amp):
                pred = model.predict(xb)
            total += float(nn.functional.l1_loss(pred.float(), yb, reduction="sum"))
    return total / y.numel()


def _scheduler(opt: torch.optim.Optimizer, s: TrainSettings,
               iters: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The round's learning-rate schedule, stepped once per mini-batch."""
    if s.schedule == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=s.base_lr, max_lr=s.max_lr, step_size_up=s.half_cycle_epochs * iters,
            mode="triangular2", cycle_momentum=False)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.max_lr,
                                               total_steps=s.epochs * iters, pct_start=0.2)


def _resume_path(ts: TrainSet) -> Path:
    return ts.root / "checkpoints" / "resume.pt"


def _deadline_near(deadline: float | None, epoch_s: float) -> bool:
    """Whether one more epoch (with a margin for saving) might outlast the allocation."""
    return deadline is not None and time.time() + 1.5 * epoch_s + 30.0 > deadline


def train_round(ts: TrainSet, s: TrainSettings, progress: Progress | None = None,
                deadline: float | None = None, resume: bool = False) -> dict[str, Any]:
    """Train once on everything in ``ts``; returns the round's record.

    With a ``deadline`` (epoch seconds: the end of the batch allocation this runs
    in), a round that would not finish in time saves its whole state to
    ``checkpoints/resume.pt`` after an epoch and returns ``{"resume": True, ...}``;
    called again with ``resume=True`` (in a new allocation) it goes on from that
    epoch, so an allocation's walltime never loses a round.
    """
    xt, yt, xv, yv = (torch.from_numpy(a) for a in ts.load(s.val_fraction))
    device = pick_device(s.device)
    amp = s.amp and device.type == "cuda"
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    config = PtychoNNConfig(ts.output_size, s.channels, ts.amplitude)
    warm = s.warm_start and ts.best_checkpoint.exists()
    prev: Checkpoint | None = load_checkpoint(ts.best_checkpoint) if warm else None
    if prev is not None and prev.config != config:
        raise TrainingError(f"the best checkpoint in {ts.root} is a {prev.config} network but "
                            f"this round asks for {config}; use a new train_dir")
    model = prev.model() if prev is not None else PtychoNN(config)
    model.to(device)
    n_out = len(model.output_names)
    if yt.shape[1] != n_out:
        raise TrainingError(f"labels have {yt.shape[1]} channels, the network {n_out}")
    best = _evaluate(model, xv, yv, 64, device, amp) if prev is not None else math.inf
    start_best = best
    opt = torch.optim.Adam(model.parameters(), lr=s.base_lr)
    iters = max(1, math.ceil(len(xt) / s.batch_size))
    sched = _scheduler(opt, s, iters)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    history: list[dict[str, float]] = []
    improved_epoch, first_epoch, before = 0, 1, 0.0
    if resume:
        try:
            r = torch.load(_resume_path(ts), map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise TrainingError(f"cannot resume from {_resume_path(ts)} ({exc}); remove it to "
                                "train the round anew") from exc
        model.load_state_dict(r["model"])
        opt.load_state_dict(r["opt"])
        sched.load_state_dict(r["sched"])
        scaler.load_state_dict(r["scaler"])
        gen.set_state(r["gen"])
        best, start_best, improved_epoch = r["best"], r["start_best"], r["improved_epoch"]
        history, first_epoch, before = r["history"], r["epoch"] + 1, r["seconds"]
    t0 = time.perf_counter() - before
    for epoch in range(first_epoch, s.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), s.batch_size):
            idx = order[i:i + s.batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = nn.functional.l1_loss(model.predict(xb).float(), yb)
            if not torch.isfinite(loss):
                raise TrainingError(f"training diverged at epoch {epoch} (loss {float(loss)}); "
                                    f"the best checkpoint {ts.best_checkpoint} is unchanged; "
                                    "lower max_lr or check the pairs")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            with warnings.catch_warnings():
                # AMP skips the optimizer step on overflow; the scheduler then warns
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                sched.step()
            total += float(loss) * len(idx)
        train_loss = total / len(xt)
        val = _evaluate(model, xv, yv, 64, device, amp)
        if val < best:
            best, improved_epoch = val, epoch
            meta = {"best_val_loss": val, "epoch": epoch, "train_loss": train_loss,
                    "scans": [sc["key"] for sc in ts.scans], "pairs": len(xt) + len(xv),
                    "val_pairs": len(xv), "settings": {**asdict(s),
                                                       "channels": list(s.channels)},
                    "round": (prev.meta.get("round", 0) if prev else 0) + 1,
                    "preprocess": ts.preprocess.to_dict(), "geometry": ts.geometry,
                    "output_pixel_size_m": ts.output_pixel_size_m, "time": time.time()}
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            save_checkpoint(ts.best_checkpoint, Checkpoint(config, state, meta))
        history.append({"epoch": epoch, "loss": train_loss, "val_loss": val})
        if progress is not None:
            progress(epoch / s.epochs, epoch=epoch, loss=train_loss, val_loss=val,
                     best_val_loss=best)
        if epoch < s.epochs and _deadline_near(deadline, time.perf_counter() - t_epoch):
            with atomic_path(_resume_path(ts)) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                            "gen": gen.get_state(), "best": best, "start_best": start_best,
                            "improved_epoch": improved_epoch, "history": history,
                            "epoch": epoch, "seconds": time.perf_counter() - t0}, tmp)
            return {"resume": True, "resume_from": str(_resume_path(ts)), "epoch": epoch,
                    "epochs": s.epochs, "best_val_loss": best,
                    "checkpoint": str(ts.best_checkpoint)}
    _resume_path(ts).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {"checkpoint": str(ts.best_checkpoint), "best_val_loss": best, "epochs": s.epochs,
            "pairs": int(len(xt) + len(xv)), "train_pairs": int(len(xt)),
            "val_pairs": int(len(xv)), "warm_start": prev is not None,
            "start_val_loss": None if math.isinf(start_best) else start_best,
            "improved": improved_epoch > 0, "best_epoch": improved_epoch,
            "seconds": seconds, "samples_per_s": s.epochs * len(xt) / seconds,
            "resumed": resume,
            "device": device.type, "amp": amp, "history": history}


def predict(model: PtychoNN, x: np.ndarray, batch: int = 64,
            device: str = "cpu") -> np.ndarray:
    """Run the PyTorch network on preprocessed inputs (N, 1, S, S) -> (N, n_out, S, S)."""
    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model.predict(torch.from_numpy(x[i:i + batch]).to(device)).cpu().numpy())
    return np.concatenate(out)
