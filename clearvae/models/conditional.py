"""Conditional VAE denoiser: a U-Net gives the posterior mean, latents give the spread around it.

Trained on clean images with synthetic noise (below), or on noisy images alone, where the
clean target x becomes a recorrupted noisy one with known noise (``models.denoiser``).

With clean images at hand (synthetic noise), the posterior p(clean | noisy) can be learned
directly instead of through a noise model alone. A conditional VAE (Sohn, Lee, Yan, "Learning
structured output representation using deep conditional generative models", NeurIPS 2015;
the hierarchical prior follows the probabilistic U-Net of Kohl et al., NeurIPS 2018 and
HPU-Net, 2019) has a prior p(z | y) that sees only the noisy image y and a posterior
q(z | x, y) that also sees the clean x during training. Here the two jobs are split:

    noisy y (B, C, H, W) --U-Net--> features d_L .. d_0 (lowest resolution first)
        m = y - head(d_0)                          MMSE estimate E[x | y], trained with MSE
    x - m --residual encoder--> e_r                (training only)
    g = 0 at resolution L; for r = L .. 1:
        p(z_r | z_>r, y)    = N(prior([d_r, g]))
        q(z_r | z_>r, x, y) = N(posterior([d_r, g, e_r]))
        z_r ~ q (training) or p (denoising);  g = g + proj(z_r);  g = g + cell(g);  g = up(g)
    s, tau = m + out([g, d_0])                     p(x | z, y) = N(s, tau^2) per pixel

    loss = 0.5 |x - m|^2 / sigma_ref^2  +  [-log N(x; s, tau^2) + KL(q || p)]

2.5-D (``context_slices`` k > 0, for volumes): y is a stack of 2k + 1 neighbouring slices,
(B, (2k + 1) C, H, W) with the slice to denoise in the middle; the U-Net's stem also sees the
neighbours (through its own convolution, which starts at zero, so a 2-D model is its warm
start) and everything else, m included, is about the middle slice.

A draw is s + tau n: the latents carry what is correlated across pixels (where an edge runs),
tau the rest. tau is learned: priced at the noise's own sigma, as DivNoising's likelihood is,
the latents would carry nothing, because the posterior mean's error is smaller than the noise
(for a Gaussian prior its covariance is below sigma^2 I), so no detail of it is worth its KL
(measured: KL 0.000 nats after 1 600 steps of the first bundled run). The branch reads d and
m without gradient (detached), so the mean is trained by its MSE alone (sigma_ref = 25/255:
plain MSE, as DnCNN-B, Zhang et al. 2017), and the mean is exact rather than the average of a
few draws: averaging K true posterior draws has (K+1)/K times the MMSE's squared error (0.5 dB
more at K = 8). The U-Net is residual blocks without normalisation (conv-ReLU-conv, as EDSR
and DRUNet), 2x2 strided convolutions down, transposed ones up, skips added.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clearvae.config import Config
from clearvae.errors import ConfigError
from clearvae.models.base import VAEOutput
from clearvae.models.hierarchical import Cell, Gaussian
from clearvae.models.layers import pad_to_multiple

SIGMA_REF = 25.0 / 255.0  # the MSE of the mean is counted in nats of Gaussian noise at sigma 25
_TAU_MIN = 0.5 / 255.0
_TAU_SHIFT = math.log(math.expm1(10.0 / 255.0 - _TAU_MIN))  # a zero pre-activation: tau 10/255


@dataclasses.dataclass(frozen=True)
class ConditionalDenoiserConfig(Config):
    """``widths``: U-Net channels at full, 1/2, 1/4 ... resolution; ``blocks``: residual blocks
    per resolution on each side; one latent group of ``latent_channels`` per resolution below
    the full one, in a branch of ``branch`` times the U-Net's width."""

    kind: Literal["conditional"] = "conditional"
    image_channels: int = 1
    image_size: tuple[int, int] = (64, 64)  # training crops
    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks: int = 2
    latent_channels: int = 4
    branch: float = 0.25
    likelihood: Literal["gaussian"] = "gaussian"  # the output is the clean image
    context_slices: int = 0  # 2.5-D: neighbouring slices on each side seen as extra input

    def validate(self) -> None:
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if not isinstance(self.context_slices, int) or not 0 <= self.context_slices <= 4:
            raise ConfigError(f"context_slices must be an integer in 0..4, got "
                              f"{self.context_slices!r}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"widths needs at least two positive values (full resolution and "
                              f"one below it, where the latents live), got {list(self.widths)}")
        if self.blocks < 1 or self.latent_channels < 1 or not 0 < self.branch <= 1:
            raise ConfigError("blocks and latent_channels must be >= 1 and branch in (0, 1]; got "
                              f"{self.blocks}, {self.latent_channels}, {self.branch}")

    @property
    def levels(self) -> int:
        return len(self.widths) - 1

    @property
    def input_channels(self) -> int:
        """Channels of the noisy input: the slice and its neighbours."""
        return self.image_channels * (2 * self.context_slices + 1)


class Residual(nn.Module):
    """x + conv(relu(conv(x))); the last convolution starts at zero (the block at identity).
    Not ``layers.ResBlock``: its GroupNorms cost time on a CPU, and denoisers do without."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _stack(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(Residual(channels) for _ in range(n)))


class ConditionalDenoiser(nn.Module):
    """``forward(y, x)`` gives the loss terms; ``mean_and_draws(y, n)`` denoises."""

    def __init__(self, config: ConditionalDenoiserConfig) -> None:
        super().__init__()
        self.config = config
        w, c, n, z = config.widths, config.image_channels, config.blocks, config.latent_channels
        b = [max(4, round(v * config.branch)) for v in w]  # branch widths
        levels = config.levels
        # the U-Net: d_r for r = 0 .. L
        self.stem = nn.Conv2d(c, w[0], 3, padding=1)
        self.context_stem = None  # 2.5-D: the neighbouring slices' share of the stem
        if config.context_slices:
            self.context_stem = nn.Conv2d(2 * config.context_slices * c, w[0], 3, padding=1,
                                          bias=False)
            nn.init.zeros_(self.context_stem.weight)
        self.enc = nn.ModuleList(_stack(w[r], n) for r in range(levels))
        self.down = nn.ModuleList(nn.Conv2d(w[r], w[r + 1], 2, stride=2) for r in range(levels))
        self.middle = _stack(w[-1], n)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[r + 1], w[r], 2, stride=2)
                                for r in range(levels))
        self.dec = nn.ModuleList(_stack(w[r], n) for r in range(levels))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(w[0], c, 3, padding=1))
        # the latent branch, resolutions L .. 1 (lists indexed r - 1)
        self.res_stem = nn.Conv2d(2 * c, b[0], 3, padding=1)
        self.res_down = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(b[r], b[r + 1], 2, stride=2), nn.SiLU(),
                          nn.Conv2d(b[r + 1], b[r + 1], 3, padding=1)) for r in range(levels))
        mid = [max(4, v // 2) for v in b]
        scale = 1 / math.sqrt(levels)
        self.prior = nn.ModuleList(Cell(w[r] + b[r], mid[r], 2 * z, last_scale=0.0)
                                   for r in range(1, levels + 1))
        self.posterior = nn.ModuleList(Cell(w[r] + 2 * b[r], mid[r], 2 * z, last_scale=0.0)
                                       for r in range(1, levels + 1))
        self.z_proj = nn.ModuleList(nn.Conv2d(z, b[r], 1) for r in range(1, levels + 1))
        self.cell = nn.ModuleList(Cell(b[r], mid[r], b[r], last_scale=scale)
                                  for r in range(1, levels + 1))
        self.branch_up = nn.ModuleList(nn.ConvTranspose2d(b[r + 1], b[r], 2, stride=2)
                                       for r in range(levels))
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(b[0] + w[0], 2 * c, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # draws start at the mean, tau at 10/255
        nn.init.zeros_(self.out[-1].bias)
        self.branch_widths = b

    def check_input(self, y: Tensor) -> None:
        if y.ndim != 4 or y.shape[1] != self.config.input_channels:
            raise ConfigError(f"model expects images of shape (B, {self.config.input_channels}, "
                              f"H, W), got {tuple(y.shape)}")

    def centre(self, y: Tensor) -> Tensor:
        """(B, C, H, W): the slice to denoise out of a 2.5-D stack (y itself in 2-D)."""
        c, k = self.config.image_channels, self.config.context_slices
        return y[:, k * c : (k + 1) * c]

    def _unet(self, y: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The middle slice of y padded to a multiple of 2**levels (B, C, H', W'), its mean m
        (float32, same shape) and the decoder features d_0 .. d_L."""
        self.check_input(y)
        stack = pad_to_multiple(y, 2**self.config.levels)
        y = self.centre(stack)
        h = self.stem(2 * y - 1)
        if self.context_stem is not None:
            c, k = self.config.image_channels, self.config.context_slices
            h = h + self.context_stem(2 * torch.cat([stack[:, : k * c],
                                                     stack[:, (k + 1) * c :]], 1) - 1)
        skips = []
        for enc, down in zip(self.enc, self.down):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.middle(h)
        feats = [h]
        for r in reversed(range(self.config.levels)):
            h = self.dec[r](self.up[r](h) + skips[r])
            feats.append(h)
        return y, (y - self.head(h)).float(), feats[::-1]

    def _branch(self, d: list[Tensor], m: Tensor, e: list[Tensor] | None,
                temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor | None]:
        """s and tau (B, C, H', W') of one z and, with posterior features e (z ~ q), the KL
        (B, L) per group, top first."""
        d = [f.detach() for f in d]
        g = d[-1].new_zeros(d[-1].shape[0], self.branch_widths[-1], *d[-1].shape[-2:])
        kls = []
        for r in reversed(range(1, self.config.levels + 1)):
            prior = Gaussian.from_params(self.prior[r - 1](torch.cat([d[r], g], 1)))
            if e is None:
                zr = prior.sample(temperature)
            else:
                post = Gaussian.from_params(self.posterior[r - 1](torch.cat([d[r], g, e[r]], 1)))
                zr = post.sample()
                kls.append(post.kl(prior))
            g = g + self.z_proj[r - 1](zr.to(g.dtype))
            g = self.branch_up[r - 1](g + self.cell[r - 1](g))
        offset, raw = self.out(torch.cat([g, d[0]], 1)).float().chunk(2, dim=1)
        tau = _TAU_MIN + F.softplus(raw + _TAU_SHIFT)
        return m.detach() + offset, tau, torch.stack(kls, 1) if e is not None else None

    def _residual_features(self, x: Tensor, y: Tensor, m: Tensor) -> list[Tensor]:
        h = self.res_stem(torch.cat([(x - m.detach()) / SIGMA_REF, 2 * y - 1], 1))
        feats = [h]
        for down in self.res_down:
            h = down(h)
            feats.append(h)
        return feats

    def forward(self, y: Tensor, x: Tensor, x_var: Tensor | None = None) -> VAEOutput:
        """-ELBO terms for noisy y and its target x (B, C, H, W), [0, 1] scale: the clean image,
        or a noisy one whose noise of variance ``x_var`` (B, C, H, W; recorruption,
        ``models.denoiser``) is independent of y's; ``params`` is the mean m."""
        size = y.shape[-2:]
        yp, m, d = self._unet(y)  # yp: the middle slice, padded
        xp = pad_to_multiple(x, 2**self.config.levels)
        s, tau, kl = self._branch(d, m, self._residual_features(xp, yp, m))
        m, s, tau = (t[..., : size[0], : size[1]] for t in (m, s, tau))
        mse = 0.5 * (x - m).square().flatten(1).sum(1) / SIGMA_REF**2
        var = tau.square() if x_var is None else tau.square() + x_var
        nll = 0.5 * ((x - s).square() / var + var.log() + math.log(2 * math.pi))
        return VAEOutput(mse + nll.flatten(1).sum(1), kl, m)

    @torch.no_grad()
    def mean(self, y: Tensor) -> Tensor:
        """The MMSE estimate (B, C, H, W) alone: one U-Net pass."""
        return self._unet(y)[1][..., : y.shape[-2], : y.shape[-1]]

    @torch.no_grad()
    def mean_and_draws(self, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The MMSE estimate (B, C, H, W) and n draws (n, B, C, H, W) from p(x | y): s + tau
        noise."""
        size = y.shape[-2:]
        _, m, d = self._unet(y)
        draws = [m.new_zeros((0, *m.shape))]  # n = 0: the estimate alone, no draw computed
        for _ in range(n):
            s, tau, _ = self._branch(d, m, None)
            draws.append((s + tau * torch.randn_like(s))[None])
        return m[..., : size[0], : size[1]], torch.cat(draws)[..., : size[0], : size[1]]
