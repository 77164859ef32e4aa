"""Encode-time refinement of one image's latents: the effort levels 1..3 of the encoder.

The analysis transforms g_a and h_a give latents that are good on average over the training
images, not the best for the image at hand. Higher efforts search, for this image only, the
latents y' and z' that minimise its real rate-distortion cost for the fixed, trained model,
by stochastic Gumbel annealing (SGA: Yang, Bamler & Mandt, "Improving inference for neural
image compression", NeurIPS 2020). The decoder does not change: the result is coded exactly
as g_a's latents would be.

Rounding has no useful gradient, and the training relaxation (uniform noise) does not match
it closely enough to optimise against (it made the real cost worse here, see
docs/benchmarks.md). SGA instead draws each latent as a soft mix of its two neighbouring
integers (around the mean the coder rounds at), from a Gumbel-softmax whose temperature τ is
annealed towards 0, where the draw becomes the hard rounding the coder will do::

    v = y' - μ (or z' - median)  -->  ṽ = ⌊v⌋ + w,  w = softmax((logits + Gumbel) / τ)[ceil]
    logits = -atanh(v - ⌊v⌋) / τ, -atanh(⌈v⌉ - v) / τ       (nearer integer, higher weight)
    loss = λ_q 255² MSE(x, g_s(ỹ)) + bits(ỹ | h_s(z̃), context) / pixels + bits(z̃) / pixels

The MSE leaves out the pixels of flat cells (``flat``), which the decoder paints exactly: it
is the distortion of the decoded image, and no bits are spent on what the map already gives.

Adam moves y' and z' only; the model stays as trained. Large images are refined in windows of
``WINDOW`` latents with a margin on each side (only each window's centre is kept), so memory
stays bounded like the rest of the codec.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from clearvae.codec.entropy_models import scale_from_index
from clearvae.codec.model import HyperpriorCodec, _gain, gained, interpolated

# Adam iterations per effort level: about 1 / 3 / 9 % of a second per 768x512 image per
# iteration on the 2-core CPU of docs/benchmarks.md (measured there).
ITERATIONS = {1: 30, 2: 100, 3: 300}
LEARNING_RATE = 0.01
TAU_MAX, TAU_END, HOLD = 0.5, 0.1, 0.35  # τ stays at TAU_MAX for the first 35 %, then decays
WINDOW, WINDOW_MARGIN = 64, 4  # latents (1024 and 64 pixels); multiples of 4 (z aligns)
SEED = 0  # the Gumbel draws are seeded: the same image gives the same file


def refine(model: HyperpriorCodec, x: Tensor, y: Tensor, z: Tensor, quality: Tensor,
           effort: int, progress: Callable[[int, int, float, float], None] | None = None,
           keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Refined (y', z') for the image x (1, C, H, W), not padded; y' (1, M, h, w) and z'
    (1, N, h/4, w/4) are the gained latents of x padded to 64. ``progress`` gets
    (iteration, iterations, estimated bpp, estimated PSNR) after every iteration. ``keep``
    (1, 1, H, W), 0 or 1, weighs each pixel's error (``flat.uncovered``; None: all 1)."""
    iterations = ITERATIONS[effort]
    h, w = y.shape[-2:]
    y, z = y.clone(), z.clone()
    windows = [(i, min(i + WINDOW, h), j, min(j + WINDOW, w))
               for i in range(0, h, WINDOW) for j in range(0, w, WINDOW)]
    generator = torch.Generator().manual_seed(SEED)
    for k, (i0, i1, j0, j1) in enumerate(windows):
        a0, a1 = max(i0 - WINDOW_MARGIN, 0), min(i1 + WINDOW_MARGIN, h)
        b0, b1 = max(j0 - WINDOW_MARGIN, 0), min(j1 + WINDOW_MARGIN, w)
        xw = x[..., 16 * a0 : 16 * a1, 16 * b0 : 16 * b1]  # the real pixels in the window
        kw = None if keep is None else keep[..., 16 * a0 : 16 * a1, 16 * b0 : 16 * b1]

        def report(t: int, bpp: float, psnr: float, k: int = k) -> None:
            if progress is not None:
                progress(k * iterations + t, len(windows) * iterations, bpp, psnr)

        yw, zw = _anneal(model, xw, y[..., a0:a1, b0:b1], z[..., a0 // 4 : a1 // 4,
                                                            b0 // 4 : b1 // 4],
                         quality, iterations, generator, report, kw)
        y[..., i0:i1, j0:j1] = yw[..., i0 - a0 : i1 - a0, j0 - b0 : j1 - b0]
        z[..., i0 // 4 : i1 // 4, j0 // 4 : j1 // 4] = zw[..., (i0 - a0) // 4 : (i1 - a0) // 4,
                                                         (j0 - b0) // 4 : (j1 - b0) // 4]
    return y, z


def soft_round(v: Tensor, tau: float, generator: torch.Generator) -> Tensor:
    """SGA's annealed stochastic rounding of v (any shape): a Gumbel-softmax mix of ⌊v⌋ and
    ⌊v⌋ + 1 that tends to round(v) as τ -> 0, with gradients to v."""
    floor = torch.floor(v).detach()
    frac = (v - floor).clamp(1e-5, 1 - 1e-5)
    logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)], -1) / tau
    u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-7)
    weights = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    return floor + weights[..., 1]


def _anneal(model: HyperpriorCodec, x: Tensor, y: Tensor, z: Tensor, quality: Tensor,
            iterations: int, generator: torch.Generator,
            report: Callable[[int, float, float], None],
            keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """SGA on one window: x (1, C, H, W) (the image part, maybe smaller than 16 y's size at the
    image's edge), y' (1, M, h, w), z' (1, N, h/4, w/4), ``keep`` the pixels' weights (1, 1,
    H, W) or None. Returns the refined (y', z')."""
    h, w = x.shape[-2:]
    y, z = y.detach().clone().requires_grad_(True), z.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y, z], lr=LEARNING_RATE)
    median = model.z_prior.median.detach()[None, :, None, None]
    y_gain = _gain(model.y_gain, quality).detach()
    y_inverse = _gain(model.y_inverse_gain, quality).detach()
    z_inverse = _gain(model.z_inverse_gain, quality).detach()
    lam = 255**2 * _lambda(model, quality)
    hold = int(HOLD * iterations)
    decay = math.log(TAU_MAX / TAU_END) / max(iterations - hold - 1, 1)
    synthesis = _fast_synthesis(model, x.device)
    for t in range(iterations):
        tau = TAU_MAX * math.exp(-decay * max(t - hold, 0))
        z_soft = median + soft_round(z - median, tau, generator)
        means, index = model.h_s(z_soft * z_inverse)
        means, index = gained(means, index, y_gain)
        if model.context is not None:
            means, index = model.context.refine(y, means, index, y_gain)
        y_soft = means + soft_round(y - means, tau, generator)
        x_hat = synthesis(y_soft * y_inverse)[..., :h, :w]
        y_bits = -model.y_conditional.likelihood(y_soft, scale_from_index(index), means).log2()
        z_bits = -model.z_prior.likelihood(z_soft).log2()
        error = (x_hat - x).square()
        mse = (error if keep is None else error * keep).mean()
        bpp = (y_bits.sum() + z_bits.sum()) / (h * w)
        loss = lam * mse + bpp
        y.grad, z.grad = torch.autograd.grad(loss, [y, z])
        optimizer.step()
        report(t + 1, bpp.item(), 10 * math.log10(1 / max(mse.item(), 1e-10)))
    return y.detach(), z.detach()


def _fast_synthesis(model: HyperpriorCodec, device: torch.device) -> Callable[[Tensor], Tensor]:
    """g_s for the refinement loop: a bfloat16 copy where the CPU computes bfloat16 natively
    (AVX512-BF16; 1.5x faster here, and only the encoder's search sees it: the coded latents
    decode with the float32 g_s), channels-last as oneDNN prefers; float32 elsewhere."""
    native = device.type != "cpu" or torch.cpu._is_avx512_bf16_supported()
    dtype = torch.bfloat16 if native else torch.float32
    g_s = copy.deepcopy(model.g_s).to(dtype).to(memory_format=torch.channels_last)

    def run(y: Tensor) -> Tensor:
        return g_s(y.to(dtype).contiguous(memory_format=torch.channels_last)).float()

    return run


def _lambda(model: HyperpriorCodec, quality: Tensor) -> float:
    """λ at a fractional quality: interpolated geometrically, like the gains."""
    log_lams = torch.tensor(model.config.lambdas, dtype=torch.float64).log()[:, None]
    return float(interpolated(log_lams, quality.double())[0, 0].exp())
