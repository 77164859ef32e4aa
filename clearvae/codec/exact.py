"""An exact decoder: the lossy reconstruction computed in fixed point, the same bits everywhere.

The coded symbols are exact on any machine, but the float picture x̂ made from them is not: the
means μ and g_s may differ in the last bits between CPUs, thread counts or BLAS builds. That
is harmless for lossy coding, fatal for the bounded-error and lossless modes, which code the
residual x - x̃ against a prediction x̃ that encoder and decoder must agree on exactly. This
module runs the whole reconstruction path (the mean head of h_s, the channel context's mean
networks and g_s with its inverse GDN) in fixed point, as ``integer`` does for the scale head
(Ballé, Johnston & Minnen, ICLR 2019):

    activations  a = integer · 2**-F        |integer| < 2**20, F chosen per layer
    conv         acc = W a + b              W = round(w 2**G), |W| < 2**12: exact sums
                 a' = floor(acc / 2**(F + G - F'))
    inverse GDN  n = floor((γ |a| + β) / 2**s)   a' = floor(a n / 2**s')
    between the networks: ŷ' = s + μ', ŷ = ŷ' · inverse gain, one IEEE operation each

Every integer stays below 2**53, so float64 sums are exact in any order; the gains of every
quality step are stored in float64. The fixed-point formats are chosen from a calibration
pass over synthetic images (2x headroom; values beyond are clamped, never wrapped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clearvae.codec.networks import GDN

ACT_BITS, WEIGHT_BITS = 20, 12
ACT_LIMIT = 2.0**ACT_BITS - 1
CHUNK = 1 << 22  # unfolded elements per matmul: bounds memory on large images


@dataclass
class FixedLayer:
    """A convolution, inverse GDN, ReLU or pixel shuffle in fixed point."""

    kind: str  # "conv", "igdn", "relu", "shuffle"
    weight: Tensor | None = None  # conv (O, I, k, k) / igdn γ (C, C): float64 integers
    bias: Tensor | None = None  # conv (O,) / igdn β (C,): float64 integers
    shift: int = 0  # conv: accumulator -> output; igdn: γ|a| + β -> n
    shift2: int = 0  # igdn: a · n -> output
    upscale: int = 0


class FixedNetwork:
    """A float network of Conv2d / PixelShuffle / ReLU / inverse GDN, in exact fixed point."""

    def __init__(self, layers: list[FixedLayer], in_frac: int, out_frac: int) -> None:
        self.layers, self.in_frac, self.out_frac = layers, in_frac, out_frac

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) float64 -> the output as float64 (integers times 2**-out_frac)."""
        a = torch.round(x.double() * 2.0**self.in_frac).clamp(-ACT_LIMIT, ACT_LIMIT)
        for layer in self.layers:
            if layer.kind == "shuffle":
                a = F.pixel_shuffle(a, layer.upscale)
            elif layer.kind == "relu":
                a = a.clamp(min=0)
            elif layer.kind == "conv":
                acc = exact_conv(a, layer.weight) + layer.bias[None, :, None, None]
                a = torch.floor(acc / 2.0**layer.shift).clamp(-ACT_LIMIT, ACT_LIMIT)
            else:  # inverse GDN
                n = exact_conv(a.abs(), layer.weight[:, :, None, None]) + layer.bias[
                    None, :, None, None]
                n = torch.floor(n / 2.0**layer.shift).clamp(0, ACT_LIMIT)
                a = torch.floor(a * n / 2.0**layer.shift2).clamp(-ACT_LIMIT, ACT_LIMIT)
        return a / 2.0**self.out_frac

    def state(self) -> dict[str, Tensor]:
        kinds = ("conv", "igdn", "relu", "shuffle")
        out = {"frac": torch.tensor([self.in_frac, self.out_frac])}
        for i, layer in enumerate(self.layers):
            out[f"{i}.meta"] = torch.tensor([kinds.index(layer.kind), layer.shift, layer.shift2,
                                             layer.upscale])
            if layer.weight is not None:
                out[f"{i}.weight"] = layer.weight.to(torch.int16)
                out[f"{i}.bias"] = layer.bias.long()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FixedNetwork:
        kinds = ("conv", "igdn", "relu", "shuffle")
        count = 1 + max(int(k.split(".")[0]) for k in state if k[0].isdigit())
        layers = []
        for i in range(count):
            kind, shift, shift2, upscale = (int(v) for v in state[f"{i}.meta"])
            w, b = state.get(f"{i}.weight"), state.get(f"{i}.bias")
            layers.append(FixedLayer(kinds[kind], None if w is None else w.double(),
                                     None if b is None else b.double(), shift, shift2, upscale))
        in_frac, out_frac = (int(v) for v in state["frac"])
        return cls(layers, in_frac, out_frac)


def exact_conv(a: Tensor, weight: Tensor) -> Tensor:
    """'same' stride-1 convolution of float64 integers as unfold + matmul (exact), in row
    chunks so that the unfolded matrix stays under ``CHUNK`` elements."""
    b, c, h, w = a.shape
    o, _, k, _ = weight.shape
    p = k // 2
    rows = max(1, CHUNK // max(1, c * k * k * w * b))
    padded = F.pad(a, (p, p, p, p))
    flat = weight.reshape(o, -1)
    out = []
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        cols = F.unfold(padded[:, :, r0 : r1 + 2 * p], k)  # (B, C k k, (r1 - r0) w)
        out.append((flat @ cols).reshape(b, o, r1 - r0, w))
    return torch.cat(out, 2)


def _frac_for(largest: float, limit: float) -> int:
    """Fractional bits so that 2 * largest stays under ``limit``."""
    return int(math.floor(math.log2(limit / (2 * largest)))) if largest > 0 else 0


def _leaves(module: nn.Module) -> list[nn.Module]:
    kids = list(module.children())
    return [module] if not kids else [leaf for kid in kids for leaf in _leaves(kid)]


@torch.no_grad()
def fixed_network(net: nn.Module, calibration: Tensor) -> FixedNetwork:
    """Convert ``net`` to fixed point, each format chosen from ``calibration`` inputs."""
    x = calibration.double()
    frac = in_frac = _frac_for(x.abs().max().item(), ACT_LIMIT)
    layers: list[FixedLayer] = []
    for m in (m for m in _leaves(net) if not isinstance(m, nn.Identity)):
        if isinstance(m, nn.PixelShuffle):
            layers.append(FixedLayer("shuffle", upscale=m.upscale_factor))
            x = m(x)
        elif isinstance(m, nn.ReLU):
            layers.append(FixedLayer("relu"))
            x = x.clamp(min=0)
        elif isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.padding != (m.kernel_size[0] // 2,) * 2 or m.groups != 1:
                raise ValueError("fixed point needs stride-1 'same' convolutions")
            g = _frac_for(m.weight.abs().max().item(), 2.0 ** (WEIGHT_BITS - 1) - 1)
            x = F.conv2d(x, m.weight.double(), m.bias.double(), padding=m.padding)
            out = min(_frac_for(x.abs().max().item(), ACT_LIMIT), frac + g)
            layers.append(FixedLayer("conv", torch.round(m.weight.double() * 2.0**g),
                                     torch.round(m.bias.double() * 2.0 ** (frac + g)),
                                     frac + g - out))
            frac = out
        elif isinstance(m, GDN) and m.inverse:
            beta = m.beta_root.double().square() + m.beta_min
            gamma = m.gamma_root.double().square()
            g = _frac_for(gamma.abs().max().item(), 2.0 ** (WEIGHT_BITS - 1) - 1)
            norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)
            n_frac = min(_frac_for(norm.max().item(), ACT_LIMIT), frac + g)
            x = x * norm
            out = min(_frac_for(x.abs().max().item(), ACT_LIMIT), frac + n_frac)
            layers.append(FixedLayer("igdn", torch.round(gamma * 2.0**g),
                                     torch.round(beta * 2.0 ** (frac + g)), frac + g - n_frac,
                                     frac + n_frac - out))
            frac = out
        else:
            raise ValueError(f"cannot convert {type(m).__name__} to fixed point")
    return FixedNetwork(layers, in_frac, frac)


@dataclass
class ExactDecoder:
    """The fixed-point reconstruction path of one codec: means, context means, g_s."""

    means: FixedNetwork  # h_s's mean head: ẑ_in -> μ (ungained)
    context: list[FixedNetwork]  # the mean residual of slices 1..S-1
    synthesis: FixedNetwork  # g_s
    y_gain: np.ndarray  # (R, M) float64, each quality step's y gain
    y_inverse_gain: np.ndarray  # (R, M) float64

    def reconstruct(self, z_in: Tensor, symbols: list[np.ndarray], row: int, height: int,
                    width: int) -> Tensor:
        """x̃ (1, C, height, width) float64 from ẑ_in (1, N, h/4, w/4; exact float64) and the
        integer y symbols of each slice (1, M/S, h, w), at quality-table row ``row``."""
        from clearvae.codec.context import _Y_UNIT

        gain = torch.from_numpy(self.y_gain[row])[None, :, None, None]
        inverse = torch.from_numpy(self.y_inverse_gain[row])[None, :, None, None]
        size = symbols[0].shape[1]
        means = self.means(z_in)  # (1, M, h, w) ungained
        y_hat: list[Tensor] = []  # ungained ŷ of the slices done
        for k, s in enumerate(symbols):
            c = slice(k * size, (k + 1) * size)
            mu = means[:, c]
            if k:
                mu = mu + self.context[k - 1](torch.cat([mu, *y_hat], 1) * _Y_UNIT) / _Y_UNIT
            y_gained = torch.from_numpy(s).double() + mu * gain[:, c]  # ŷ' = s + μ'
            y_hat.append(y_gained / gain[:, c])
        y = torch.cat([t * gain[:, k * size:(k + 1) * size] for k, t in enumerate(y_hat)], 1)
        return self.synthesis(y * inverse)[..., :height, :width]

    def state(self) -> dict[str, Tensor]:
        out = {f"means.{k}": v for k, v in self.means.state().items()}
        out |= {f"synthesis.{k}": v for k, v in self.synthesis.state().items()}
        for i, net in enumerate(self.context):
            out |= {f"context.{i}.{k}": v for k, v in net.state().items()}
        out["y_gain"] = torch.from_numpy(self.y_gain)
        out["y_inverse_gain"] = torch.from_numpy(self.y_inverse_gain)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> ExactDecoder:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        slices = {int(k.split(".")[1]) for k in state if k.startswith("context.")}
        return cls(FixedNetwork.from_state(part("means.")),
                   [FixedNetwork.from_state(part(f"context.{i}.")) for i in range(len(slices))],
                   FixedNetwork.from_state(part("synthesis.")),
                   state["y_gain"].numpy(), state["y_inverse_gain"].numpy())


def calibration_images(channels: int, seed: int = 0, count: int = 6, size: int = 128,
                       ) -> Tensor:
    """(count, channels, size, size) synthetic images in [0, 1]: smooth fields at several
    scales, sharp edges, flat areas and noise, to span the decoder's activations."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(count):
        x = torch.zeros(1, channels, size, size)
        for cells in (2, 8, 32):
            noise = torch.rand(1, channels, cells, cells, generator=g)
            x += F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        x = x / 3
        if i % 2:
            x = torch.where(torch.rand(1, 1, 4, 4, generator=g).repeat_interleave(
                size // 4, 2).repeat_interleave(size // 4, 3) > 0.5, x, 0.0 * x)
        x = x + 0.03 * (i % 3) * torch.randn(x.shape, generator=g)
        images.append(x.clamp(0, 1))
    return torch.cat(images)


@torch.no_grad()
def build_exact(model: nn.Module, median: np.ndarray, inverse_gain_z: np.ndarray,
                steps: Tensor, seed: int = 0) -> ExactDecoder:
    """The fixed-point decoder of a ``HyperpriorCodec``, calibrated on synthetic images at
    every trained quality. ``median`` (N,), ``inverse_gain_z`` (R, N) and ``steps`` (R,)
    as in its coding tables."""
    from clearvae.codec.model import MULTIPLE, interpolated
    from clearvae.models.layers import pad_to_multiple

    y_gain = interpolated(model.y_gain.double(), steps).exp().numpy()  # (R, M)
    y_inverse = interpolated(model.y_inverse_gain.double(), steps).exp().numpy()
    z_gain = interpolated(model.z_gain.double(), steps).exp().numpy()
    x = pad_to_multiple(calibration_images(model.config.image_channels, seed), MULTIPLE)
    y = model.g_a(x).double()
    med = torch.from_numpy(median)[None, :, None, None]
    ctx = model.context
    slices = 1 if ctx is None else ctx.slices
    size = y.shape[1] // slices
    z_ins: list[Tensor] = []
    context_ins: list[list[Tensor]] = [[] for _ in range(slices - 1)]
    synthesis_ins: list[Tensor] = []
    for row in range(0, len(steps), 16):
        gain = torch.from_numpy(y_gain[row])[None, :, None, None]
        y_q = y * gain
        z = model.h_a(y_q.float()).double() * torch.from_numpy(z_gain[row])[None, :, None, None]
        z_in = (torch.round(z - med) + med) * torch.from_numpy(inverse_gain_z[row])[
            None, :, None, None]
        z_ins.append(z_in)
        means = model.h_s.means(z_in.float()).double()
        y_hat: list[Tensor] = []
        for k in range(slices):
            c = slice(k * size, (k + 1) * size)
            mu = means[:, c]
            if k:
                from clearvae.codec.context import _Y_UNIT

                net_in = torch.cat([mu, *y_hat], 1) * _Y_UNIT
                context_ins[k - 1].append(net_in)
                mu = mu + ctx.means[k - 1](net_in.float()).double() / _Y_UNIT
            s = torch.round(y_q[:, c] - mu * gain[:, c])
            y_hat.append(s / gain[:, c] + mu)
        synthesis_ins.append(torch.cat(y_hat, 1) * gain * torch.from_numpy(y_inverse[row])[
            None, :, None, None])
    return ExactDecoder(
        fixed_network(model.h_s.means, torch.cat(z_ins)),
        [fixed_network(net, torch.cat(ins)) for net, ins in
         zip([] if ctx is None else ctx.means, context_ins)],
        fixed_network(model.g_s, torch.cat(synthesis_ins)), y_gain, y_inverse)
