"""Entropy models: torch modules that give the probability of each quantised latent.

Both follow Ballé et al., "Variational image compression with a scale hyperprior", ICLR 2018.
Training replaces rounding by additive uniform noise U(-1/2, 1/2) so that the likelihood of
the noisy value is a differentiable rate estimate; evaluation rounds, exactly as the coder will:

    FactorizedPrior       z --(+U | round around the median)--> ẑ,  P(ẑ) = c(ẑ + ½) - c(ẑ - ½)
    GaussianConditional   y --(+U | round around the mean)--> ŷ,  P(ŷ | μ, σ) on unit bins

The rate in bits is -log2 P. No coding happens here; the integer tables for the coder are
built later from ``FactorizedPrior.quantiles`` and the fixed scale table ``SCALES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
LOG_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
_LOG_STEP = LOG_STEP
# The scale of table t is SCALE_MIN * exp(t * LOG_STEP): log-spaced, 13% apart.
SCALES = torch.exp(math.log(SCALE_MIN) + _LOG_STEP * torch.arange(SCALE_LEVELS,
                                                                   dtype=torch.float64))


class _Bound(torch.autograd.Function):
    """clamp(x, lo, hi) whose gradient still flows where a descent step would move x back
    inside the bounds (so a bounded value never gets stuck outside them)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        keep = ((x >= ctx.lo) | (grad < 0)) & ((x <= ctx.hi) | (grad > 0))
        return grad * keep, None, None


def bound(x: Tensor, lo: float = -math.inf, hi: float = math.inf) -> Tensor:
    """``x`` clamped to [lo, hi] with a gradient that can bring it back (see ``_Bound``)."""
    return _Bound.apply(x, lo, hi)


def scale_from_index(index: Tensor) -> Tensor:
    """Scale for a continuous index into ``SCALES``, clamped to [0, 63].

    The table is log-linear, so log-linear interpolation between entries is exactly
    SCALE_MIN * exp(index * step); at an integer index it is that table entry, which is what
    the coder uses after rounding the index.
    """
    return torch.exp(math.log(SCALE_MIN) + _LOG_STEP * bound(index, 0.0, SCALE_LEVELS - 1.0))


def round_around(x: Tensor, center: Tensor) -> Tensor:
    """The coder's quantiser: round(x - center) + center; the coded symbol is round(x - center)."""
    return torch.round(x - center) + center


def _add_noise(x: Tensor) -> Tensor:
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


class GaussianConditional(nn.Module):
    """P(ŷ | μ, σ) = Φ((½ - |ŷ - μ|) / σ) - Φ((-½ - |ŷ - μ|) / σ), element-wise.

    Written with |ŷ - μ| so that both arguments are on the lower tail of Φ, where erfc keeps
    full relative precision (the difference of two numbers near 1 would not). Scales are
    lower-bounded at ``scale_min`` and likelihoods at ``likelihood_min``.
    """

    def __init__(self, scale_min: float = SCALE_MIN, likelihood_min: float = 1e-9) -> None:
        super().__init__()
        self.scale_min = scale_min
        self.likelihood_min = likelihood_min

    def likelihood(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """Probability of the unit bin centred on ``y``; all arguments the same shape."""
        v = (y - means).abs()
        s = bound(scales, lo=self.scale_min)
        upper = _normal_cdf((0.5 - v) / s)
        lower = _normal_cdf((-0.5 - v) / s)
        return bound(upper - lower, lo=self.likelihood_min)

    def forward(self, y: Tensor, scales: Tensor, means: Tensor,
                training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(ŷ, P(ŷ)): ŷ = y + noise in training, ``round_around(y, means)`` otherwise."""
        training = self.training if training is None else training
        y_hat = _add_noise(y) if training else round_around(y, means)
        return y_hat, self.likelihood(y_hat, scales, means)


def _normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * torch.erfc(t * -math.sqrt(0.5))


class FactorizedPrior(nn.Module):
    """Non-parametric density per channel, Ballé et al. 2018, appendix 6.1.

    A cumulative c(x) = sigmoid(f_K(... f_1(x))) with f_k(x) = g_k(H_k x + b_k), H_k =
    softplus(Ĥ_k) > 0 and g_k(u) = u + tanh(â_k) * tanh(u), so c is monotone by construction.
    ``quantiles`` (C, 1, 3) holds, per channel, the points where c is tail/2, 1/2 and 1 - tail/2:
    the median used for rounding and the range [lower, upper] the coding tables will cover.
    They are learned by ``aux_loss`` or solved exactly by ``fit_quantiles``.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3),
                 init_scale: float = 10.0, tail_mass: float = 1e-9,
                 likelihood_min: float = 1e-9) -> None:
        super().__init__()
        self.tail_mass = tail_mass
        self.likelihood_min = likelihood_min
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))  # each layer widens c by this factor
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for k in range(len(dims) - 1):
            h0 = math.log(math.expm1(1 / scale / dims[k + 1]))  # softplus(h0) = 1/(scale d)
            self.matrices.append(nn.Parameter(torch.full((channels, dims[k + 1], dims[k]), h0)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[k + 1], 1) - 0.5))
            if k < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[k + 1], 1)))
        init = torch.tensor([-init_scale, 0.0, init_scale])
        self.quantiles = nn.Parameter(init.repeat(channels, 1, 1))  # (C, 1, 3)
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)

    @property
    def median(self) -> Tensor:
        """(C,) per-channel median: the centre that evaluation and the coder round around."""
        return self.quantiles[:, 0, 1]

    def quantile_table(self) -> Tensor:
        """(C, 3) lower tail bound, median, upper tail bound (detached)."""
        return self.quantiles.detach()[:, 0, :]

    def logits_cumulative(self, x: Tensor, detach: bool = False) -> Tensor:
        """logit c(x) for x of shape (C, 1, L) -> (C, 1, L); ``detach`` freezes the density."""
        for k, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            h = F.softplus(matrix)
            h, bias = (h.detach(), bias.detach()) if detach else (h, bias)
            x = torch.matmul(h, x) + bias  # (C, d_k+1, L)
            if k < len(self.factors):
                a = torch.tanh(self.factors[k])
                x = x + (a.detach() if detach else a) * torch.tanh(x)
        return x

    def likelihood(self, z: Tensor) -> Tensor:
        """P of the unit bin centred on each value of z (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.transpose(0, 1).reshape(c, 1, -1)  # (C, 1, B*H*W)
        lower = self.logits_cumulative(v - 0.5)
        upper = self.logits_cumulative(v + 0.5)
        # Subtract on the tail where both sigmoids are small, for precision far from the median.
        sign = torch.where(lower + upper > 0, -1.0, 1.0).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        p = p.reshape(c, b, h, w).transpose(0, 1)
        return bound(p, lo=self.likelihood_min)

    def forward(self, z: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(ẑ, P(ẑ)): ẑ = z + noise in training, rounded around the median otherwise."""
        training = self.training if training is None else training
        if training:
            z_hat = _add_noise(z)
        else:
            z_hat = round_around(z, self.median.detach()[None, :, None, None])
        return z_hat, self.likelihood(z_hat)

    def aux_loss(self) -> Tensor:
        """L1 distance of logit c(quantiles) from its targets. The density is detached here
        and ``quantiles`` enters no rate estimate in training, so this loss moves only the
        quantiles and the RD loss never does: the two can share one optimiser."""
        logits = self.logits_cumulative(self.quantiles, detach=True)  # (C, 1, 3)
        return (logits - self.target).abs().sum()

    @torch.no_grad()
    def fit_quantiles(self, iterations: int = 60, span: float = 1e6) -> None:
        """Set ``quantiles`` to where the aux loss is zero, by bisection (c is monotone):
        exact tail bounds for the coding tables whatever the aux loss has reached."""
        c = self.quantiles.shape[0]
        lo = torch.full((c, 1, 3), -span, device=self.quantiles.device)
        hi = torch.full_like(lo, span)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = self.logits_cumulative(mid) > self.target
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        self.quantiles.copy_((lo + hi) / 2)
