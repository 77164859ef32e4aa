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

The conditional backbone also learns from noisy images alone, through the noise model, by
recorruption (Pang, Zhan, Yu, Zhuang, Cui, "Recorrupted-to-Recorrupted: unsupervised deep
learning for image denoising", CVPR 2021). From a noisy y = x + n with noise variance D^2 and
a fresh z ~ N(0, I), the pair

    input  y + alpha D z      (noise n + alpha D z: variance (1 + alpha^2) D^2)
    target y - D z / alpha    (noise n - D z / alpha: variance (1 + 1 / alpha^2) D^2)

has noises that are uncorrelated (covariance D^2 - D^2 = 0), and for Gaussian noise
independent, so E[target | input] = E[x | input]: the MSE against the noisy target trains the
same MMSE denoiser as a clean target would, only with more gradient noise. alpha is drawn per
image from ``recorruption``, so the U-Net is blind over input noise from sqrt(1 + lo^2) to
sqrt(1 + hi^2) times the data's; it then denoises the data at its own level, just below that
range (measured in docs/benchmarks.md). The branch scores the target with the target's noise
added to its own spread, N(target; s, tau^2 + (1 + 1 / alpha^2) D^2): the explicit noise model
of DivNoising. For Poisson-Gaussian noise D^2 = a s + b is taken at a 3x3 local mean of y, an
approximation (the recorruption then depends a little on n itself). For Rician noise
(magnitude MRI) D^2 is the variance of Rician magnitudes whose mean is that local mean
(``noise.rician_variance``): sigma^2 where the signal is well above the noise, where Rician
noise is close to Gaussian (Gudbjartsson & Patz 1995), but only 0.43 sigma^2 in the air, where
it is Rayleigh; with sigma^2 there too the pairs' noises are correlated and the target is
biased upwards by up to 2 sigma in the background (measured in docs/benchmarks.md). The U-Net
learns E[y | input], the Rician mean of the signal, which ``restore.denoise`` maps back to the
signal (``noise.rician_unbias``). With synthetic Rician noise on clean images no such step
is needed.

2.5-D (a conditional backbone with ``context_slices`` k): the batch holds stacks of 2k + 1
neighbouring slices, all noised independently, and the target is the middle one. A stack whose
slices are all equal is a single 2-D image (a PNG in the training data): it gets one noise,
copied to every slice, as ``restore.denoise`` feeds a single image; so does a random tenth of
the real stacks, so that the model also works without neighbours.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clearvae.config import Config
from clearvae.errors import ConfigError
from clearvae.models.base import VAEOutput, vae_loss
from clearvae.models.conditional import ConditionalDenoiser, ConditionalDenoiserConfig
from clearvae.models.conv import ConvVAE, ConvVAEConfig
from clearvae.models.hierarchical import HierarchicalVAE, HierarchicalVAEConfig
from clearvae.noise import (
    NoiseConfig,
    noise_log_prob,
    noise_variance,
    rician_noise,
    rician_variance,
)

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
    # alpha range of the recorruption that trains a conditional backbone on noisy images alone
    recorruption: tuple[float, float] = (0.5, 1.0)
    # the tile (pixels, overlapping by a quarter, at most 32) it denoises large images in: its U-Net
    # trained on small crops works best on tiles near their size (docs/benchmarks.md)
    tile: int = 256

    def validate(self) -> None:
        if not isinstance(self.tile, int) or not 16 <= self.tile <= 4096:
            raise ConfigError(f"tile must be an integer number of pixels in 16..4096, got "
                              f"{self.tile!r}")
        if self.backbone.likelihood != "gaussian":
            raise ConfigError(f"a denoiser's backbone must use likelihood gaussian (its output "
                              f"is the clean image); got {self.backbone.likelihood!r}")
        lo, hi = self.recorruption
        if not 0 < lo <= hi:
            raise ConfigError(f"recorruption must be an alpha range [lo, hi] with 0 < lo <= hi, "
                              f"got {list(self.recorruption)}")
        if self.noise.kind == "rician" and self.backbone.kind != "conditional" and \
                self.noise.synthetic is not None:
            raise ConfigError("synthetic Rician noise trains a conditional backbone (clean "
                              "targets); a hierarchical or conv backbone learns from noisy "
                              "images through the Rician likelihood (leave noise.synthetic "
                              "unset)")

    @property
    def conditional(self) -> bool:
        """Whether the backbone learns p(clean | noisy) directly (``models.conditional``)."""
        return self.backbone.kind == "conditional"

    @property
    def image_channels(self) -> int:
        return self.backbone.image_channels

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on each side that the model sees (0: a 2-D model)."""
        return getattr(self.backbone, "context_slices", 0)


class DenoisingVAE(nn.Module):
    """A VAE backbone read through a noise model; ``forward`` gives the -ELBO terms."""

    config_class: ClassVar[type[DenoisingVAEConfig]] = DenoisingVAEConfig

    def __init__(self, config: DenoisingVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = BACKBONES[config.backbone.kind](config.backbone)

    def forward(self, x: Tensor, sigma: Tensor | None = None, target: Tensor | None = None,
                target_var: Tensor | None = None) -> VAEOutput:
        """x (B, C, H, W) noisy, [0, 1] scale (may stray outside); ``sigma`` (B,) the Gaussian
        noise std of each image when it varies (synthetic noise); ``target`` what the
        likelihood scores (default x), ``target_var`` (B, C, H, W) the variance of the noise
        left in it (recorruption). ``params`` is s."""
        if self.config.conditional:  # its own loss; params is the MMSE estimate
            if target is None:
                raise ConfigError("a conditional denoiser trains on pairs: synthetic noise on "
                                  "clean images, or recorrupted noisy images")
            return self.backbone(x, target, target_var)
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
        """(B, C, H, W): what one step of inpainting moves each noisy image to: a clean image
        drawn from the posterior, or for a conditional backbone its MMSE estimate (the
        annealed sampler's own noise makes each chain differ; iterating the mean filled Kodak
        holes 0.37 dB better than iterating its draws, docs/benchmarks.md)."""
        if self.config.conditional:
            return self.backbone.mean(x)
        return self.backbone(x).params


def denoise_objective(model: DenoisingVAE, x: Tensor, objective: Config,
                      step: int) -> tuple[Tensor, dict[str, float]]:
    """-ELBO per pixel value of a batch of noisy crops, after a random flip / transpose.

    With synthetic noise the batch is clean: each image gets Gaussian noise of a random level,
    the encoder sees the noisy image and the likelihood scores the clean one. Over the noise
    n, E (x + n - s)^2 = (x - s)^2 + sigma^2 - 2 E[n s]: the same loss as on the noisy image
    up to a constant, minus the reward for copying the noise into s (the -2 E[n s] term, whose
    only use is to fit noise) and with far less gradient variance.

    Without synthetic noise a conditional backbone trains on recorrupted pairs (``recorrupt``).
    """
    x, sigma, target, target_var = training_pair(model, x)
    out = model(x, sigma, target, target_var)
    terms = vae_loss(out, objective.beta_at(step), objective.free_bits)
    metrics = {name: v.item() for name, v in terms._asdict().items()}
    return terms.loss / out.params[0].numel(), metrics


def training_pair(model: DenoisingVAE, x: Tensor) -> tuple[Tensor, Tensor | None,
                                                           Tensor | None, Tensor | None]:
    """What one training step feeds the model for a batch of crops: (input, the synthetic
    noise std per image or None, target or None, the target's noise variance or None), after
    a random flip / transpose (``denoise_objective``)."""
    x = _dihedral(x, int(torch.randint(8, ())))
    noise, sigma, target, target_var = model.config.noise, None, None, None
    k, c = model.config.context_slices, model.config.image_channels
    single = _single_slices(x, k, c)  # (B,) stacks that stand for one 2-D image
    if single is not None:
        x = torch.where(single[:, None, None, None], x[:, k * c : (k + 1) * c].repeat(
            1, 2 * k + 1, 1, 1), x)
    if noise.synthetic is not None:
        lo, hi = noise.synthetic
        sigma = (lo + (hi - lo) * torch.rand(x.shape[0], device=x.device)) / 255.0  # (B,)
        target = x
        if noise.kind == "rician":
            x = rician_noise(x.clamp_min(0.0), sigma)
        else:
            x = x + sigma[:, None, None, None] * torch.randn_like(x)
    elif model.config.conditional:
        x, target, target_var = recorrupt(noise, x, model.config.recorruption)
    if single is not None:  # one noise for the whole stack of a single image
        middle = x[:, k * c : (k + 1) * c].repeat(1, 2 * k + 1, 1, 1)
        x = torch.where(single[:, None, None, None], middle, x)
    if k:
        target = target[:, k * c : (k + 1) * c]
        target_var = None if target_var is None else target_var[:, k * c : (k + 1) * c]
    return x, sigma, target, target_var


@torch.no_grad()
def validation_error(model: DenoisingVAE, x: Tensor) -> Tensor:
    """Mean squared error of a conditional denoiser's MMSE estimate against the training
    target, for a batch of held-out crops: the clean crops (synthetic noise), or the
    recorrupted target. That target's noise is uncorrelated with the input's, so the error
    is the one against the clean images plus the target's noise variance, which does not
    depend on the model: the lowest value over a run marks its best weights, found from noisy
    images alone (early stopping, ``TrainConfig.keep_best``; seed the draws so that every
    evaluation sees the same pairs)."""
    if not model.config.conditional:
        raise ConfigError("a validation error needs a conditional denoiser (backbone kind "
                          "'conditional'): the others score their noisy input itself")
    x, _, target, _ = training_pair(model, x)
    return (model.backbone.mean(x) - target).square().mean()


SINGLE_SHARE = 0.1  # 2.5-D training: real stacks fed as a single image, without neighbours


def _single_slices(x: Tensor, k: int, c: int) -> Tensor | None:
    """(B,) bool for a batch of 2.5-D stacks (B, (2k + 1) c, H, W): the stacks whose slices are
    all the same image, and a random ``SINGLE_SHARE`` of the others; None in 2-D."""
    if not k:
        return None
    stacks = x.unflatten(1, (2 * k + 1, c))  # (B, 2k + 1, c, H, W)
    same = (stacks == stacks[:, k : k + 1]).flatten(1).all(1)
    return same | (torch.rand(x.shape[0], device=x.device) < SINGLE_SHARE)


def recorrupt(noise: NoiseConfig, y: Tensor,
              alpha: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """Input, target and the target's noise variance (each (B, C, H, W)) for noisy crops y:
    the recorruption pair of the module docstring, alpha uniform in ``alpha`` per image."""
    level = y  # Gaussian: D^2 does not depend on the signal; the others: from its local mean
    if noise.kind != "gaussian":
        level = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    var = noise_variance(noise, level)
    if noise.kind == "rician":  # Var[y] at that mean: Rayleigh's 0.43 sigma^2 in the air
        var = rician_variance(level, var[:, 0, 0, 0].sqrt())
    lo, hi = alpha
    a = (lo + (hi - lo) * torch.rand(y.shape[0], device=y.device))[:, None, None, None]
    d = var.sqrt() * torch.randn_like(y)
    return y + a * d, y - d / a, var * (1 + 1 / a.square())


def _dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 flips and rotations of a (B, C, H, W) batch (square crops)."""
    if k & 4 and x.shape[-1] == x.shape[-2]:
        x = x.transpose(-1, -2)
    return x.flip([d for d, bit in ((-1, 1), (-2, 2)) if k & bit])
