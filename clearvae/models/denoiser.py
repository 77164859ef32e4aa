"""Denoising VAE: learns clean images from noisy ones alone, through an explicit noise model.

DivNoising (Prakash, Krull, Jug, "Fully unsupervised diversity denoising with convolutional
variational autoencoders", ICLR 2021) and Hierarchical DivNoising (Prakash, Delbracio,
Milanfar, Jug, ICLR 2022): a VAE whose decoder gives the clean signal s and whose likelihood
is the noise model p(x | s), not a generic image likelihood:

    noisy x (B, C, H, W) --backbone encoder--> q(z | x) --sample--> z --decoder--> s (B, C, H, W)
    loss = -log p(x | s) + KL(q(z | x) || p(z))          p(x | s): ``restore.noise``

With the noise's own variance in the likelihood, encoding the noise costs more KL than it
gains in likelihood, so the latent keeps the signal and s is a clean image; decoding several
posterior samples gives diverse plausible clean images, their mean the MMSE estimate and their
spread an uncertainty map (``clearvae.restore``). The backbone is any VAE family with a
Gaussian likelihood (the hierarchical one is HDN); its own likelihood is not used.

With clean training images (synthetic noise) the backbone may instead be the conditional VAE
of ``models.conditional``, which learns p(clean | noisy) directly: its U-Net gives the MMSE
estimate itself and its latents the draws around it (the bundled denoiser is one).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from clearvae.config import Config
from clearvae.errors import ConfigError
from clearvae.models.base import VAEOutput, vae_loss
from clearvae.models.conditional import ConditionalDenoiser, ConditionalDenoiserConfig
from clearvae.models.conv import ConvVAE, ConvVAEConfig
from clearvae.models.hierarchical import HierarchicalVAE, HierarchicalVAEConfig
from clearvae.noise import NoiseConfig, noise_log_prob

BACKBONES = {"hierarchical": HierarchicalVAE, "conv": ConvVAE, "conditional": ConditionalDenoiser}


@dataclasses.dataclass(frozen=True)
class DenoisingVAEConfig(Config):
    """``backbone``: a hierarchical or conv VAE config (likelihood gaussian); ``noise``: the
    noise model of the training images."""

    kind: Literal["denoiser"] = "denoiser"
    backbone: HierarchicalVAEConfig | ConvVAEConfig | ConditionalDenoiserConfig = dataclasses.field(
        default_factory=lambda: HierarchicalVAEConfig(likelihood="gaussian", image_channels=1,
                                                      image_size=(64, 64)))
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)

    def validate(self) -> None:
        if self.backbone.likelihood != "gaussian":
            raise ConfigError(f"a denoiser's backbone must use likelihood gaussian (its output "
                              f"is the clean image); got {self.backbone.likelihood!r}")
        if self.conditional and self.noise.synthetic is None:
            raise ConfigError("a conditional backbone learns from clean images with synthetic "
                              "noise: set noise.synthetic [lo, hi] (for noisy images alone use "
                              "a hierarchical backbone, preset denoise-noisy)")

    @property
    def conditional(self) -> bool:
        """Whether the backbone learns p(clean | noisy) directly (``models.conditional``)."""
        return self.backbone.kind == "conditional"

    @property
    def image_channels(self) -> int:
        return self.backbone.image_channels


class DenoisingVAE(nn.Module):
    """A VAE backbone read through a noise model; ``forward`` gives the -ELBO terms."""

    config_class: ClassVar[type[DenoisingVAEConfig]] = DenoisingVAEConfig

    def __init__(self, config: DenoisingVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = BACKBONES[config.backbone.kind](config.backbone)

    def forward(self, x: Tensor, sigma: Tensor | None = None,
                target: Tensor | None = None) -> VAEOutput:
        """x (B, C, H, W) noisy, [0, 1] scale (may stray outside); ``sigma`` (B,) the Gaussian
        noise std of each image when it varies (synthetic noise); ``target`` what the
        likelihood scores (default x). ``params`` is s."""
        if self.config.conditional:  # its own loss; params is the MMSE estimate
            if target is None or sigma is None:
                raise ConfigError("a conditional denoiser trains on clean targets with known "
                                  "noise (synthetic noise)")
            return self.backbone(x, target, sigma)
        out = self.backbone(x)
        s = out.params  # (B, C, H, W): one posterior sample's clean image
        target = x if target is None else target
        return VAEOutput(-noise_log_prob(self.config.noise, target, s, sigma), out.kl, s)

    @torch.no_grad()
    def mean_and_draws(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The MMSE estimate (B, C, H, W) and n clean images drawn from the posterior
        (n, B, C, H, W): the draws' mean, or the conditional backbone's own mean."""
        if self.config.conditional:
            return self.backbone.mean_and_draws(x, n)
        self.backbone.check_input(x)
        draws = torch.stack([self.backbone(x).params for _ in range(n)])
        return draws.mean(0), draws

    @torch.no_grad()
    def draw(self, x: Tensor) -> Tensor:
        """(B, C, H, W): one clean image drawn from the posterior of each noisy image (for a
        conditional backbone its latents' part, without the per-pixel noise: what inpainting
        iterates on)."""
        if self.config.conditional:
            return self.backbone.mean_and_draws(x, 1, pixel_noise=False)[1][0]
        return self.backbone(x).params


def denoise_objective(model: DenoisingVAE, x: Tensor, objective: Config,
                      step: int) -> tuple[Tensor, dict[str, float]]:
    """-ELBO per pixel value of a batch of noisy crops, after a random flip / transpose.

    With synthetic noise the batch is clean: each image gets Gaussian noise of a random level,
    the encoder sees the noisy image and the likelihood scores the clean one. Over the noise
    n, E (x + n - s)^2 = (x - s)^2 + sigma^2 - 2 E[n s]: the same loss as on the noisy image
    up to a constant, minus the reward for copying the noise into s (the -2 E[n s] term, whose
    only use is to fit noise) and with far less gradient variance.
    """
    x = _dihedral(x, int(torch.randint(8, ())))
    noise, sigma, target = model.config.noise, None, None
    if noise.synthetic is not None:
        lo, hi = noise.synthetic
        sigma = (lo + (hi - lo) * torch.rand(x.shape[0], device=x.device)) / 255.0  # (B,)
        x, target = x + sigma[:, None, None, None] * torch.randn_like(x), x
    out = model(x, sigma, target)
    terms = vae_loss(out, objective.beta_at(step), objective.free_bits)
    metrics = {k: v.item() for k, v in terms._asdict().items()}
    return terms.loss / x[0].numel(), metrics


def _dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 flips and rotations of a (B, C, H, W) batch (square crops)."""
    if k & 4 and x.shape[-1] == x.shape[-2]:
        x = x.transpose(-1, -2)
    return x.flip([d for d, bit in ((-1, 1), (-2, 2)) if k & bit])
