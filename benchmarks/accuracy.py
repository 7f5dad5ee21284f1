"""Accuracy of continuous training: SSIM of the network's stitched phase map on a held-out
simulated scan, against the truth and against rPIE, after training on one and on two scans.

    .venv/bin/python benchmarks/accuracy.py [--frames 963 --size 128 --epochs 50 ...]

Prints one JSON object. The goal quoted in the README: SSIM >= 0.85 against rPIE after
two scans. Each scan has its own object (the simulator's seed moves its features).

Then a sample of another kind (``--new-sample natural``: the simulator's generated
natural-looking texture, no star, no rings): the model trained on the test pattern is
measured on a held-out scan of it, then trained on one and on two scans of it, so
``new_sample_ssim_vs_rpie`` ([after 0, after 1, after 2]) shows what continuous
training buys on a sample the network has never seen. ``--new-sample ""`` skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ptychoflow.remote import stages
from ptychoflow.scanfile import write_scan
from ptychoflow.sim.physics import NATURAL, simulate_scan

GOAL = 0.85


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=963)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--step-m", type=float, default=5e-8)
    ap.add_argument("--photons", type=float, default=1e6)
    ap.add_argument("--recon-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=50, help="training epochs per round")
    ap.add_argument("--model-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--new-sample", default=NATURAL,
                    help="object of the new-sample scans: 'natural', an image file, or ''")
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ptychoflow-accuracy-"))
    base: dict[str, Any] = {"recon_epochs": a.recon_epochs, "train_epochs": a.epochs,
                            "device": a.device, "train_dir": str(work / "trainset"),
                            "model_dir": str(work / "models"), "tensorrt": False}
    if a.model_size:
        base["model_size"] = a.model_size
    t0 = time.perf_counter()

    def scan(seed: int, obj: str | None = None) -> dict[str, Any]:
        src = write_scan(work / f"scan-{seed}.h5", simulate_scan(
            n_frames=a.frames, size=a.size, step_m=a.step_m, photons=a.photons, seed=seed,
            obj=obj))
        p = {**base, "path": str(src)}
        p.update(stages.reconstruct(str(src), str(work), p))
        print(f"reconstructed {src.name}: error {p['final_error']:.4g} in "
              f"{p['recon_seconds']:.1f} s", file=sys.stderr)
        return p

    scans = [scan(seed) for seed in (11, 12, 13)]  # two training scans, then the held-out one
    held = scans[2]
    out: dict[str, Any] = {"frames": a.frames, "size": a.size, "train_epochs": a.epochs,
                           "recon_epochs": a.recon_epochs, "rpie_vs_truth": _rpie_vs_truth(held)}
    for n, p in enumerate(scans[:2], start=1):
        q, r, e = _round(work, p, held)
        out[f"after_{n}_scan{'s' if n > 1 else ''}"] = {
            "ssim_vs_rpie": q["ssim"], "ssim_vs_truth": q["truth_ssim"],
            "phase_rmse_vs_rpie": q["phase_rmse"], "phase_rmse_vs_truth":
                q["truth_phase_rmse"], "psnr_vs_rpie": q["psnr"],
            "best_val_loss": r["best_val_loss"], "warm_start": r["warm_start"],
            "train_seconds": r["seconds"], "samples_per_s": r["samples_per_s"],
            "device": r["device"], "amp": r["amp"], "model": e["model"]}
        print(f"round {n}: SSIM vs rPIE {q['ssim']:.3f}, vs truth {q['truth_ssim']:.3f}",
              file=sys.stderr)
    out["goal_ssim_vs_rpie_after_2"] = GOAL
    out["goal_met"] = out["after_2_scans"]["ssim_vs_rpie"] >= GOAL
    if a.new_sample:
        new = [scan(seed, a.new_sample) for seed in (21, 22, 23)]
        vs_rpie, vs_truth = [], []
        for n in range(3):  # after 0, 1 and 2 training scans of the new sample
            if n:
                q = _round(work, new[n - 1], new[2])[0]
            else:
                q = _quality(work, scans[1], new[2])
            vs_rpie.append(q["ssim"])
            vs_truth.append(q["truth_ssim"])
            print(f"new sample after {n}: SSIM vs rPIE {q['ssim']:.3f}", file=sys.stderr)
        out.update({"new_sample": a.new_sample, "new_sample_ssim_vs_rpie": vs_rpie,
                    "new_sample_ssim_vs_truth": vs_truth,
                    "new_sample_rpie_vs_truth": _rpie_vs_truth(new[2])})
    out["seconds"] = time.perf_counter() - t0
    return out


def _round(work: Path, p: dict[str, Any], held: dict[str, Any]) -> tuple[
        dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train on scan ``p`` (warm start) and measure the exported model on ``held``."""
    r = stages.train(p["path"], str(work), p)
    e = stages.export(held["path"], str(work), {**p, **r, "reconstruction":
                                               held["reconstruction"]})
    return e["quality"], r, e


def _quality(work: Path, p: dict[str, Any], held: dict[str, Any]) -> dict[str, Any]:
    """The current best model, measured on ``held`` without training."""
    from ptychoflow.remote.train import load_checkpoint

    ckpt = load_checkpoint(Path(p["train_dir"]) / "checkpoints" / "best.pt")
    return stages.evaluate_scan(ckpt, stages._read(Path(held["path"])),  # noqa: SLF001
                                held["reconstruction"])[0]


def _rpie_vs_truth(p: dict[str, Any]) -> dict[str, float]:
    """How close rPIE itself gets to the truth on the held-out scan (for context)."""
    from ptychoflow.remote.quality import reconstruction_vs_truth
    from ptychoflow.remote.recon import read_reconstruction
    from ptychoflow.scanfile import read_scan

    return reconstruction_vs_truth(read_reconstruction(p["reconstruction"]),
                                   read_scan(p["path"]))


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
