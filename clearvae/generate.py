"""Generation tasks over any VAE: sample grids, reconstructions, interpolations.

Each returns a (C, H, W) image tensor in [0, 1] ready for ``clearvae.data.write_image``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from clearvae.checkpoint import load_file
from clearvae.errors import ConfigError, ModelFileError
from clearvae.models import VAE, model_from_file
from clearvae.visual import make_grid


def load(path: str | os.PathLike, weights: str = "auto") -> VAE:
    """Load a VAE from a clearvae model file or training checkpoint (EMA weights)."""
    loaded = load_file(path)
    if loaded.model_config.get("kind") == "hyperprior":
        raise ModelFileError(f"'{path}' is an image codec, not a generative VAE: use "
                             "clearvae.load_codec, or clearvae compress / decompress")
    if loaded.model_config.get("kind") == "denoiser":
        raise ModelFileError(f"'{path}' is a denoiser, not a generative VAE: use "
                             "clearvae.denoise / clearvae.inpaint, or clearvae denoise / inpaint")
    return model_from_file(loaded, source=str(path), weights=weights)


def sample_grid(model: VAE, n: int = 64, temperature: float = 1.0, seed: int = 0,
                size: tuple[int, int] | None = None) -> Tensor:
    """``n`` samples from the prior at ``temperature`` in a square grid."""
    if n < 1:
        raise ConfigError(f"the number of samples must be >= 1, got {n}")
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return make_grid(model.sample(n, temperature, generator=gen, size=size))


def reconstruction_grid(model: VAE, images: Tensor) -> Tensor:
    """Originals (top row) above their reconstructions (bottom row)."""
    return make_grid(torch.cat([images, model.reconstruct(images)]), ncol=images.shape[0])


def interpolation_strip(model: VAE, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
    """``a``, the decoded path from ``a`` to ``b`` in latent space, then ``b``, in one row."""
    if steps < 2:
        raise ConfigError(f"interpolation needs at least 2 steps, got {steps}")
    path = model.interpolate(a, b, steps)
    return make_grid(torch.cat([a[None], path, b[None]]), ncol=steps + 2)


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, C) float array -> (C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
