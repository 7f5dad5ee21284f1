"""The persistent, growing training set of continuous training.

A folder (``train_dir``) holds:

- ``manifest.json``: the preprocessing and output grid every pair shares, and
  the list of scans in the set (scan file, reconstruction, pair file, count);
- ``pairs/<scan>.npz``: that scan's inputs ``x``, labels ``y`` (float16) and a
  fixed uniform number ``u`` per pair; a pair is held out for validation when
  ``u < val_fraction``, so a pair stays in the same split as the set grows;
- ``checkpoints/best.pt``: the best network so far (see :mod:`.train`).

The pair file is written first and the manifest last, each atomically, so a
failed run leaves the set as it was; adding a scan that is already in the set
replaces its pairs instead of duplicating them.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.preprocess import Preprocess
from ptychoflow.remote._files import atomic_path, write_json

TRAINSET_FORMAT = "ptychoflow-trainset/1"


class TrainSetError(ValueError):
    """A training set that cannot take a scan or cannot be read."""


def scan_key(scan_path: str | os.PathLike[str]) -> str:
    """A file-name-safe key for a scan: its file name without extensions."""
    name = Path(scan_path).name
    for ext in (".part", ".bz2", ".npz", ".h5", ".cxi"):
        name = name.removesuffix(ext)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "scan"


@dataclass
class TrainSet:
    """A training-set folder and its manifest."""

    root: Path
    preprocess: Preprocess
    output_size: int
    output_pixel_size_m: float
    amplitude: bool = False
    scans: list[dict[str, Any]] = field(default_factory=list)
    # the beamline's frame orientation and position axes its scans were read with
    # (ptychoflow.geometry); every scan of a set shares it, and the model card records it
    geometry: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        """``train_dir/manifest.json``."""
        return self.root / "manifest.json"

    @property
    def best_checkpoint(self) -> Path:
        """Where the best-validation network lives."""
        return self.root / "checkpoints" / "best.pt"

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> TrainSet | None:
        """The set in ``root``, or ``None`` where there is none yet."""
        r = Path(root)
        mp = r / "manifest.json"
        if not mp.exists():
            return None
        try:
            d = json.loads(mp.read_text())
            if d.get("format") != TRAINSET_FORMAT:
                raise TrainSetError(f"{mp}: format {d.get('format')!r} is not "
                                    f"{TRAINSET_FORMAT!r}")
            return cls(r, Preprocess.from_dict(d["preprocess"]), int(d["output_size"]),
                       float(d["output_pixel_size_m"]), bool(d.get("amplitude", False)),
                       list(d["scans"]), dict(d.get("geometry", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TrainSetError(f"{mp} is unreadable ({exc}); restore it or start a new "
                                "train_dir") from exc

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.manifest_path, {
            "format": TRAINSET_FORMAT, "preprocess": self.preprocess.to_dict(),
            "output_size": self.output_size, "output_pixel_size_m": self.output_pixel_size_m,
            "amplitude": self.amplitude, "scans": self.scans, "geometry": self.geometry})

    def add(self, key: str, x: np.ndarray, y: np.ndarray, info: dict[str, Any],
            seed: int = 0) -> dict[str, Any]:
        """Store one scan's pairs (replacing an earlier entry of the same key)."""
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise TrainSetError(f"{key}: {x.shape[0]} inputs but {y.shape[0]} labels")
        if x.shape[1:] != (1, self.output_size, self.output_size):
            raise TrainSetError(f"{key}: inputs {x.shape[1:]} do not match the set's "
                                f"{self.output_size}x{self.output_size} grid")
        rng = np.random.default_rng([seed, len(key), *key.encode()])
        u = rng.random(x.shape[0])
        rel = f"pairs/{key}.npz"
        with atomic_path(self.root / rel) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x.astype(np.float16), y=y.astype(np.float16), u=u)
        entry = {"key": key, "pairs": rel, "n": int(x.shape[0]), "added": time.time(), **info}
        self.scans = [s for s in self.scans if s["key"] != key] + [entry]
        self.save()
        return entry

    def load(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """All pairs as float32: (x_train, y_train, x_val, y_val)."""
        if not 0 < val_fraction < 1:
            raise TrainSetError(f"val_fraction must lie between 0 and 1, got {val_fraction}")
        xs, ys, vs = [], [], []
        for s in self.scans:
            p = self.root / s["pairs"]
            try:
                with np.load(p) as z:
                    xs.append(z["x"].astype(np.float32))
                    ys.append(z["y"].astype(np.float32))
                    vs.append(z["u"] < val_fraction)
            except (OSError, KeyError, ValueError) as exc:
                raise TrainSetError(f"{p}: pairs of scan {s['key']} are unreadable ({exc}); "
                                    "add that scan again") from exc
        if not xs:
            raise TrainSetError(f"{self.root} holds no training pairs yet")
        x, y, v = np.concatenate(xs), np.concatenate(ys), np.concatenate(vs)
        if v.all() or not v.any():
            # tiny sets: still hold out at least one pair and train on the rest
            v = np.zeros(len(x), bool)
            v[:: max(2, int(round(1 / val_fraction)))] = True
        return x[~v], y[~v], x[v], y[v]
