"""Which model file may be served, and what it expects: card, shapes, preprocessing.

A model is ``model-vN.onnx`` with its card ``model-vN.json`` beside it. The
card is the authority (checksum, shapes, preprocessing, output pixel size);
a model that brings no card of ours still runs, with its shapes read from the
network itself, the default preprocessing for its input size and the pixel
size from the edge settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptychoflow.geometry import Geometry
from ptychoflow.modelcard import (
    ModelCard,
    ModelCardError,
    card_path,
    int8_path,
    model_file,
    pick_outputs,
    version_of,
)
from ptychoflow.preprocess import Preprocess

Dim = int | None


class ModelError(ValueError):
    """A model that cannot be served; the message says why and what to do."""


def resolve_model_path(spec: str, model_dir: str | os.PathLike[str],
                       int8: bool = False) -> Path:
    """A model path or version number -> an existing ``.onnx`` file inside ``model_dir``.

    The edge only ever loads from its model folder: a PV put can name any
    path, and a typo or a hostile put must not make it execute a file from
    elsewhere. With ``int8``, ``model-vN.onnx`` (by path, as the IOC deploys,
    or by version) stands for ``model-vN-int8.onnx`` where that copy exists
    (``ptychoflow remote quantize``); the file served is named in ``Message_RBV``.
    """
    folder = Path(model_dir).resolve()
    spec = spec.strip()
    if not spec:
        raise ModelError("no model given; put a path inside the model folder or a version")
    try:
        return _resolve(spec, folder, int8)
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        # a put may name anything: a name too long for the file system, a NUL, ~nosuchuser
        raise ModelError(f"model {spec[:200]!r} is not a usable path ({exc}); put the name of "
                         f"a model-vN.onnx in the model folder {folder}, or its version") from exc


def _resolve(spec: str, folder: Path, int8: bool) -> Path:
    if spec.isdigit():
        path = model_file(folder, int(spec))
    else:
        p = Path(spec).expanduser()
        path = p if p.is_absolute() else folder / p
    path = path.resolve()
    if int8 and version_of(path) is not None:
        copy = int8_path(path)
        if copy.is_file():
            path = copy.resolve()  # checked below like any other path
    if not path.is_relative_to(folder):
        raise ModelError(f"model {path} is outside the model folder {folder}; copy it there "
                         "or set model_dir")
    if path.suffix != ".onnx":
        raise ModelError(f"model {path} is not an .onnx file")
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    return path


def _dim(d: object) -> Dim:
    return d if isinstance(d, int) and d > 0 else None


@dataclass(frozen=True)
class ModelInfo:
    """What the inference loop needs to know about the serving model."""

    path: Path
    version: int
    input_name: str
    batch: int | None  # fixed batch size, or None when the batch axis is dynamic
    height: int
    width: int
    output_names: tuple[str, ...]
    phase_index: int
    amplitude_index: int | None
    preprocess: Preprocess
    pixel_size_m: float
    card: ModelCard | None
    geometry: Geometry = field(default_factory=Geometry)  # applied to each frame and position

    @property
    def has_card(self) -> bool:
        """Whether the model came with a card of ours."""
        return self.card is not None


def _check_image_output(name: str, shape: Sequence[Dim], h: int, w: int) -> None:
    dims = list(shape)
    if len(dims) == 4 and dims[1] not in (1, None):
        raise ModelError(f"output {name} has {dims[1]} channels; the edge expects one image "
                         "per output, shape [B, 1, H, W] or [B, H, W]")
    if len(dims) not in (3, 4):
        raise ModelError(f"output {name} has shape {dims}; expected [B, 1, H, W] or [B, H, W]")


def verify_card(path: Path) -> None:
    """The model file is the one its card describes (sha256), checked before any engine
    parses it: a truncated or altered file is refused by its checksum, never handed to
    ONNX Runtime's or TensorRT's parser.
    """
    cpath = card_path(path)
    if cpath.exists():
        try:
            ModelCard.load(cpath).verify_file(path)
        except ModelCardError as exc:
            raise ModelError(f"{path.name}: {exc}") from exc


def describe_model(path: Path, input_name: str, input_shape: Sequence[object],
                   outputs: Sequence[tuple[str, Sequence[object]]], default_pixel_m: float,
                   verify: bool = True, geometry: Geometry | None = None) -> ModelInfo:
    """Check a model against its card (if any) and say what it expects.

    ``input_shape``/``outputs`` are what the engine reports (ints, or strings
    or None for dynamic axes). ``geometry``: the edge's own setting, which a
    model without a recorded geometry is served with, and which must agree with
    the geometry a card records (the network was trained on scans read so).
    Raises :class:`ModelError` naming the mismatch.
    """
    edge_geometry = geometry or Geometry()
    shape = [_dim(d) for d in input_shape]
    if len(shape) != 4 or shape[1] not in (1, None):
        raise ModelError(f"{path.name}: input {input_name} has shape {list(input_shape)}; the "
                         "edge runs networks with one input of shape [B, 1, H, W]")
    h, w = shape[2], shape[3]
    if h is None or w is None:
        raise ModelError(f"{path.name}: input {input_name} has no fixed height/width "
                         f"({list(input_shape)}); export the model with a fixed image size")
    out_names = tuple(n for n, _ in outputs)
    for name, oshape in outputs:
        _check_image_output(name, [_dim(d) for d in oshape], h, w)
    phase, amp = pick_outputs(out_names)
    card: ModelCard | None = None
    cpath = card_path(path)
    if cpath.exists():
        try:
            card = ModelCard.load(cpath)
            if verify:
                card.verify_file(path)
        except ModelCardError as exc:
            raise ModelError(f"{path.name}: {exc}") from exc
        if card.input.name != input_name:
            raise ModelError(f"{path.name}: card says input {card.input.name!r}, model has "
                             f"{input_name!r}")
        card_in = [d if d > 0 else None for d in card.input.shape]
        if card_in[1:] != shape[1:] or (card_in[0] is not None and shape[0] is not None
                                        and card_in[0] != shape[0]):
            raise ModelError(f"{path.name}: card input shape {card.input.shape} does not match "
                             f"the model's {list(input_shape)}")
        missing = [o.name for o in card.outputs if o.name not in out_names]
        if missing:
            raise ModelError(f"{path.name}: card lists outputs {missing} the model lacks "
                             f"(model outputs {list(out_names)})")
        pre = card.preprocessing
        if pre.input_size != h or h != w:
            raise ModelError(f"{path.name}: card preprocessing makes {pre.input_size}x"
                             f"{pre.input_size} inputs, the model takes {h}x{w}")
        pixel = card.output_pixel_size_m
        version = card.version
        trained = Geometry.from_dict(card.geometry)
        if card.geometry and geometry is not None and not geometry.identity \
                and geometry != trained:
            raise ModelError(f"{path.name}: trained on scans read with geometry "
                             f"{trained.words() or '(none)'!r}, but the edge is set to "
                             f"{geometry.words()!r}; fix geometry in [edge] or retrain")
        if card.geometry:
            edge_geometry = trained
    else:
        if h != w:
            raise ModelError(f"{path.name}: input {h}x{w} is not square and the model has no "
                             "card saying how to preprocess for it")
        pre = Preprocess(input_size=h)
        pixel = default_pixel_m
        version = version_of(path) or 0
    return ModelInfo(path=path, version=version, input_name=input_name, batch=shape[0],
                     height=h, width=w, output_names=out_names, phase_index=phase,
                     amplitude_index=amp, preprocess=pre, pixel_size_m=pixel, card=card,
                     geometry=edge_geometry)
