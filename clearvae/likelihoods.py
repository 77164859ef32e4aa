"""Output likelihoods p(x | z) of a VAE decoder, chosen by name.

A decoder emits a parameter tensor of shape (B, P, H, W); a :class:`Likelihood` turns it into
log-probabilities, means and samples of images in [0, 1] of shape (B, C, H, W).

- ``bernoulli``: binary pixels (use with binarized or dynamically binarized data).
- ``gaussian``: fixed standard deviation ``sigma`` (a continuous density on [0, 1]).
- ``gaussian_learned``: per-pixel mean and learned standard deviation.
- ``logistic_mixture``: discretized mixture of logistics over the 256 levels of 8-bit images
  (Salimans et al., "PixelCNN++", ICLR 2017), with linear dependence between colour channels;
  ``mixtures=1`` is the plain discretized logistic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LikelihoodName = Literal["bernoulli", "gaussian", "gaussian_learned", "logistic_mixture"]

_LOG_SCALE_MIN = -7.0


class Likelihood:
    """Interface: the decoder's parameter layout and what can be computed from it."""

    name: str
    discrete: bool  # True when log_prob is a probability of 8-bit (or binary) values

    def __init__(self, channels: int) -> None:
        self.channels = channels

    @property
    def param_channels(self) -> int:
        """Number of decoder output channels per pixel."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) in nats, summed over pixels: (B,)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """A point estimate of x (mean, or the mode of the strongest mixture component)."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sample x ~ p(x | params)."""
        raise NotImplementedError

    def target(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The values the likelihood models, given images in [0, 1] (identity except Bernoulli)."""
        return x

    @property
    def nats_offset_per_dim(self) -> float:
        """Add this per dimension to a continuous NLL to compare it with 8-bit discrete ones."""
        return 0.0 if self.discrete else math.log(256.0)


class Bernoulli(Likelihood):
    name, discrete = "bernoulli", True

    @property
    def param_channels(self) -> int:
        return self.channels

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        nll = F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return -nll.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)

    def target(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Dynamic binarization: each pixel is 1 with probability equal to its intensity."""
        return torch.bernoulli(x.clamp(0, 1), generator=generator)


class Gaussian(Likelihood):
    name, discrete = "gaussian", False

    def __init__(self, channels: int, sigma: float) -> None:
        super().__init__(channels)
        self.sigma = sigma

    @property
    def param_channels(self) -> int:
        return self.channels

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_sigma = math.log(self.sigma)
        lp = -0.5 * ((x - params) / self.sigma) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return lp.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params.clamp(0, 1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(params.shape, generator=generator, device=params.device)
        return (params + self.sigma * noise).clamp(0, 1)


class GaussianLearned(Likelihood):
    name, discrete = "gaussian_learned", False

    @property
    def param_channels(self) -> int:
        return 2 * self.channels

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = params.chunk(2, dim=1)
        return mu, log_sigma.clamp(min=_LOG_SCALE_MIN)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_sigma = self._split(params)
        z = (x - mu) * torch.exp(-log_sigma)
        lp = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return lp.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return self._split(params)[0].clamp(0, 1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu, log_sigma = self._split(params)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device)
        return (mu + log_sigma.exp() * noise).clamp(0, 1)


class LogisticMixture(Likelihood):
    """Discretized mixture of logistics on 8-bit levels; channel c's mean is shifted linearly by
    the values of channels < c (one coefficient per pair), as in PixelCNN++."""

    name, discrete = "logistic_mixture", True
    _HALF_BIN = 1.0 / 255.0  # half a bin on the [-1, 1] scale

    def __init__(self, channels: int, mixtures: int) -> None:
        super().__init__(channels)
        self.mixtures = mixtures
        self.n_coeffs = channels * (channels - 1) // 2

    @property
    def param_channels(self) -> int:
        return self.mixtures * (1 + 2 * self.channels + self.n_coeffs)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, _, h, w = params.shape
        k, c = self.mixtures, self.channels
        logits, rest = params[:, :k], params[:, k:].reshape(b, -1, k, h, w)
        means, log_scales, coeffs = rest.split([c, c, self.n_coeffs], dim=1)
        # logits (B, K, H, W); means / log_scales (B, C, K, H, W); coeffs (B, C(C-1)/2, K, H, W)
        return logits, means, log_scales.clamp(min=_LOG_SCALE_MIN), torch.tanh(coeffs)

    def _shifted_means(self, means: Tensor, coeffs: Tensor, y: Tensor) -> Tensor:
        """Means of each channel given the (true or sampled) values y of earlier channels."""
        shifted, pair = [means[:, 0]], 0
        for ch in range(1, self.channels):
            m = means[:, ch]
            for prev in range(ch):
                m = m + coeffs[:, pair] * y[:, prev]
                pair += 1
            shifted.append(m)
        return torch.stack(shifted, dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits, means, log_scales, coeffs = self._split(params)
        y = (2 * x - 1).unsqueeze(2)  # (B, C, 1, H, W) on [-1, 1]
        centered = y - self._shifted_means(means, coeffs, y)
        inv_s = torch.exp(-log_scales)
        plus, minus = inv_s * (centered + self._HALF_BIN), inv_s * (centered - self._HALF_BIN)
        log_cdf_plus = plus - F.softplus(plus)  # log P(v <= x + half bin), used at x = 0
        log_sf_minus = -F.softplus(minus)  # log P(v > x - half bin), used at x = 1
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centered
        log_pdf_mid = mid - log_scales - 2 * F.softplus(mid) + math.log(2 * self._HALF_BIN)
        # Where the bin mass underflows in float32, its density times the bin width stands in.
        log_bin = torch.where(
            cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid
        )
        lp = torch.where(y < -0.999, log_cdf_plus, torch.where(y > 0.999, log_sf_minus, log_bin))
        lp = lp.sum(1) + torch.log_softmax(logits, dim=1)  # (B, K, H, W)
        return torch.logsumexp(lp, dim=1).flatten(1).sum(1)

    def _pick(
        self, params: Tensor, generator: torch.Generator | None, stochastic: bool
    ) -> tuple[Tensor, ...]:
        logits, means, log_scales, coeffs = self._split(params)
        if not stochastic:  # the strongest component (for point estimates)
            k = logits.argmax(1, keepdim=True)
        else:
            u = torch.rand(logits.shape, generator=generator, device=logits.device)
            k = (logits - torch.log(-torch.log(u.clamp(1e-10, 1.0)))).argmax(1, keepdim=True)
        take = lambda t: t.gather(2, k.unsqueeze(1).expand(-1, t.shape[1], -1, -1, -1))  # noqa: E731
        return take(means), take(log_scales), take(coeffs)

    def _draw(self, params: Tensor, generator: torch.Generator | None, stochastic: bool) -> Tensor:
        means, log_scales, coeffs = self._pick(params, generator, stochastic)  # (B, C, 1, H, W)
        y = torch.zeros_like(means)
        for ch in range(self.channels):  # each channel's mean depends on the ones before
            m = self._shifted_means(means, coeffs, y)[:, ch]
            if stochastic:
                u = torch.rand(m.shape, generator=generator, device=m.device).clamp(1e-5, 1 - 1e-5)
                m = m + log_scales[:, ch].exp() * (torch.log(u) - torch.log1p(-u))
            y[:, ch] = m.clamp(-1, 1)
        x = (y.squeeze(2) + 1) / 2
        return torch.round(x * 255) / 255

    def mean(self, params: Tensor) -> Tensor:
        return self._draw(params, None, stochastic=False)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._draw(params, generator, stochastic=True)


def make_likelihood(
    name: LikelihoodName, channels: int, *, sigma: float = 0.1, mixtures: int = 5
) -> Likelihood:
    """The likelihood called ``name`` for images with ``channels`` channels."""
    if name == "bernoulli":
        return Bernoulli(channels)
    if name == "gaussian":
        return Gaussian(channels, sigma)
    if name == "gaussian_learned":
        return GaussianLearned(channels)
    if name == "logistic_mixture":
        return LogisticMixture(channels, mixtures)
    raise ValueError(f"unknown likelihood {name!r}")
