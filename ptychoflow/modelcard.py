"""The model card: what an exported network is, what it expects and how good it is.

Every model is ``model-vN.onnx`` next to ``model-vN.json``. The card records
the input and output shapes, the preprocessing (so the edge reproduces
training exactly), the real-space pixel of the output (so the stitcher can place
predictions), the training scans and parameters, metrics and the sha256 of the
ONNX file. The edge refuses a model whose checksum or shapes disagree with its
card.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptychoflow.geometry import Geometry
from ptychoflow.preprocess import Preprocess

CARD_FORMAT = "ptychoflow-model-card/1"
_VERSION_RE = re.compile(r"model-v(\d+)\.onnx$")


class ModelCardError(ValueError):
    """A model and its card that do not belong together, or a card that cannot be read."""


def sha256_file(path: str | os.PathLike[str],
                check: Callable[[], None] | None = None) -> str:
    """Hex sha256 of a file, read in blocks; ``check`` runs between blocks (it may raise,
    e.g. a Reporter's check when a transfer is aborted).
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            if check is not None:
                check()
    return h.hexdigest()


def card_path(model_path: str | os.PathLike[str]) -> Path:
    """``model-v3.onnx`` -> ``model-v3.json``."""
    return Path(model_path).with_suffix(".json")


def model_file(folder: str | os.PathLike[str], version: int) -> Path:
    """Path of version ``version`` in a model folder."""
    return Path(folder) / f"model-v{version}.onnx"


def int8_path(model_path: str | os.PathLike[str]) -> Path:
    """``model-v3.onnx`` -> ``model-v3-int8.onnx`` (made by ``ptychoflow remote quantize``)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}-int8.onnx")


def version_of(path: str | os.PathLike[str]) -> int | None:
    """The version in a ``model-vN.onnx`` file name, or ``None``."""
    m = _VERSION_RE.search(str(path))
    return int(m.group(1)) if m else None


@dataclass
class TensorSpec:
    """Name and shape of a network input or output; ``-1`` marks the batch axis if dynamic."""

    name: str
    shape: list[int]


@dataclass
class ModelCard:
    """The JSON card stored beside each ONNX model."""

    version: int
    model_file: str
    sha256: str
    input: TensorSpec
    outputs: list[TensorSpec]
    preprocessing: Preprocess
    output_pixel_size_m: float
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = CARD_FORMAT
    # how the beamline's frames and positions map onto ptychoflow's conventions, as the
    # training scans were read (ptychoflow.geometry); the edge applies the same
    geometry: dict[str, Any] = field(default_factory=dict)
    # the probe of the reconstruction the network was trained on, in a file beside the
    # model (ptychoflow.physcheck: file, sha256, pixel_size_m); the edge's physics check
    # forms the intensity each prediction implies with it
    probe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the card atomically (temporary name, then rename)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".part")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, p)
        return p

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Parse a card; a wrong format or missing key names what is wrong."""
        if d.get("format") != CARD_FORMAT:
            raise ModelCardError(f"model card format {d.get('format')!r} is not {CARD_FORMAT!r}")
        try:
            return cls(
                version=int(d["version"]), model_file=str(d["model_file"]),
                sha256=str(d["sha256"]), input=TensorSpec(**d["input"]),
                outputs=[TensorSpec(**o) for o in d["outputs"]],
                preprocessing=Preprocess.from_dict(d["preprocessing"]),
                output_pixel_size_m=float(d["output_pixel_size_m"]),
                training=dict(d.get("training", {})), metrics=dict(d.get("metrics", {})),
                provenance=dict(d.get("provenance", {})), format=d["format"],
                # checked here: a card with a geometry no edge could apply is refused
                geometry=Geometry.from_dict(d["geometry"]).to_dict() if d.get("geometry")
                else {},
                probe=dict(d.get("probe") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCardError(f"model card is incomplete or malformed: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read ``model-vN.json``."""
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except FileNotFoundError as exc:
            raise ModelCardError(f"model card {p} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card {p} is not valid JSON: {exc}") from exc

    def verify_file(self, model_path: str | os.PathLike[str]) -> None:
        """Raise :class:`ModelCardError` unless ``model_path`` has the card's checksum."""
        actual = sha256_file(model_path)
        if actual != self.sha256:
            raise ModelCardError(f"{model_path}: sha256 {actual[:12]}… does not match its card "
                                 f"({self.sha256[:12]}…); the file was changed or truncated")


def pick_outputs(names: Sequence[str]) -> tuple[int, int | None]:
    """Index of the phase output and of the amplitude output (if any).

    Names containing "phase"/"amp" decide; otherwise the first output is the
    phase and a second one the amplitude.
    """
    lower = [n.lower() for n in names]
    phase = next((i for i, n in enumerate(lower) if "phase" in n or n.startswith("ph")), None)
    amp = next((i for i, n in enumerate(lower) if "amp" in n), None)
    if phase is None:
        phase = next(i for i in range(len(names)) if i != amp)
    if amp is None and len(names) > 1:
        amp = next(i for i in range(len(names)) if i != phase)
    return phase, amp
