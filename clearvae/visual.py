"""Arranging images into grids and strips for PNG output."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def make_grid(images: Tensor, ncol: int | None = None, pad: int = 2, value: float = 1.0) -> Tensor:
    """Tile (N, C, H, W) images into one (C, H', W') image with ``pad`` pixels between them."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), value,
                      dtype=images.dtype)
    for i, img in enumerate(images.cpu()):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = img
    return grid

