"""Channel-wise context for the hyperprior, in a form whose table choice stays exact.

Minnen & Singh, "Channel-wise autoregressive entropy models for learned image compression",
ICIP 2020: split the latent y' into S slices of M/S channels and code them one after another,
so that each slice's Gaussian can also depend on the slices already decoded. Here each slice k
refines the hyperprior's prediction (μ'_k, i_k: mean and scale-table index, both gained) by a
residual, and the two residuals see different inputs so that the table choice stays exact:

    μ'_k = μ'_k + g_k · MeanNet_k([μ'_k, ŷ'_<k] / g)             float: it only shifts values
    i_k  = clamp(round(i_k) + ScaleNet_k([round(i_k), |s_<k|]), 0, 63)   integer network

s_<k are the integer symbols of the earlier slices (ŷ' = s + μ'). The scale residual sees
integers only (the hyperprior's integer index and the clipped symbol magnitudes), so it can
run as an integer network (``integer.quantize_network``) and the decoder picks the very same
tables on any machine; the mean residual may see the float ŷ', as means never pick a table.
Both residual networks start at zero, so a context model warm-started from a plain hyperprior
codes exactly as it did until training moves them. Slice 0 has no context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clearvae.codec.entropy_models import SCALE_LEVELS, SCALES

SYMBOL_CLIP = 16  # |s| beyond this tells the scale residual nothing more
HIDDEN = 64
# Input scales (powers of two, so integer inputs stay exact in the integer network).
_INDEX_UNIT, _SYMBOL_UNIT, _Y_UNIT = 1 / 16, 1 / 4, 16.0


def _residual_net(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 -> 1x1 -> 3x3 at latent resolution; the last layer starts at zero."""
    net = nn.Sequential(
        nn.Conv2d(c_in, HIDDEN, 3, padding=1), nn.ReLU(),
        nn.Conv2d(HIDDEN, HIDDEN, 1), nn.ReLU(),
        nn.Conv2d(HIDDEN, c_out, 3, padding=1),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def scale_context_input(index: Tensor, symbols: list[Tensor]) -> Tensor:
    """(B, C + kC, h, w) input of ScaleNet_k from slice k's integer index and earlier symbols."""
    parts = [index * _INDEX_UNIT] + [s.abs().clamp(max=SYMBOL_CLIP) * _SYMBOL_UNIT
                                     for s in symbols]
    return torch.cat(parts, dim=1)


class ChannelContext(nn.Module):
    """Residual mean and scale-index networks for slices 1..S-1 of y' (see module docstring)."""

    def __init__(self, m: int, slices: int) -> None:
        super().__init__()
        self.slices, self.size = slices, m // slices
        c = self.size
        self.means = nn.ModuleList(_residual_net(c + k * c, c) for k in range(1, slices))
        self.scales = nn.ModuleList(_residual_net(c + k * c, c) for k in range(1, slices))

    def split(self, t: Tensor) -> list[Tensor]:
        return list(t.split(self.size, dim=1))

    def mean(self, k: int, means: Tensor, y_hat: list[Tensor], gain: Tensor) -> Tensor:
        """Refined gained means (B, C, h, w) of slice k from its hyperprior means (gained),
        the earlier slices' ŷ (ungained) and slice k's gain (B, C, 1, 1)."""
        if k == 0:
            return means
        x = torch.cat([means / gain, *y_hat], 1) * _Y_UNIT
        return means + gain * self.means[k - 1](x) / _Y_UNIT

    def scale_delta(self, k: int, index: Tensor, symbols: list[Tensor]) -> Tensor:
        """Continuous index residual of slice k (training; the coder uses the integer net)."""
        return self.scales[k - 1](scale_context_input(index, symbols))

    def refine(self, y: Tensor, means: Tensor, index: Tensor,
               gain: Tensor) -> tuple[Tensor, Tensor]:
        """The model's pass over all slices of y' (B, M, h, w), gained, with its hyperprior
        means and continuous index (same shape) and gain (B, M, 1, 1). Later slices see the
        earlier ones rounded around their means, as the decoder will. Returns the refined
        (means, index), each (B, M, h, w)."""
        out_means, out_index, y_hat, symbols = [], [], [], []
        for k, (y_k, mu_k, i_k, g_k) in enumerate(zip(*map(self.split, (y, means, index, gain)))):
            mu_k = self.mean(k, mu_k, y_hat, g_k)
            if k:  # the residual on top, from the integer index the decoder will see
                base = i_k.detach().round().clamp(0, SCALE_LEVELS - 1)
                i_k = i_k + self.scale_delta(k, base, symbols)
            s_k = torch.round(y_k - mu_k).detach()
            symbols.append(s_k)
            y_hat.append(((s_k + mu_k) / g_k).detach())
            out_means.append(mu_k)
            out_index.append(i_k)
        return torch.cat(out_means, 1), torch.cat(out_index, 1)


def calibration_inputs(k: int, size: int, seed: int = 0) -> Tensor:
    """Synthetic inputs spanning ScaleNet_k's range, to choose its fixed-point formats:
    a random table index per position and symbols drawn from that table's Gaussian."""
    g = torch.Generator().manual_seed(seed + k)
    index = torch.randint(SCALE_LEVELS, (64, 1, 8, 8), generator=g).double()
    sigma = SCALES[index.long()]
    base = index.expand(-1, size, -1, -1)
    symbols = [torch.round(torch.randn(64, size, 8, 8, generator=g, dtype=torch.float64) * sigma)
               for _ in range(k)]
    return scale_context_input(base, symbols)
