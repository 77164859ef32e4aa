"""What every clearvae VAE shares: its config fields, typed outputs, the loss and the
importance-weighted likelihood bound.

A VAE maps images x in [0, 1], shape (B, C, H, W), to an approximate posterior q(z | x),
and decodes latents z into the parameters of a likelihood p(x | z) (see ``likelihoods``):

    x --encoder--> q(z|x) --sample--> z --decoder--> params --likelihood--> log p(x|z)

The evidence lower bound is  ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)).
Families implement ``forward``, ``log_weight``, ``sample``, ``reconstruct`` and ``interpolate``;
everything here works for any of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from clearvae.config import Config
from clearvae.errors import ConfigError
from clearvae.likelihoods import Likelihood, LikelihoodName, make_likelihood


@dataclasses.dataclass(frozen=True)
class VAEConfig(Config):
    """Fields common to all VAE families. ``image_size`` is (height, width)."""

    kind: str = ""
    image_channels: int = 1
    image_size: tuple[int, int] = (28, 28)
    likelihood: LikelihoodName = "bernoulli"
    gaussian_sigma: float = 0.1  # for likelihood="gaussian", on the [0, 1] scale
    mixtures: int = 5  # for likelihood="logistic_mixture"

    def validate(self) -> None:
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if min(self.image_size) < 1:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if self.gaussian_sigma <= 0:
            raise ConfigError(f"gaussian_sigma must be > 0, got {self.gaussian_sigma}")
        if self.mixtures < 1:
            raise ConfigError(f"mixtures must be >= 1, got {self.mixtures}")


class VAEOutput(NamedTuple):
    """One stochastic pass. ``kl`` is split into groups (latent dimensions, channels or layers)
    to which free bits apply separately."""

    distortion: Tensor  # (B,) -log p(x | z), nats per image
    kl: Tensor  # (B, G) KL(q || p) per group, nats
    params: Tensor  # (B, P, H, W) likelihood parameters

    @property
    def elbo(self) -> Tensor:
        """(B,) evidence lower bound in nats per image."""
        return -(self.distortion + self.kl.sum(1))


class LossTerms(NamedTuple):
    loss: Tensor  # scalar to minimise
    elbo: Tensor  # scalar, mean ELBO in nats per image (without beta or free bits)
    distortion: Tensor  # scalar
    kl: Tensor  # scalar


def vae_loss(out: VAEOutput, beta: float = 1.0, free_bits: float = 0.0) -> LossTerms:
    """Negative beta-ELBO, per image, with free bits (Kingma et al. 2016): each KL group's
    batch-mean is held at no less than ``free_bits`` nats so it is not pushed to collapse."""
    kl_groups = out.kl.mean(0)  # (G,)
    if free_bits > 0:
        kl_groups = torch.clamp(kl_groups, min=free_bits)
    distortion = out.distortion.mean()
    kl = out.kl.sum(1).mean()
    loss = distortion + beta * kl_groups.sum()
    return LossTerms(loss, -(distortion + kl), distortion, kl)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) element-wise."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) element-wise."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


class VAE(nn.Module):
    """Base class of the VAE families."""

    config_class: ClassVar[type[VAEConfig]] = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.likelihood: Likelihood = make_likelihood(
            config.likelihood, config.image_channels,
            sigma=config.gaussian_sigma, mixtures=config.mixtures,
        )

    @property
    def dims(self) -> int:
        """Number of pixel values per image at the configured size."""
        h, w = self.config.image_size
        return self.config.image_channels * h * w

    def forward(self, x: Tensor, target: Tensor | None = None) -> VAEOutput:
        """One pass with a reparameterised posterior sample; ``target`` defaults to ``x``."""
        raise NotImplementedError

    def log_weight(self, x: Tensor, target: Tensor | None = None, n: int = 1) -> Tensor:
        """(B, n) importance weights log p(x, z) - log q(z | x), for n draws z ~ q(z | x) per
        image. Families run the encoder (bottom-up) pass once per image, not once per draw."""
        raise NotImplementedError

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """(n, C, H, W) images decoded from prior samples (likelihood means)."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of each image."""
        raise NotImplementedError

    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        """(steps, C, H, W): images decoded along the line between two posterior means."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when images do not match the model."""
        if x.ndim != 4 or x.shape[1] != self.config.image_channels:
            raise ConfigError(
                f"model expects images of shape (B, {self.config.image_channels}, H, W), "
                f"got {tuple(x.shape)}: convert the data to "
                f"{'gray' if self.config.image_channels == 1 else 'RGB'} (channels option)"
            )

    @torch.no_grad()
    def iw_log_likelihood(self, x: Tensor, k: int = 1000, chunk: int = 50,
                          target: Tensor | None = None, max_forward: int = 200) -> Tensor:
        """(B,) importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i | x), which
        tightens towards log p(x) as k grows (Burda et al., "IWAE", ICLR 2016).

        Each forward pass draws ``chunk`` samples for each of max(1, max_forward // chunk)
        images: on CPU, passes of ~200 small images ran 2x faster per sample than passes of
        10 000 (which fall out of the caches).
        """
        per_pass = max(1, max_forward // chunk)
        out = []
        for i in range(0, x.shape[0], per_pass):
            xs, ts = x[i:i + per_pass], None if target is None else target[i:i + per_pass]
            weights = [self.log_weight(xs, ts, min(chunk, k - start))
                       for start in range(0, k, chunk)]
            out.append(torch.logsumexp(torch.cat(weights, 1), 1) - math.log(k))
        return torch.cat(out)


class FlatVAE(VAE):
    """A VAE with one Gaussian latent z ~ N(0, I): subclasses give ``encode`` (x -> mean and
    log-variance of q(z | x)), ``decode`` (z -> likelihood parameters at an image size) and
    ``latent_shape`` (image size -> shape of z without the batch)."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        raise NotImplementedError

    def _posterior_sample(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.check_input(x)
        mu, logvar = (t.float() for t in self.encode(x))  # float32 under mixed precision too
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return z, mu, logvar

    def forward(self, x: Tensor, target: Tensor | None = None) -> VAEOutput:
        z, mu, logvar = self._posterior_sample(x)
        params = self.decode(z, x.shape[-2:]).float()
        distortion = -self.likelihood.log_prob(params, x if target is None else target)
        kl = gaussian_kl(mu, logvar)
        # Free-bits groups: one per latent channel (dense: per dimension), summed over space.
        return VAEOutput(distortion, kl.flatten(2).sum(2) if kl.ndim > 2 else kl, params)

    def log_weight(self, x: Tensor, target: Tensor | None = None, n: int = 1) -> Tensor:
        self.check_input(x)
        mu, logvar = (t.repeat_interleave(n, 0) for t in self.encode(x))  # (B n, ...)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        params = self.decode(z, x.shape[-2:])
        target = (x if target is None else target).repeat_interleave(n, 0)
        log_px = self.likelihood.log_prob(params, target)
        zeros = torch.zeros_like(z)
        log_pz = gaussian_log_prob(z, zeros, zeros).flatten(1).sum(1)
        log_qz = gaussian_log_prob(z, mu, logvar).flatten(1).sum(1)
        return (log_px + log_pz - log_qz).view(x.shape[0], n)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               size: tuple[int, int] | None = None) -> Tensor:
        size = size or self.config.image_size
        device = next(self.parameters()).device
        z = temperature * torch.randn((n, *self.latent_shape(size)), generator=generator,
                                      device=device)
        return self.likelihood.mean(self.decode(z, size))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.likelihood.mean(self.decode(self.encode(x)[0], x.shape[-2:]))

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        x = torch.stack([a, b])
        self.check_input(x)
        mu = self.encode(x)[0]
        t = torch.linspace(0, 1, steps, device=mu.device).view(-1, *[1] * (mu.ndim - 1))
        return self.likelihood.mean(self.decode((1 - t) * mu[:1] + t * mu[1:], x.shape[-2:]))
