"""Variable-rate mean-scale hyperprior codec: one model for every quality.

Ballé et al., "Variational image compression with a scale hyperprior", ICLR 2018, with the
Gaussian means of Minnen et al., NeurIPS 2018, and the per-quality gain units of Cui et al.,
"Asymmetric gained deep image compression with continuous rate adaptation", CVPR 2021. The
gain vector of quality q scales each latent channel before quantisation (a bigger gain means
finer quantisation, more bits) and its own inverse gain undoes it after:

    x (B, 3, H, W) --pad to 64--> g_a --> y * gain_y[q] = y' (B, M, H/16, W/16)
    y' --h_a--> z * gain_z[q] = z' --(noise | round)--> ẑ'   rate: FactorizedPrior(ẑ')
    ẑ' * inverse_gain_z[q] --h_s--> μ, i (for y)   μ' = gain_y[q] μ, σ' = gain_y[q] SCALES(i)
    y' --(noise | round around μ)--> ŷ'   rate: GaussianConditional(ŷ' | μ, σ)
    ŷ' * inverse_gain_y[q] --g_s--> x̂ --crop--> (B, 3, H, W)

h_a sees the gained y', so z, and with it (μ, σ), can follow the quality. In training the rate
uses noisy ŷ' while g_s gets ŷ' rounded around μ with a straight-through gradient ("mixed"
quantisation, Minnen & Singh, "Channel-wise autoregressive entropy models", ICIP 2020), so the
decoder trains on what it will see. The loss is ``rd_loss``: λ_q 255² MSE + bits per pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from clearvae.codec.context import ChannelContext
from clearvae.codec.entropy_models import (
    LOG_STEP,
    FactorizedPrior,
    GaussianConditional,
    round_around,
    scale_from_index,
)
from clearvae.codec.networks import (
    AnalysisTransform,
    HyperAnalysis,
    HyperSynthesis,
    SynthesisTransform,
)
from clearvae.config import Config
from clearvae.errors import ConfigError, DataError
from clearvae.models.layers import pad_to_multiple

# CompressAI's MSE lambdas for its qualities 1..8: loss = λ 255² MSE + bpp.
DEFAULT_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
MULTIPLE = 64  # total downsampling of g_a (16) and h_a (4)
MAX_CHANNELS = 4096  # far above any published codec (320); refuses configs that overflow sizes


@dataclasses.dataclass(frozen=True)
class HyperpriorCodecConfig(Config):
    """``channels_n``: width of the transforms and of z; ``channels_m``: channels of y.
    Quality index q (0-based) trains with ``lambdas[q]``; lambdas must increase.
    ``context_slices``: 0, or code y in that many slices with channel-wise context
    (``context.ChannelContext``); a warm start may add it to a model trained without."""

    # Keys a warm start may add to a model trained without them, and the weights they add.
    ADDABLE: ClassVar[dict[str, str]] = {"context_slices": "context."}

    kind: Literal["hyperprior"] = "hyperprior"
    channels_n: int = 128
    channels_m: int = 192
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    image_channels: int = 3
    context_slices: int = 0

    def validate(self) -> None:
        if not (1 <= self.channels_n <= MAX_CHANNELS and 1 <= self.channels_m <= MAX_CHANNELS):
            raise ConfigError(f"channels_n and channels_m must be 1..{MAX_CHANNELS}, got "
                              f"{self.channels_n} and {self.channels_m}")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        s = self.context_slices
        if s < 0 or s == 1 or (s and self.channels_m % s):
            raise ConfigError(f"context_slices must be 0 (none) or >= 2 dividing channels_m "
                              f"({self.channels_m}), got {s}")
        lams = self.lambdas
        if not lams or min(lams) <= 0 or any(a >= b for a, b in zip(lams, lams[1:])):
            raise ConfigError(f"lambdas must be positive and increasing (one per quality), "
                              f"got {list(lams)}")

    @property
    def qualities(self) -> int:
        return len(self.lambdas)


class CodecOutput(NamedTuple):
    """One pass. Likelihoods cover the padded latent grid; each is in (0, 1]."""

    x_hat: Tensor  # (B, C, H, W) reconstruction (clamped to [0, 1] in eval mode)
    y_likelihoods: Tensor  # (B, M, H'/16, W'/16), H' = H padded to a multiple of 64
    z_likelihoods: Tensor  # (B, N, H'/64, W'/64)


class HyperpriorCodec(nn.Module):
    """The learnable part of the codec; ``forward`` gives reconstructions and rate estimates."""

    config_class: ClassVar[type[HyperpriorCodecConfig]] = HyperpriorCodecConfig

    def __init__(self, config: HyperpriorCodecConfig) -> None:
        super().__init__()
        self.config = config
        c, n, m = config.image_channels, config.channels_n, config.channels_m
        q = config.qualities
        self.g_a = AnalysisTransform(c, n, m)
        self.g_s = SynthesisTransform(c, n, m)
        self.h_a = HyperAnalysis(n, m)
        self.h_s = HyperSynthesis(n, m)
        self.z_prior = FactorizedPrior(n)
        self.y_conditional = GaussianConditional()
        slices = config.context_slices
        self.context = ChannelContext(m, slices) if slices else None
        # Log gains (Q, channels). Freshly initialised, g_a gives y of std ~0.05 and h_a
        # shrinks it ~15x; the start gains lift y' to std ~1 (one quantisation step) at the
        # middle quality and z' to ~0.7, so that every quality codes something from the first
        # step without starting at a needlessly high rate. Across qualities the y gains
        # follow the high-rate optimum, quantisation step ∝ 1 / sqrt(λ).
        lams = torch.tensor(config.lambdas, dtype=torch.float64)
        y_start = (0.5 * (lams.log() - lams.log().mean()) + math.log(20.0)).float()  # (Q,)
        z_start = torch.full((q,), math.log(10.0))
        self.y_gain = nn.Parameter(y_start[:, None].repeat(1, m))
        self.y_inverse_gain = nn.Parameter(-y_start[:, None].repeat(1, m))
        self.z_gain = nn.Parameter(z_start[:, None].repeat(1, n))
        self.z_inverse_gain = nn.Parameter(-z_start[:, None].repeat(1, n))
        with torch.no_grad():  # h_s predicts for the ungained y: start at the same σ' as before
            self.h_s.scale[-1].bias.sub_(y_start.mean() / LOG_STEP)

    def forward(self, x: Tensor, quality: Tensor) -> CodecOutput:
        """x (B, C, H, W) in [0, 1] of any size; quality (B,) indices 0..Q-1, one per image
        (a float quality between two indices interpolates their gains geometrically)."""
        self._check(x, quality)
        h, w = x.shape[-2:]
        # (B, C, H', W'); channels-last makes the CPU (oneDNN) convolutions ~25% faster
        x = pad_to_multiple(x, MULTIPLE).contiguous(memory_format=torch.channels_last)
        # Under mixed precision (training with precision bf16-mixed) only the two big
        # transforms run in bfloat16 (training 1.7x faster on a CPU with AVX512-BF16). The
        # entropy path stays float32: bfloat16's 8-bit mantissa cannot resolve the ±0.5
        # quantisation noise of a latent of magnitude 64, nor a small probability as a
        # difference of CDFs.
        y = self.g_a(x).float()
        with torch.autocast(x.device.type, enabled=False):
            y_gain = _gain(self.y_gain, quality)  # (B, M, 1, 1)
            y = y * y_gain  # (B, M, H'/16, W'/16)
            z = self.h_a(y) * _gain(self.z_gain, quality)  # (B, N, H'/64, W'/64)
            z_hat, z_likelihoods = self.z_prior(z)
            means, scale_index = self.h_s(z_hat * _gain(self.z_inverse_gain, quality))
            means, scale_index = gained(means, scale_index, y_gain)
            if self.context is not None:
                means, scale_index = self.context.refine(y, means, scale_index, y_gain)
            y_hat, y_likelihoods = self.y_conditional(y, scale_from_index(scale_index), means)
            if self.training:  # g_s trains on rounded values (straight-through), rate on noise
                y_hat = y + (round_around(y, means) - y).detach()
            y_hat = y_hat * _gain(self.y_inverse_gain, quality)
        x_hat = self.g_s(y_hat).float()[..., :h, :w]
        if not self.training:
            x_hat = x_hat.clamp(0.0, 1.0)
        return CodecOutput(x_hat, y_likelihoods, z_likelihoods)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """Parameters that only the aux loss moves: the trainer leaves them out of the
        gradient norm that it clips and checks (see ``rd_loss``)."""
        return [self.z_prior.quantiles]

    def _check(self, x: Tensor, quality: Tensor) -> None:
        c, q = self.config.image_channels, self.config.qualities
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(f"the codec expects images of shape (B, {c}, H, W), got "
                            f"{tuple(x.shape)}")
        if quality.shape != (x.shape[0],):
            raise DataError(f"quality must hold one index per image, shape ({x.shape[0]},); "
                            f"got shape {tuple(quality.shape)}")
        if quality.numel() and (quality.min() < 0 or quality.max() > q - 1):
            raise DataError(f"quality indices must lie in 0..{q - 1} (this model has {q} "
                            f"qualities); got {quality.tolist()}")


def gained(means: Tensor, scale_index: Tensor, y_gain: Tensor) -> tuple[Tensor, Tensor]:
    """h_s predicts the distribution of the ungained y; y' = g y has mean g μ and scale g σ,
    i.e. a scale index shifted by log(g) / LOG_STEP. So h_s need not infer the quality."""
    return means * y_gain, scale_index + y_gain.log() / LOG_STEP


def interpolated(log_gains: Tensor, quality: Tensor) -> Tensor:
    """Log gains (B, C) at quality (B,): rows of ``log_gains`` (Q, C), interpolated linearly
    (geometrically in the gains, Cui et al. 2021) where a float quality lies between two."""
    if not quality.is_floating_point():
        return log_gains[quality]
    q = quality.to(log_gains.dtype)
    lo = q.floor().long().clamp(0, len(log_gains) - 1)
    hi = (lo + 1).clamp(max=len(log_gains) - 1)
    t = (q - lo)[:, None]  # (B, 1)
    return (1 - t) * log_gains[lo] + t * log_gains[hi]


def _gain(log_gains: Tensor, quality: Tensor) -> Tensor:
    """Gains (B, C, 1, 1) from log gains (Q, C) at quality (B,)."""
    return interpolated(log_gains, quality).exp()[:, :, None, None]


def estimated_bits(out: CodecOutput) -> Tensor:
    """(B,) estimated bits per image: -log2 of the likelihoods of ŷ and ẑ."""
    y_bits = -out.y_likelihoods.log2().flatten(1).sum(1)
    z_bits = -out.z_likelihoods.log2().flatten(1).sum(1)
    return y_bits + z_bits


def rd_loss(model: HyperpriorCodec, x: Tensor,
            generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Rate-distortion loss at a random quality per image, plus the prior's aux loss.

    loss = mean_i (λ_{q_i} 255² MSE_i + bpp_i) + aux, where bpp counts the bits of ŷ and ẑ over
    the image's own (unpadded) pixels. The aux loss reaches only ``model.z_prior.quantiles``
    (the density is detached inside it) and the RD term never reaches them (training adds
    noise without the median), so one optimiser can minimise the sum without the aux loss
    bending the RD gradients. Two cautions for the trainer: exclude ``quantiles`` from
    gradient-norm clipping (its gradient would dominate the norm; ``auxiliary_parameters``
    names it), and before building coding tables call ``model.z_prior.fit_quantiles()``,
    as at a small learning rate the aux loss moves the quantiles slowly. ``generator`` (CPU)
    draws the qualities.
    """
    b, _, h, w = x.shape
    quality = torch.randint(model.config.qualities, (b,), generator=generator).to(x.device)
    out = model(x, quality)
    mse = (out.x_hat - x).square().flatten(1).mean(1)  # (B,)
    bpp = estimated_bits(out) / (h * w)  # (B,)
    lam = torch.tensor(model.config.lambdas, device=x.device)[quality]  # (B,)
    rd = (lam * 255**2 * mse + bpp).mean()
    aux = model.z_prior.aux_loss()
    loss = rd + aux
    psnr = (10 * torch.log10(1 / mse.detach().clamp_min(1e-10))).mean()
    # "rd" is the objective that matters; "loss" adds the aux loss, which dominates it for long
    # (hundreds) while the quantiles converge and moves nothing but them
    metrics = {"loss": loss.item(), "rd": rd.item(), "bpp": bpp.mean().item(),
               "mse": mse.mean().item(), "psnr": psnr.item(), "aux": aux.item()}
    return loss, metrics




@torch.no_grad()
def gray_from_colour(model: HyperpriorCodec, lambdas: tuple[float, ...] | None = None,
                     ) -> HyperpriorCodec:
    """A 1-channel codec that starts as ``model`` coding the colour image (x, x, x): g_a's
    first convolution summed over its 3 inputs, g_s's last averaged over its 3 outputs (of
    each sub-pixel position). ``lambdas`` (as many as the model's) replaces its qualities'
    λ for further training, e.g. higher ones for 12-bit images coded near-losslessly."""
    config = model.config
    if config.image_channels != 3:
        raise ConfigError(f"gray_from_colour takes a colour codec, got {config.image_channels} "
                          "channel(s)")
    lambdas = tuple(lambdas or config.lambdas)
    if len(lambdas) != config.qualities:
        raise ConfigError(f"give {config.qualities} lambdas (one per quality), got {len(lambdas)}")
    gray = HyperpriorCodec(dataclasses.replace(config, image_channels=1, lambdas=lambdas))
    state = dict(model.state_dict())
    first, last = "g_a.net.0.weight", "g_s.net.6.0"  # (N, 3, 5, 5); Up's conv (12, N, 3, 3)
    state[first] = state[first].sum(1, keepdim=True)
    for k in ("weight", "bias"):
        w = state[f"{last}.{k}"]
        state[f"{last}.{k}"] = w.reshape(3, 4, *w.shape[1:]).mean(0)  # (c, sub-pixel) order
    gray.load_state_dict(state)
    return gray
