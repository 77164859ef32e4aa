"""The four transforms of the mean-scale hyperprior codec, and the GDN nonlinearity.

Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale hyperprior",
ICLR 2018; the mean-scale variant of Minnen, Ballé, Toderici, "Joint autoregressive and
hierarchical priors for learned image compression", NeurIPS 2018 (without the context model):

    x (B, 3, H, W) in [0, 1] --g_a--> y (B, M, H/16, W/16) --h_a--> z (B, N, H/64, W/64)
    ẑ --h_s--> means (B, M, H/16, W/16), scale index (B, M, H/16, W/16)
    ŷ --g_s--> x̂ (B, 3, H, W)

These modules know nothing about quantisation, gains or coding (see ``entropy_models`` and
``model``). Upsampling everywhere is a stride-1 3x3 convolution at the low resolution followed
by a pixel shuffle (Shi et al., "Real-time single image and video super-resolution using an
efficient sub-pixel convolutional neural network", CVPR 2016), initialised so that it starts as
nearest-neighbour upsampling and so shows no checkerboard (Aitken et al. 2017, "ICNR").

The scale head of ``h_s`` is built for a later integer version (Ballé, Johnston, Minnen,
"Integer networks for data compression", ICLR 2019): only stride-1 convolutions, pixel shuffles
(a pure permutation) and ReLUs, no normalisation, and it ends in ONE value per latent element, a
continuous index into the fixed scale table of ``entropy_models``. An integer network then only
has to produce one rounded integer per element, that index, and the coder picks the table with
it. (S = 64 logits per element would cost 64x the output channels and an arg-max whose training
needs a relaxation; a single index is the smallest thing that names a table.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé, Laparra, Simoncelli, ICLR 2016) in the
    simplified form of Johnston et al. ("Computationally efficient neural image compression",
    2019), which needs no square or square root and compresses as well:

        GDN:  y_i = x_i / (beta_i + sum_j gamma_ij |x_j|)
        IGDN: y_i = x_i * (beta_i + sum_j gamma_ij |x_j|)

    Non-negativity by a square: beta = b**2 + beta_min, gamma = g**2, so no clamping is needed
    and Adam moves b and g at the same speed whatever their size.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.beta_root = nn.Parameter(torch.full((channels,), (1.0 - beta_min) ** 0.5))
        gamma = gamma_init * torch.eye(channels) + 1e-4  # mostly diagonal, all entries alive
        self.gamma_root = nn.Parameter(gamma.sqrt())

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        beta = self.beta_root.square() + self.beta_min  # (C,)
        gamma = self.gamma_root.square()  # (C, C)
        norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)  # (B, C, H, W)
        return x * norm if self.inverse else x / norm


def _down(c_in: int, c_out: int) -> nn.Conv2d:
    """5x5 convolution with stride 2: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Conv2d(c_in, c_out, 5, stride=2, padding=2)


class Up(nn.Sequential):
    """2x upsampling: 3x3 conv to 4 * c_out channels, then pixel shuffle.

    (B, c_in, H, W) -> (B, 4 c_out, H, W) -> (B, c_out, 2H, 2W). The four sub-pixel filters of
    each output channel start equal, so at initialisation this is nearest upsampling after a
    3x3 conv (no checkerboard), and training may then tell them apart.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(conv.weight[::4].repeat_interleave(4, dim=0))
            conv.bias.copy_(conv.bias[::4].repeat_interleave(4, dim=0))
        super().__init__(conv, nn.PixelShuffle(2))


class AnalysisTransform(nn.Module):
    """g_a: x (B, 3, H, W) -> y (B, M, H/16, W/16); H and W must divide by 16."""

    def __init__(self, image_channels: int, n: int, m: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _down(image_channels, n), GDN(n),
            _down(n, n), GDN(n),
            _down(n, n), GDN(n),
            _down(n, m),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SynthesisTransform(nn.Module):
    """g_s: ŷ (B, M, h, w) -> x̂ (B, 3, 16h, 16w), the mirror of g_a with inverse GDN."""

    def __init__(self, image_channels: int, n: int, m: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Up(m, n), GDN(n, inverse=True),
            Up(n, n), GDN(n, inverse=True),
            Up(n, n), GDN(n, inverse=True),
            Up(n, image_channels),
        )

    def forward(self, y: Tensor) -> Tensor:
        return self.net(y)


class HyperAnalysis(nn.Module):
    """h_a: y (B, M, h, w) -> z (B, N, h/4, w/4); takes y itself (mean-scale), not |y|."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(m, n, 3, padding=1), nn.ReLU(),
            _down(n, n), nn.ReLU(),
            _down(n, n),
        )

    def forward(self, y: Tensor) -> Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """h_s: ẑ (B, N, h, w) -> (means, scale index), each (B, M, 4h, 4w).

    Two separate heads, so that the scale head can become an integer network on its own
    while the mean head stays float (means only shift decoded values; they never choose a
    probability table).
    """

    def __init__(self, n: int, m: int, initial_index: float = 18.0) -> None:
        super().__init__()
        self.means = self._head(n, m)
        self.scale = self._head(n, m)  # integer-network friendly: Conv2d, PixelShuffle, ReLU
        with torch.no_grad():  # start near scale 1 (index 18 of 0..63), little spread
            self.scale[-1].weight.mul_(0.1)
            self.scale[-1].bias.fill_(initial_index)

    @staticmethod
    def _head(n: int, m: int) -> nn.Sequential:  # the widths of Ballé et al.'s h_s
        return nn.Sequential(
            Up(n, n), nn.ReLU(),
            Up(n, n), nn.ReLU(),
            nn.Conv2d(n, m, 3, padding=1),
        )

    def forward(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.means(z_hat), self.scale(z_hat)
