"""PtychoNN's decoder for inference: each 2x upsampling folded into the convolution after it.

A 3x3 convolution of a nearest-upsampled map sees, at each of the four output
phases (even/odd row, even/odd column), only a 2x2 window of the map before
upsampling, with the 3x3 weights summed onto it. So the pair equals one 2x2
convolution at the lower resolution producing ``4 * cout`` channels, one block
per phase, interleaved back by ``pixel_shuffle``. Same function (up to float
rounding, about 1e-5), 16 multiply-adds per output pixel instead of 36, and the
last convolution (16 -> 1 channel) no longer runs at full resolution, where a
CPU engine pads its single output channel to a whole vector block. On a 2-core
AVX-512 CPU ONNX Runtime runs the 128x128 network 15 % faster this way on one
thread, 6-11 % on two, and its int8 copy 26-32 % faster
(``benchmarks/subpixel_fold.py``); the encoder, untouched, is most of what is left.

Only the exported graph changes: training and the PyTorch checkpoints keep the
plain layers, and the exporter checks the folded graph against them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional

# For output phase a (0: even row, 1: odd row), which of the 2x2 window's rows each of the
# 3x3 kernel's rows (offsets -1, 0, +1 on the upsampled map) lands on.
_ROWS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


class SubPixelConv(nn.Module):
    """``Conv2d(3x3, padding 1)(Upsample(2, nearest)(x))`` [then ReLU], computed at x's size."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        w = conv.weight.detach()
        cout = w.shape[0]
        rows = _ROWS.to(w.dtype)
        # phase (a, c): rows folded by _ROWS[a], columns by _ROWS[c]; blocks in order a*2 + c
        k = torch.einsum("ary,oiyx,csx->acoirs", rows, w, rows).reshape(4 * cout, w.shape[1], 2, 2)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(cout, dtype=w.dtype)
        self.weight = nn.Parameter(k.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(b.repeat(4), requires_grad=False)
        self.cout = cout
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, 2H, 2W)."""
        h, w = x.shape[-2], x.shape[-1]
        y = functional.conv2d(x, self.weight, self.bias, padding=1)  # (B, 4 cout, H+1, W+1)
        if self.relu:
            y = torch.relu(y)
        c = self.cout
        # the even row/column phase reads the window one pixel up/left of the odd one
        phases = [y[:, i * c:(i + 1) * c, i // 2:i // 2 + h, i % 2:i % 2 + w] for i in range(4)]
        # (B, cout, 4, H, W) -> channel c*4 + a*2 + col: pixel_shuffle's order
        return functional.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), 2)


def _doubles(up: nn.Module) -> bool:
    """A nearest-neighbour Upsample by exactly 2 along both axes."""
    if not isinstance(up, nn.Upsample) or up.mode != "nearest" or up.size is not None:
        return False
    scale = up.scale_factor
    scales = tuple(scale) if isinstance(scale, tuple | list) else (scale, scale)
    return len(scales) == 2 and all(s is not None and float(s) == 2.0 for s in scales)


def _foldable(up: nn.Module, conv: nn.Module) -> bool:
    return (_doubles(up) and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with each (nearest 2x Upsample, 3x3 Conv2d[, ReLU]) run made a SubPixelConv."""
    layers = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and _foldable(layers[i], layers[i + 1]):
            relu = i + 2 < len(layers) and isinstance(layers[i + 2], nn.ReLU)
            out.append(SubPixelConv(layers[i + 1], relu))  # type: ignore[arg-type]
            i += 3 if relu else 2
        else:
            out.append(layers[i])
            i += 1
    return nn.Sequential(*out)


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of a PtychoNN with its decoder heads folded; ``model`` itself is untouched."""
    folded = copy.deepcopy(model).cpu().eval()
    for name in ("phase_head", "amplitude_head"):
        head = getattr(folded, name, None)
        if isinstance(head, nn.Sequential):
            setattr(folded, name, fold_sequential(head))
    return folded
