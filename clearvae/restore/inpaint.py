"""Inpainting: fill masked pixels with draws from a VAE's posterior, known pixels untouched.

Pseudo-Gibbs sampling (Rezende, Mohamed, Wierstra, "Stochastic backpropagation and
approximate inference in deep generative models", ICML 2014, section 5.2): start with the
holes at the mean of the known pixels, then repeat

    z ~ q(z | x),  s = decode(z),  x[mask] = s[mask]        (known pixels always kept)

so that the holes drift towards values the model finds consistent with the rest of the
image. Several chains give several plausible fillings. Works with a denoiser or any VAE family
(the tile must suit the model: e.g. 28x28 digits for an MNIST model, with tile 28).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clearvae import checkpoint
from clearvae.errors import DataError, ModelFileError
from clearvae.models import VAE, model_from_file
from clearvae.models.denoiser import DenoisingVAE
from clearvae.restore.denoise import as_float_image, from_planes, load_denoiser, to_planes
from clearvae.restore.tiles import tiled


@dataclasses.dataclass
class Inpainted:
    samples: np.ndarray  # (S, H, W[, C]) float32 in [0, 1]: S fillings of the holes

    @property
    def image(self) -> np.ndarray:
        return self.samples[0]


def load_restorer(path: str | os.PathLike | None) -> torch.nn.Module:
    """A denoiser (None: the bundled one) or any VAE model file; the codec is refused."""
    if path is None:
        return load_denoiser()
    loaded = checkpoint.load_file(path)
    if loaded.model_config.get("kind") == "hyperprior":
        raise ModelFileError(f"'{path}' is an image codec; inpainting needs a VAE or a denoiser")
    return model_from_file(loaded, str(path))


def _draw(model: torch.nn.Module, x: Tensor) -> Tensor:
    """One decoded posterior draw per image of x (B, C, H, W)."""
    if isinstance(model, DenoisingVAE):
        return model.backbone(x).params
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


@torch.no_grad()
def inpaint(image: Any, mask: Any, model: torch.nn.Module | str | os.PathLike | None = None, *,
            samples: int = 1, iterations: int = 50, tile: int = 256, overlap: int | None = None,
            seed: int = 0) -> Inpainted:
    """Fill ``mask`` (True / nonzero: unknown) in ``image`` with ``samples`` posterior draws."""
    if samples < 1 or iterations < 1:
        raise DataError(f"samples and iterations must be >= 1, got {samples}, {iterations}")
    if not isinstance(model, torch.nn.Module):
        model = load_restorer(model)
    model = model.eval()
    shape = np.shape(image)
    x01, _ = as_float_image(image)
    holes = torch.from_numpy(as_mask(mask, x01.shape[:2]))  # (H, W)
    x = to_planes(model, x01)  # (B, c, H, W)
    fill = x[..., ~holes].mean(-1)[..., None, None]  # (B, c, 1, 1): mean of the known pixels
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        def run(y0: int, y1: int, x0: int, x1: int) -> Tensor:
            known = x[..., y0:y1, x0:x1].repeat(samples, 1, 1, 1).to(device)  # (S B, c, h, w)
            m = holes[y0:y1, x0:x1].to(device)
            start = fill.repeat(samples, 1, 1, 1).to(device)
            current = torch.where(m, start, known)
            for _ in range(iterations):
                current = torch.where(m, _draw(model, current), known)
            return current.cpu()

        out = tiled(run, x.shape[-2], x.shape[-1], tile, overlap)  # (S B, c, H, W)
    out = out.view(samples, *x.shape)
    out = torch.where(holes, out, x)  # blending never touches known pixels, but make it exact
    return Inpainted(from_planes(out.clamp(0, 1), shape))
