"""``ptychoflow remote reconstruct|train|export|evaluate``: the remote stages by hand.

Each sub-subcommand runs the same stage function the workflow runs (see
:mod:`ptychoflow.remote.stages`), with settings from the ``[remote]`` section
of the configuration file overridden by flags, a progress bar, and the result
record printed as JSON on stdout. Heavy packages are imported only when a
command runs, so ``ptychoflow --help`` works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ptychoflow.config import add_arguments, resolve, setting

HELP = "remote science by hand: reconstruct (rPIE), train PtychoNN, export ONNX, evaluate"


@dataclass
class RemoteSettings:
    """Settings of the remote stages (TOML section ``[remote]``)."""

    workdir: str = setting(".", "folder for reconstructions and staged files")
    algorithm: str = setting("rPIE", "reconstruction algorithm",
                             choices=["rPIE", "ePIE", "LSQML", "DM"])
    recon_epochs: int = setting(50, "reconstruction epochs")
    step_size: float | None = setting(None, "solver step size (None: the solver's default)")
    alpha: float | None = setting(None, "(r/e)PIE alpha (None: the solver's default)")
    batch_size: int = setting(0, "reconstruction mini-batch (0: automatic, probes rarely "
                                 "overlap)")
    probe_update: bool = setting(True, "refine the probe during reconstruction")
    recon_engine: str = setting("ptychi", "reconstruction engine", choices=["ptychi", "tike"])
    device: str = setting("auto", "compute device", choices=["auto", "cpu", "gpu"])
    train_dir: str = setting("trainset", "the persistent training set and best checkpoint")
    train_epochs: int = setting(50, "training epochs per round")
    val_fraction: float = setting(0.1, "fraction of pairs held out for validation")
    train_batch_size: int = setting(16, "training mini-batch (small batches: more steps "
                                        "per epoch, which this network needs)")
    model_size: int | None = setting(None, "network input size for a new training set "
                                           "(128 or 64; None: 128 for frames over 128, "
                                           "else 64)")
    amplitude: bool = setting(False, "train an amplitude head too (new training sets only)")
    model_dir: str = setting("models", "folder of model-vN.onnx and their cards")
    seed: int = setting(0, "random seed")
    tensorrt: bool = setting(True, "build a TensorRT engine where TensorRT and a GPU exist")
    int8: bool = setting(False, "export also writes model-vN-int8.onnx, calibrated on the scan, "
                                "for CPU edges (ptychoflow edge --int8 serves it)")
    recon_cxi: bool = setting(True, "reconstruct also writes <scan>-recon.cxi: object and probe "
                                    "as CXI in ptychodus' layout, for other ptychography tools")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the sub-subcommands."""
    sub = parser.add_subparsers(dest="remote_command", metavar="STAGE", required=True)
    p = sub.add_parser("reconstruct", help="iterative reconstruction of a scan file")
    p.add_argument("scan", help="scan file (ours .h5, CXI .cxi, an APS Velociprobe "
                                "*_master.h5, or the Siemens-star .npz.bz2)")
    p.set_defaults(func=_run("reconstruct"))
    p = sub.add_parser("train", help="add a scan to the training set and train one round")
    p.add_argument("scan", help="scan file")
    p.add_argument("--reconstruction", required=True, help="its reconstruction (.h5)")
    p.set_defaults(func=_run("train"))
    p = sub.add_parser("export", help="export the best checkpoint to ONNX with its card")
    p.add_argument("scan", help="scan file to measure the model's quality on")
    p.add_argument("--reconstruction", default=None, help="that scan's reconstruction")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint (default: TRAIN_DIR/checkpoints/best.pt)")
    p.add_argument("--version", type=int, default=None,
                   help="model version N (default: the next free number)")
    p.set_defaults(func=_run("export"))
    p = sub.add_parser("evaluate", help="quality of a model (.onnx) or checkpoint (.pt) on a "
                                        "scan")
    p.add_argument("model", help="model-vN.onnx (with its card) or a checkpoint .pt")
    p.add_argument("scan", help="scan file")
    p.add_argument("--reconstruction", default=None, help="that scan's reconstruction")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("quantize", help="an int8 copy of a model (model-vN-int8.onnx) for CPU "
                                        "edges, calibrated on a scan's frames")
    p.add_argument("model", help="model-vN.onnx with its card")
    p.add_argument("scan", help="scan file (.h5) taken for this model")
    p.add_argument("--calibration-frames", type=int, default=256,
                   help="frames to calibrate on (others of the scan measure the error)")
    p.set_defaults(func=quantize)
    for sp in sub.choices.values():
        add_arguments(sp, RemoteSettings)
    p = sub.add_parser("check", help="run a tiny function on a compute site and list how its "
                                     "Python, packages and devices differ from this host's")
    p.add_argument("--backend", required=True, choices=["parsl", "globus-compute"])
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the site")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    # the beamline host's client of the engines does the asking (named, not imported here)
    p.set_defaults(func=lambda args: importlib.import_module("ptychoflow.ioc.sitecheck")
                   .main(args))


class _Bar:
    """Progress callback drawing a tqdm bar on stderr."""

    def __init__(self, stage: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=stage, file=sys.stderr, unit="‰",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float | None = None, message: str = "",
                 **fields: Any) -> None:
        if fraction is not None:
            self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()
                 if k in ("epoch", "error", "loss", "val_loss", "best_val_loss")}
        if message:
            shown["msg"] = message
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _params(args: argparse.Namespace) -> dict[str, Any]:
    settings = resolve(RemoteSettings, "remote", args)
    params = asdict(settings)
    for key in ("reconstruction", "checkpoint", "version"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    return params


def _run(stage: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from ptychoflow.remote import stages

        params = _params(args)
        fn = getattr(stages, stage)
        bar = _Bar(stage)
        try:
            result = fn(args.scan, params["workdir"], params, bar)
        except (ValueError, RuntimeError, OSError) as exc:
            bar.close()
            print(f"ptychoflow remote {stage}: {exc}", file=sys.stderr)
            return 1
        bar.close()
        result.pop("history", None)
        print(json.dumps(result, indent=2, default=str))
        return 0
    return run


def _report(command: str, work: Callable[[], dict[str, Any]]) -> int:
    """Run ``work`` and print its record as JSON; bad input: the cause on stderr, exit 1."""
    try:
        out = work()
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"ptychoflow remote {command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


def quantize(args: argparse.Namespace) -> int:
    """Write the int8 copy and its card; print what was done, with the error it costs."""
    from ptychoflow.remote.quantize import quantize_model

    return _report("quantize", lambda: quantize_model(args.model, args.scan,
                                                      args.calibration_frames))


def evaluate(args: argparse.Namespace) -> int:
    """Print the quality figures of a model or checkpoint on a scan."""
    return _report("evaluate", lambda: evaluate_model(args.model, args.scan,
                                                      args.reconstruction))


def evaluate_model(model: str, scan_path: str, reconstruction: str | None) -> dict[str, Any]:
    """Quality of ``model`` (ONNX with card, or checkpoint) on a scan file."""
    from pathlib import Path

    from ptychoflow.remote.quality import scan_quality
    from ptychoflow.remote.stages import _read, evaluate_scan

    scan = _read(Path(scan_path))
    if model.endswith(".pt"):
        from ptychoflow.remote.train import load_checkpoint

        return evaluate_scan(load_checkpoint(model), scan, reconstruction)[0]
    import onnxruntime as ort

    from ptychoflow.modelcard import ModelCard, card_path, pick_outputs

    card = ModelCard.load(card_path(model))
    card.verify_file(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = card.preprocessing(scan.data)
    names = [o.name for o in sess.get_outputs()]
    phase_index = pick_outputs(names)[0]  # the output the edge publishes as the phase
    phases = sess.run(None, {sess.get_inputs()[0].name: x})[phase_index][:, 0]
    return scan_quality(phases, scan, card.output_pixel_size_m, reconstruction)
