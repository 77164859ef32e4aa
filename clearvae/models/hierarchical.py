"""Hierarchical VAE with a top-down inference path, after VDVAE and NVAE.

Child, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on Images",
ICLR 2021; Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.

Latent groups z_1 .. z_G are spatial maps, the first ones at the lowest resolution. The prior
and the posterior of each group are diagonal Gaussians that depend on the groups above it,
computed by one shared top-down pass; only the posterior also sees the image:

    bottom-up:  x -> stem -> [cells, store a_r, down] per resolution r = 0 (full) .. L (lowest)

    top-down:   h = learned constant at resolution L
      for each group i, lowest resolution first (with an upsampling between resolutions):
        p(z_i | z_<i)    = N(prior(h))                  h = h + the prior net's third output
        q(z_i | x, z_<i) = N(posterior([h, a_r]))       (training, reconstruction)
        z_i ~ q (or ~ p when sampling)                  h = h + proj(z_i);  h = h + cell(h)
      h -> likelihood params (B, P, H, W)

The rate is KL(q || p) per group, analytic, so ``VAEOutput.kl`` has one column per group
(top group first) and free bits apply per group. Stability as in VDVAE: the prior net's last
convolution starts at zero (p = N(0, I), no state change), the residual cells' last
convolutions and the z projections are scaled by 1/sqrt(number of cells in their stack), and
standard deviations are a softplus with a floor rather than an exp, so they cannot grow
exponentially with their pre-activation. The trainer's ``skip_threshold`` handles what spikes
remain. Cells follow VDVAE (bottleneck, no normalisation) with SiLU for GELU.

Unlike VDVAE, the posterior net's last convolution starts at zero too: q = p at the start, so
the KL starts at 0 rather than at a random value per group, and on a tiny set of bar patterns
(tests) the random start fell into posterior collapse (KL ~0 after 60 steps) where this one
did not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clearvae.errors import ConfigError
from clearvae.models.base import VAE, VAEConfig, VAEOutput
from clearvae.models.layers import SelfAttention, pad_to_multiple

_STD_MIN = 1e-3
_STD_SHIFT = math.log(math.expm1(1.0 - _STD_MIN))  # a zero pre-activation gives std 1


def _halvings_to_one(side: int) -> int:
    """How many 2x downsamplings (rounding up) take a side of ``side`` pixels to 1."""
    return (side - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class HierarchicalVAEConfig(VAEConfig):
    kind: Literal["hierarchical"] = "hierarchical"
    widths: tuple[int, ...] = (16, 32, 48)  # channels at full, 1/2, 1/4 ... resolution
    blocks_per_resolution: tuple[int, ...] = (0, 1, 3)  # latent groups at each resolution
    latent_channels: int = 4  # channels of each group's z
    bottleneck: float = 0.25  # inner width of the residual cells, as a fraction of the width
    attention: bool = False  # self-attention at the lowest resolution

    def validate(self) -> None:
        super().validate()
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"widths must be a non-empty list of positive ints: {self.widths}")
        h, w = self.image_size
        most = _halvings_to_one(min(h, w))
        if self.levels > most:
            chain = [min(h, w)]
            while chain[-1] > 1:
                chain.append(-(-chain[-1] // 2))
            raise ConfigError(
                f"widths {list(self.widths)} asks for {len(self.widths)} resolutions "
                f"({self.levels} downsamplings), but a {h}x{w} image reaches 1x1 after {most} "
                f"({' -> '.join(map(str, chain))}): give at most {most + 1} widths"
            )
        if len(self.blocks_per_resolution) != len(self.widths):
            raise ConfigError(
                f"blocks_per_resolution {list(self.blocks_per_resolution)} needs one count per "
                f"resolution, i.e. {len(self.widths)} values like widths {list(self.widths)}"
            )
        if min(self.blocks_per_resolution) < 0 or self.blocks_per_resolution[-1] < 1:
            raise ConfigError(
                "blocks_per_resolution must be >= 0, and >= 1 at the lowest resolution (the "
                f"last value, where the top-down pass starts): {list(self.blocks_per_resolution)}"
            )
        if self.latent_channels < 1 or self.bottleneck <= 0:
            raise ConfigError("latent_channels must be >= 1 and bottleneck > 0")

    @property
    def levels(self) -> int:
        """Number of 2x downsamplings between the image and the lowest resolution."""
        return len(self.widths) - 1

    @property
    def groups(self) -> int:
        """Number of latent groups (columns of ``VAEOutput.kl``)."""
        return sum(self.blocks_per_resolution)


class Gaussian(NamedTuple):
    """A diagonal Gaussian over one group's map: mean and std of shape (B, Z, h, w)."""

    mean: Tensor
    std: Tensor

    @classmethod
    def from_params(cls, params: Tensor) -> Gaussian:
        """From (B, 2Z, h, w) network outputs: means, then std pre-activations."""
        mean, raw = params.float().chunk(2, dim=1)  # float32 even under mixed precision
        return cls(mean, _STD_MIN + F.softplus(raw + _STD_SHIFT))

    def sample(self, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw with the std scaled by ``temperature`` (0: the mean)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + temperature * self.std * noise

    def log_prob(self, z: Tensor) -> Tensor:
        """(B,) log density of z, summed over the map."""
        lp = -0.5 * ((z - self.mean) / self.std).square() - self.std.log()
        return lp.flatten(1).sum(1) - 0.5 * math.log(2 * math.pi) * z[0].numel()

    def kl(self, other: Gaussian) -> Tensor:
        """(B,) KL(self || other), summed over the map. Written with expm1 so that it is
        exactly 0 for equal Gaussians and never negative from rounding."""
        u = self.std.log() - other.std.log()
        kl = 0.5 * (torch.expm1(2 * u) - 2 * u + ((self.mean - other.mean) / other.std).square())
        return kl.flatten(1).sum(1)


class Group(NamedTuple):
    """One latent group of a top-down pass (posterior None when x was not given)."""

    z: Tensor
    prior: Gaussian
    posterior: Gaussian | None


# Picks a group's z from its index (top = 0), prior and posterior.
Choose = Callable[[int, Gaussian, "Gaussian | None"], Tensor]


class Cell(nn.Module):
    """VDVAE's bottleneck cell: 1x1 -> 3x3 -> 3x3 -> 1x1 convolutions, each after a SiLU.
    ``last_scale`` multiplies the initial weights of the last convolution (0: zero output)."""

    def __init__(self, channels: int, middle: int, out: int, last_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, middle, 1),
            nn.SiLU(), nn.Conv2d(middle, middle, 3, padding=1),
            nn.SiLU(), nn.Conv2d(middle, middle, 3, padding=1),
            nn.SiLU(), nn.Conv2d(middle, out, 1),
        )
        with torch.no_grad():
            self.body[-1].weight.mul_(last_scale)
            self.body[-1].bias.mul_(last_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class TopDownBlock(nn.Module):
    """One latent group: prior and posterior from the state, sample, merge z into the state."""

    def __init__(self, width: int, middle: int, zdim: int, scale: float) -> None:
        super().__init__()
        self.zdim = zdim
        self.prior = Cell(width, middle, 2 * zdim + width, last_scale=0.0)
        self.posterior = Cell(2 * width, middle, 2 * zdim, last_scale=0.0)
        self.z_proj = nn.Conv2d(zdim, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.cell = Cell(width, middle, width, last_scale=scale)

    def forward(self, h: Tensor, a: Tensor | None, index: int,
                choose: Choose) -> tuple[Tensor, Group]:
        prior_params, h_delta = self.prior(h).split([2 * self.zdim, h.shape[1]], dim=1)
        prior = Gaussian.from_params(prior_params)  # p(z_i | z_<i)
        posterior = None if a is None else Gaussian.from_params(  # q(z_i | x, z_<i)
            self.posterior(torch.cat([h, a], dim=1)))
        z = choose(index, prior, posterior)  # (B, Z, h, w)
        h = h + h_delta + self.z_proj(z)
        return h + self.cell(h), Group(z, prior, posterior)


class HierarchicalVAE(VAE):
    """Top-down hierarchical VAE; takes images of any size (padded to a multiple of
    2**levels, outputs cropped back)."""

    config_class = HierarchicalVAEConfig
    config: HierarchicalVAEConfig

    def __init__(self, config: HierarchicalVAEConfig) -> None:
        super().__init__(config)
        w, counts = config.widths, config.blocks_per_resolution
        mid = [max(1, round(c * config.bottleneck)) for c in w]
        scale = 1 / math.sqrt(config.groups)  # each stack (bottom-up, top-down) has G cells
        self.stem = nn.Conv2d(config.image_channels, w[0], 3, padding=1)
        self.enc_cells = nn.ModuleList(
            nn.ModuleList(Cell(w[r], mid[r], w[r], scale) for _ in range(counts[r]))
            for r in range(len(w)))
        # 2x2 stride-2 convolutions go down, transposed ones up: cheap and position-aware. Going
        # up this way was 8x faster on CPU than nearest upsampling and a 1x1 convolution.
        self.down = nn.ModuleList(nn.Conv2d(w[r], w[r + 1], 2, stride=2)
                                  for r in range(config.levels))
        self.start = nn.Parameter(torch.zeros(1, w[-1], 1, 1))  # top-down state before z_1
        self.blocks = nn.ModuleList(
            nn.ModuleList(TopDownBlock(w[r], mid[r], config.latent_channels, scale)
                          for _ in range(counts[r]))
            for r in range(len(w)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[r + 1], w[r], 2, stride=2)
                                for r in range(config.levels))
        self.enc_attention = SelfAttention(w[-1]) if config.attention else nn.Identity()
        self.dec_attention = SelfAttention(w[-1]) if config.attention else nn.Identity()
        self.head = nn.Sequential(nn.SiLU(),
                                  nn.Conv2d(w[0], self.likelihood.param_channels, 3, padding=1))

    # --- the two passes --------------------------------------------------------------------

    def _bottom_up(self, x: Tensor) -> list[Tensor]:
        """Activations a_r (B, widths[r], H/2^r, W/2^r) of the padded image, r = 0 (full)..L."""
        self.check_input(x)
        h = self.stem(pad_to_multiple(2 * x - 1, 2**self.config.levels))
        acts = []
        for r, cells in enumerate(self.enc_cells):
            for cell in cells:
                h = h + cell(h)
            if r == self.config.levels:
                h = self.enc_attention(h)
            acts.append(h)
            if r < self.config.levels:
                h = self.down[r](h)
        return acts

    def _top_down(self, n: int, size: tuple[int, int], acts: list[Tensor] | None,
                  choose: Choose) -> tuple[Tensor, list[Group]]:
        """Likelihood params (n, P, H, W) and the groups, top first; ``choose`` picks each z."""
        f = 2**self.config.levels
        h = self.start.expand(n, -1, -(-size[0] // f), -(-size[1] // f))  # (n, w_L, H/f, W/f)
        groups: list[Group] = []
        for r in reversed(range(len(self.blocks))):
            if r < self.config.levels:
                h = self.up[r](h)
            for block in self.blocks[r]:
                h, group = block(h, None if acts is None else acts[r], len(groups), choose)
                groups.append(group)
            if r == self.config.levels:
                h = self.dec_attention(h)
        params = self.head(h).float()  # the likelihood in float32 under mixed precision too
        return params[..., : size[0], : size[1]], groups

    # --- the VAE contract ------------------------------------------------------------------

    def forward(self, x: Tensor, target: Tensor | None = None) -> VAEOutput:
        params, groups = self._top_down(x.shape[0], x.shape[-2:], self._bottom_up(x),
                                        lambda i, p, q: q.sample())
        distortion = -self.likelihood.log_prob(params, x if target is None else target)
        kl = torch.stack([g.posterior.kl(g.prior) for g in groups], dim=1)  # (B, G)
        return VAEOutput(distortion, kl, params)

    def log_weight(self, x: Tensor, target: Tensor | None = None, n: int = 1) -> Tensor:
        acts = [a.repeat_interleave(n, 0) for a in self._bottom_up(x)]  # (B n, ...) each
        params, groups = self._top_down(x.shape[0] * n, x.shape[-2:], acts,
                                        lambda i, p, q: q.sample())
        target = (x if target is None else target).repeat_interleave(n, 0)
        log_px = self.likelihood.log_prob(params, target)
        log_w = log_px + sum(g.prior.log_prob(g.z) - g.posterior.log_prob(g.z) for g in groups)
        return log_w.view(x.shape[0], n)

    def temperatures(self, temperature: float | Sequence[float]) -> list[float]:
        """One temperature per group from a number or a per-group list (top group first)."""
        temps = ([float(temperature)] * self.config.groups
                 if isinstance(temperature, (int, float)) else [float(t) for t in temperature])
        if len(temps) != self.config.groups:
            raise ConfigError(f"got {len(temps)} temperatures for a model with "
                              f"{self.config.groups} latent groups: give one number or one each")
        if min(temps) < 0:
            raise ConfigError(f"temperatures must be >= 0, got {temps}")
        return temps

    @torch.no_grad()
    def sample(self, n: int, temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None,
               size: tuple[int, int] | None = None) -> Tensor:
        """(n, C, H, W) images from the prior; ``temperature`` scales each group's std."""
        temps = self.temperatures(temperature)
        params, _ = self._top_down(n, size or self.config.image_size, None,
                                   lambda i, p, q: p.sample(temps[i], generator))
        return self.likelihood.mean(params)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode with every group at its posterior mean."""
        params, _ = self._top_down(x.shape[0], x.shape[-2:], self._bottom_up(x),
                                   lambda i, p, q: q.mean)
        return self.likelihood.mean(params)

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        """(steps, C, H, W): every group's z moves on the line between a's and b's posterior
        means (each taken along its own image's top-down path); the ends are the
        reconstructions of a and b."""
        x = torch.stack([a, b])
        _, groups = self._top_down(2, x.shape[-2:], self._bottom_up(x), lambda i, p, q: q.mean)
        t = torch.linspace(0, 1, steps, device=x.device).view(-1, 1, 1, 1)
        path = [(1 - t) * g.z[:1] + t * g.z[1:] for g in groups]  # (steps, Z, h, w) each
        params, _ = self._top_down(steps, x.shape[-2:], None, lambda i, p, q: path[i])
        return self.likelihood.mean(params)

    @torch.no_grad()
    def resample_below(self, x: Tensor, keep: int, n: int,
                       temperature: float | Sequence[float] = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
        """(B, n, C, H, W): the top ``keep`` groups at x's posterior means, the ones below
        drawn from the prior: variations of detail that keep the global shape. ``keep`` = all
        groups gives the reconstruction, 0 plain samples."""
        if not 0 <= keep <= self.config.groups:
            raise ConfigError(f"keep must be between 0 and {self.config.groups} (the number of "
                              f"latent groups), got {keep}")
        temps = self.temperatures(temperature)
        acts = [a.repeat_interleave(n, 0) for a in self._bottom_up(x)]

        def choose(i: int, p: Gaussian, q: Gaussian | None) -> Tensor:
            return q.mean if i < keep else p.sample(temps[i], generator)

        params, _ = self._top_down(x.shape[0] * n, x.shape[-2:], acts, choose)
        return self.likelihood.mean(params).view(x.shape[0], n, *x.shape[1:])
