"""PtychoNN (Cherukara et al., 2020): diffraction frame in, object patch out, in one pass.

An encoder of ``len(channels)`` blocks (two 3x3 convolutions with ReLU, then
2x max-pooling) and, per output, a mirrored decoder (two 3x3 convolutions with
ReLU, then 2x upsampling) ending in a 3x3 convolution to one channel. The
phase head is ``tanh * pi``; the optional amplitude head is a sigmoid. The
default is the phase-only edge variant of Babu et al. (2023): 128x128 input,
channels 16-32-64-128, about 0.73 M parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PtychoNNConfig:
    """Network shape; stored in checkpoints and model cards."""

    input_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    amplitude: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        depth = len(self.channels)
        if depth < 1 or self.input_size % (2 ** depth):
            raise ValueError(f"input size {self.input_size} must be divisible by "
                             f"2**{depth} for {depth} down-sampling blocks")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PtychoNNConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["input_size"]), tuple(d["channels"]), bool(d.get("amplitude", False)))


VARIANTS: dict[str, PtychoNNConfig] = {
    "edge128": PtychoNNConfig(128),
    "edge64": PtychoNNConfig(64),
}
"""Named sizes: the 128x128 edge network and the 64x64 one for quick runs."""


def variant(name_or_size: str | int) -> PtychoNNConfig:
    """A config by name (``edge128``) or input size (``128``, ``64``)."""
    key = f"edge{name_or_size}" if str(name_or_size).isdigit() else str(name_or_size)
    if key not in VARIANTS:
        raise ValueError(f"unknown PtychoNN variant {name_or_size!r}; use one of "
                         f"{sorted(VARIANTS)} or 128/64")
    return VARIANTS[key]


def _double_conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True)]


def _decoder(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = channels[-1]
    for cout in reversed(channels):
        layers += _double_conv(cin, cout)
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        cin = cout
    layers.append(nn.Conv2d(cin, 1, 3, padding=1))
    return nn.Sequential(*layers)


class PtychoNN(nn.Module):
    """(B, 1, S, S) frames -> (B, 1, S, S) phase [, (B, 1, S, S) amplitude]."""

    def __init__(self, config: PtychoNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or PtychoNNConfig()
        enc: list[nn.Module] = []
        cin = 1
        for cout in self.config.channels:
            enc += _double_conv(cin, cout)
            enc.append(nn.MaxPool2d(2))
            cin = cout
        self.encoder = nn.Sequential(*enc)
        self.phase_head = _decoder(self.config.channels)
        self.amplitude_head = _decoder(self.config.channels) if self.config.amplitude else None
        # He initialisation: with PyTorch's default init the signal shrinks about threefold
        # per convolution, and through 17 of them the network starts too dead to learn.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in order (also the ONNX output names)."""
        return ["phase", "amplitude"] if self.amplitude_head is not None else ["phase"]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Phase in (-pi, pi); amplitude in (0, 1) when the head exists."""
        z = self.encoder(x)
        phase = torch.tanh(self.phase_head(z)) * math.pi
        if self.amplitude_head is None:
            return phase
        return phase, torch.sigmoid(self.amplitude_head(z))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """All outputs stacked on the channel axis: (B, n_outputs, S, S)."""
        out = self(x)
        return torch.cat(out, dim=1) if isinstance(out, tuple) else out


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Checkpoint:
    """What a training round keeps: weights plus what produced them."""

    config: PtychoNNConfig
    state: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def model(self) -> PtychoNN:
        """A network with these weights, in eval mode."""
        m = PtychoNN(self.config)
        m.load_state_dict(self.state)
        return m.eval()
