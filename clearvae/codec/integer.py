"""Integer networks: the part of the decoder that picks probability tables, computed exactly.

A float network can give slightly different outputs on another CPU, with another thread count
or BLAS, or on a GPU; if such a difference changes which probability table a latent is coded
with, the file no longer decodes (CompressAI issues 279, 309, 340). Ballé, Johnston & Minnen,
"Integer networks for data compression", ICLR 2019, fix this by running that path in integer
arithmetic. Here the scale head of ``h_s`` (convolutions, pixel shuffles, ReLUs) is converted
after training:

    input   a_0 = round(x * 2**F_0)                          (x: ẑ with its inverse gain)
    conv l  acc = W_l * a_l + b_l, W_l = round(w * 2**G_l), b_l = round(b * 2**(F_l + G_l))
            a_{l+1} = clamp(floor(acc / 2**(F_l + G_l - F_{l+1})), 0, 2**16 - 1)   (ReLU)
    last    index = clamp(round(acc / 2**(F_l + G_l)), 0, 63)

Every value is an integer below 2**53 (weights < 2**10, activations < 2**16, at most 2**14
terms per sum), held in float64: sums of such integers are exact in any order, so a GEMM on
any machine gives the same bits. Convolutions are an explicit unfold + matmul (never FFT or
Winograd), and the only float steps, forming the input, are single IEEE operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_BITS = 10  # |W| < 2**10
ACT_MAX = 2**16 - 1  # activations in [0, 2**16)
INPUT_MAX = 2**15  # |a_0| <= 2**15


@dataclass
class IntegerLayer:
    """One convolution in integer form, or a pixel shuffle (``weight`` None)."""

    weight: Tensor | None  # (O, I, k, k) float64 holding integers
    bias: Tensor | None  # (O,) float64 holding integers
    shift: int  # right shift of the accumulator (convolutions)
    relu: bool
    upscale: int = 0  # pixel-shuffle factor (when weight is None)


class IntegerNetwork:
    """An exact integer version of a stack of Conv2d / PixelShuffle / ReLU."""

    def __init__(self, layers: list[IntegerLayer], input_bits: int, levels: int) -> None:
        self.layers, self.input_bits, self.levels = layers, input_bits, levels

    def __call__(self, x: Tensor, offset: Tensor | None = None) -> Tensor:
        """x (B, C, h, w) float -> integer table indices (B, O, H, W) as int64, each shifted
        by the integer ``offset`` (broadcast) before clamping to the table range."""
        a = torch.round(x.double() * 2.0**self.input_bits).clamp(-INPUT_MAX, INPUT_MAX)
        for layer in self.layers:
            if layer.weight is None:
                a = F.pixel_shuffle(a, layer.upscale)
                continue
            acc = _exact_conv(a, layer.weight) + layer.bias[None, :, None, None]
            if layer.relu:
                a = torch.floor(acc / 2.0**layer.shift).clamp(0, ACT_MAX)
            else:  # the last layer: round to the nearest table index
                a = torch.floor((acc + 2.0 ** (layer.shift - 1)) / 2.0**layer.shift)
        if offset is not None:
            a = a + offset.double()
        return a.clamp(0, self.levels - 1).long()

    def state(self) -> dict[str, Tensor]:
        """Tensors to store in a model file (weights as int16: |W| < 2**WEIGHT_BITS; the rest
        as int64)."""
        out = {"input_bits": torch.tensor(self.input_bits), "levels": torch.tensor(self.levels)}
        for i, layer in enumerate(self.layers):
            out[f"{i}.meta"] = torch.tensor([layer.shift, int(layer.relu), layer.upscale])
            if layer.weight is not None:
                out[f"{i}.weight"] = layer.weight.to(torch.int16)
                out[f"{i}.bias"] = layer.bias.long()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> IntegerNetwork:
        layers = []
        count = 1 + max(int(k.split(".")[0]) for k in state if k[0].isdigit())
        for i in range(count):
            shift, relu, upscale = (int(v) for v in state[f"{i}.meta"])
            w, b = state.get(f"{i}.weight"), state.get(f"{i}.bias")
            layers.append(IntegerLayer(None if w is None else w.double(),
                                       None if b is None else b.double(),
                                       shift, bool(relu), upscale))
        return cls(layers, int(state["input_bits"]), int(state["levels"]))


def _exact_conv(a: Tensor, weight: Tensor) -> Tensor:
    """'same' convolution as unfold + matmul in float64 (exact for our integer ranges)."""
    b, _, h, w = a.shape
    o, i, k, _ = weight.shape
    cols = F.unfold(a, k, padding=k // 2)  # (B, I*k*k, h*w)
    return (weight.reshape(o, -1) @ cols).reshape(b, o, h, w)


def _leaves(module: nn.Module) -> list[nn.Module]:
    kids = list(module.children())
    return [module] if not kids else [leaf for kid in kids for leaf in _leaves(kid)]


@torch.no_grad()
def quantize_network(net: nn.Module, calibration: Tensor, levels: int) -> IntegerNetwork:
    """Convert a Conv2d / PixelShuffle / ReLU stack to integers, choosing each fixed-point
    format from the largest value seen on ``calibration`` inputs (with 2x headroom)."""
    leaves = [m for m in _leaves(net) if not isinstance(m, nn.Identity)]
    x = calibration.double()
    input_bits = _bits_for(x.abs().max().item(), INPUT_MAX)
    frac = input_bits  # fractional bits of the current activations
    layers: list[IntegerLayer] = []
    for j, m in enumerate(leaves):
        if isinstance(m, nn.PixelShuffle):
            layers.append(IntegerLayer(None, None, 0, False, m.upscale_factor))
            x = m(x)
        elif isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.padding != (m.kernel_size[0] // 2,) * 2 or m.groups != 1:
                raise ValueError("integer conversion needs stride-1 'same' convolutions")
            # A ReLU after a pixel shuffle acts as one before it (a shuffle only permutes).
            after = [n for n in leaves[j + 1 :] if not isinstance(n, nn.PixelShuffle)]
            relu = bool(after) and isinstance(after[0], nn.ReLU)
            wbits = _bits_for(m.weight.abs().max().item(), 2**WEIGHT_BITS - 1)
            weight = torch.round(m.weight.double() * 2.0**wbits)
            bias = torch.round(m.bias.double() * 2.0 ** (frac + wbits))
            x = F.conv2d(x, m.weight.double(), m.bias.double(), padding=m.padding)
            if relu:  # (the ReLU leaf itself is then skipped below: it is part of this layer)
                x = x.clamp(min=0)
                out_frac = min(_bits_for(x.max().item(), ACT_MAX), frac + wbits)
                shift = frac + wbits - out_frac
                frac = out_frac
            else:
                shift = frac + wbits  # back to plain index units
            layers.append(IntegerLayer(weight, bias, shift, relu))
        elif not isinstance(m, nn.ReLU):
            raise ValueError(f"cannot convert {type(m).__name__} to an integer network")
    return IntegerNetwork(layers, input_bits, levels)


def _bits_for(largest: float, limit: int) -> int:
    """Fractional bits so that 2 * largest still fits under ``limit``."""
    if largest <= 0:
        return 0
    return int(math.floor(math.log2(limit / (2 * largest))))
