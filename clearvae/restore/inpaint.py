"""Inpainting: fill masked pixels with draws from a VAE's posterior, known pixels untouched.

Every method starts from a smooth fill: a push-pull pyramid (each coarser level averages the
known pixels below it; holes take the upsampled coarse values, then a few Jacobi sweeps of the
Laplace equation) continues the surroundings into holes of any size. From there:

- A denoiser trained blind on a range of Gaussian noise (the bundled one) samples by annealed
  denoising, as plug-and-play and diffusion samplers do: for sigma_t falling geometrically from
  the top of its training range to the bottom,

      y = x_t + sigma_t n,  s = one posterior draw for y,  x_{t+1} = s in the holes, the known
      pixels elsewhere

  (for a conditional denoiser, the bundled one, s is its MMSE estimate, so the chain is
  annealed denoising with fresh noise at each step, as in Kadkhodaie and Simoncelli, "Solving
  linear inverse problems using the prior implicit in a denoiser", NeurIPS 2021:
  ``DenoisingVAE.draw``).

  The noise lets the model invent detail at coarse scales first, then finer ones; each chain
  (its own noise) gives a different plausible filling.
- Any other VAE (or a denoiser for one noise level) runs pseudo-Gibbs sampling (Rezende,
  Mohamed, Wierstra, ICML 2014, section 5.2): z ~ q(z | x_t), x_{t+1} = decode(z) in the holes.

An RGB image through a gray blind denoiser goes through the opponent colour planes of
``denoise``. Works with any VAE family (the tile must suit the model: e.g. 28x28 digits for an
MNIST model, with tile 28).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clearvae import checkpoint
from clearvae.errors import DataError, ModelFileError
from clearvae.models import VAE, model_from_file
from clearvae.models.denoiser import DenoisingVAE
from clearvae.restore.denoise import (
    as_float_image,
    from_opponent,
    from_planes,
    load_denoiser,
    to_opponent,
    to_planes,
    uses_opponent_planes,
)
from clearvae.restore.tiles import starts, tiled


@dataclasses.dataclass
class Inpainted:
    samples: np.ndarray  # (S, H, W[, C]) float32 in [0, 1]: S fillings of the holes

    @property
    def image(self) -> np.ndarray:
        """The first filling."""
        return self.samples[0]

    @property
    def mean(self) -> np.ndarray:
        """The mean of the fillings: with many, the MMSE estimate of the holes (smoother)."""
        return self.samples.mean(0)


def load_restorer(path: str | os.PathLike | None, medical: bool = False) -> torch.nn.Module:
    """A denoiser (None: the bundled photo one, or with ``medical`` the MRI one) or any VAE
    model file; the codec is refused."""
    if path is None:
        return load_denoiser(medical=medical)
    loaded = checkpoint.load_file(path)
    if loaded.model_config.get("kind") == "hyperprior":
        raise ModelFileError(f"'{path}' is an image codec; inpainting needs a VAE or a denoiser")
    return model_from_file(loaded, str(path))


def _draw(model: torch.nn.Module, x: Tensor) -> Tensor:
    """One decoded posterior draw per image of x (B, C, H, W)."""
    if isinstance(model, DenoisingVAE):  # a 2.5-D model sees the plane as its own neighbours
        return model.draw(x.repeat(1, 2 * model.config.context_slices + 1, 1, 1))
    if isinstance(model, VAE):
        return model.likelihood.mean(model(x).params)
    raise ModelFileError(f"cannot inpaint with a {type(model).__name__}: use a VAE or a denoiser")


def as_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, True where pixels are to be filled (any nonzero value, or white)."""
    m = np.asarray(mask)
    if m.ndim == 3:  # an image file read as (H, W, C): any channel set
        m = m.max(-1)
    if m.shape != shape:
        raise DataError(f"the mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} but the "
                        f"image is {shape[1]}x{shape[0]} (width x height): they must match")
    m = m > (0.5 if m.dtype.kind == "f" else 0)
    if m.all():
        raise DataError("the mask covers every pixel: inpainting needs some known pixels")
    return m


def smooth_fill(x: Tensor, holes: Tensor, sweeps: int = 4) -> Tensor:
    """x (B, C, H, W) with ``holes`` (H, W) True where unknown -> holes filled smoothly from the
    known pixels around them (push-pull pyramid + Jacobi sweeps); known pixels unchanged."""
    known = (~holes).to(x.dtype)[None, None]  # (1, 1, H, W)
    return _push_pull(x * known, known, sweeps)


def _push_pull(x: Tensor, known: Tensor, sweeps: int) -> Tensor:
    """x is zero where ``known`` (1, 1, H, W; 1 known, 0 not, at least one known) is zero."""
    h, w = x.shape[-2:]
    if known.all():  # reached at the latest at 1x1
        return x
    # push: average the known pixels of each 2x2 block (ceil_mode keeps odd edges)
    weight = F.avg_pool2d(known, 2, ceil_mode=True)  # (1, 1, h/2, w/2)
    coarse_known = (weight > 0).to(x.dtype)
    coarse = F.avg_pool2d(x, 2, ceil_mode=True) / weight.clamp_min(1e-12) * coarse_known
    coarse = _push_pull(coarse, coarse_known, sweeps)  # filled everywhere
    # pull: holes take the upsampled coarse level, then relax towards the Laplace solution
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    out = torch.where(known > 0, x, up)
    c = x.shape[1]
    stencil = x.new_tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]]).expand(c, 1, 3, 3)
    for _ in range(sweeps):
        average = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), stencil, groups=c)
        out = torch.where(known > 0, x, average)
    return out


def noise_schedule(model: torch.nn.Module, iterations: int) -> Tensor | None:
    """Annealing sigmas (0-1 scale) for a blind denoiser, falling geometrically over its training
    range; None for a model that is not one (it samples by pseudo-Gibbs)."""
    if not isinstance(model, DenoisingVAE) or model.config.noise.synthetic is None:
        return None
    lo, hi = model.config.noise.synthetic
    t = torch.arange(iterations, dtype=torch.float64) / max(iterations - 1, 1)
    return (hi * (lo / hi) ** t / 255.0).float()


@torch.no_grad()
def inpaint(image: Any, mask: Any, model: torch.nn.Module | str | os.PathLike | None = None, *,
            samples: int = 1, iterations: int = 20, tile: int = 256, overlap: int | None = None,
            seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Inpainted:
    """Fill ``mask`` (True / nonzero: unknown) in ``image`` with ``samples`` posterior draws;
    ``progress`` gets (steps done, steps) after each iteration of each tile."""
    if samples < 1 or iterations < 1:
        raise DataError(f"samples and iterations must be >= 1, got {samples}, {iterations}")
    if not isinstance(model, torch.nn.Module):
        model = load_restorer(model)
    model = model.eval()
    shape = np.shape(image)
    x01, _ = as_float_image(image)
    holes = torch.from_numpy(as_mask(mask, x01.shape[:2]))  # (H, W)
    planes = to_planes(model, x01)  # (B, c, H, W)
    opponent = isinstance(model, DenoisingVAE) and uses_opponent_planes(model, x01)
    x = to_opponent(planes) if opponent else planes  # what the model sees
    start = smooth_fill(x, holes)
    sigmas = noise_schedule(model, iterations)
    device = next(model.parameters()).device
    overlap = min(32, tile // 4) if overlap is None else overlap
    tiles = len(starts(x.shape[-2], tile, overlap)) * len(starts(x.shape[-1], tile, overlap))
    done = [0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        def run(y0: int, y1: int, x0: int, x1: int) -> Tensor:
            known = x[..., y0:y1, x0:x1].repeat(samples, 1, 1, 1).to(device)  # (S B, c, h, w)
            m = holes[y0:y1, x0:x1].to(device)
            current = start[..., y0:y1, x0:x1].repeat(samples, 1, 1, 1).to(device)
            for t in range(iterations):
                noisy = current if sigmas is None else current + sigmas[t] * torch.randn_like(
                    current)
                current = torch.where(m, _draw(model, noisy), known)
                done[0] += 1
                if progress is not None:
                    progress(done[0], tiles * iterations)
            return current.cpu()

        out = tiled(run, x.shape[-2], x.shape[-1], tile, overlap)  # (S B, c, H, W)
    out = out.view(samples, *x.shape)
    if opponent:
        out = from_opponent(out)
    out = torch.where(holes, out, planes)  # known pixels exactly as given
    return Inpainted(from_planes(out.clamp(0, 1), shape))
