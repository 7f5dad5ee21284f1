"""Training throughput (samples/s) of PtychoNN and the time of one continuous-training
round for the demo scan size.

    .venv/bin/python benchmarks/training_throughput.py [--frames 963 --size 128 --epochs 5]

The round is the real ``train`` stage (pairs from the rPIE reconstruction, added to a
fresh training set, trained ``--epochs`` epochs); ``round_seconds_50_epochs`` scales it to
the default 50 epochs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def raw_throughput(size: int, batch: int, steps: int, device: str) -> float:
    """Samples per second of forward+backward+Adam on random data."""
    import torch

    from ptychoflow.remote.ptychonn import PtychoNN, PtychoNNConfig
    from ptychoflow.remote.train import pick_device

    dev = pick_device(device)
    amp = dev.type == "cuda"
    model = PtychoNN(PtychoNNConfig(size)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    x = torch.rand(batch, 1, size, size, device=dev)
    y = torch.rand(batch, 1, size, size, device=dev)

    def step() -> None:
        opt.zero_grad()
        with torch.autocast(dev.type, enabled=amp):
            loss = torch.nn.functional.l1_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=963)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--recon-epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from ptychoflow.remote import stages
    from ptychoflow.scanfile import write_scan
    from ptychoflow.sim.physics import simulate_scan

    out: dict[str, Any] = {}
    for size in (64, 128):
        out[f"samples_per_s_{size}"] = raw_throughput(size, 32, a.steps, a.device)
    work = Path(tempfile.mkdtemp(prefix="ptychoflow-train-"))
    src = write_scan(work / "demo.h5", simulate_scan(n_frames=a.frames, size=a.size))
    p: dict[str, Any] = {"recon_epochs": a.recon_epochs, "train_epochs": a.epochs,
                         "device": a.device, "train_dir": str(work / "ts")}
    p.update(stages.reconstruct(str(src), str(work), p))
    t0 = time.perf_counter()
    r = stages.train(str(src), str(work), p)
    round_s = time.perf_counter() - t0
    out.update({"frames": a.frames, "frame_size": a.size, "round_epochs": a.epochs,
                "round_seconds": round_s, "round_training_seconds": r["seconds"],
                "round_samples_per_s": r["samples_per_s"], "pairs": r["pairs"],
                "round_seconds_50_epochs": round_s - r["seconds"] + r["seconds"] * 50 /
                a.epochs, "device": r["device"], "amp": r["amp"]})
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
