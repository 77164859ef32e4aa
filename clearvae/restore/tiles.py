"""Run a per-tile function over an image of any size and blend the tiles without seams.

    image (C, H, W) --split into tiles of <= tile pixels overlapping by `overlap`-->
    fn(y0, y1, x0, x1) -> (N, C, h, w) per tile --weighted sum / sum of weights--> (N, C, H, W)

The weight of a tile ramps linearly from ~0 to 1 across the overlap on every side that meets
another tile (and is flat at the image border), so each output pixel is a convex mix of the
tiles that cover it and no tile edge shows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clearvae.errors import ConfigError


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering 0..length with tiles of ``tile`` overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = -(-(length - tile) // step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(n: int, overlap: int, before: bool, after: bool) -> Tensor:
    w = torch.ones(n)
    if overlap > 0:
        up = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if before:
            w[:overlap] = torch.minimum(w[:overlap], up)
        if after:
            w[-overlap:] = torch.minimum(w[-overlap:], up.flip(0))
    return w


def tiled(fn: Callable[[int, int, int, int], Tensor], height: int, width: int,
          tile: int = 256, overlap: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Blend ``fn`` over tiles of a (H, W) image; ``fn`` returns (N, C, h, w) for its tile.
    ``overlap`` None: a quarter of the tile, at most 32 pixels. ``progress`` gets (tiles done,
    tiles) after each tile."""
    if overlap is None:
        overlap = min(32, tile // 4)
    if tile < 16 or not 0 <= overlap < tile // 2:
        raise ConfigError(f"tile must be >= 16 and overlap in [0, tile / 2); got tile {tile}, "
                          f"overlap {overlap}")
    ys, xs = starts(height, tile, overlap), starts(width, tile, overlap)
    total, weight = None, torch.zeros(height, width)
    for i, y0 in enumerate(ys):
        y1 = min(y0 + tile, height)
        wy = _ramp(y1 - y0, overlap, i > 0, i < len(ys) - 1)
        for j, x0 in enumerate(xs):
            x1 = min(x0 + tile, width)
            wx = _ramp(x1 - x0, overlap, j > 0, j < len(xs) - 1)
            w = wy[:, None] * wx[None, :]  # (h, w)
            out = fn(y0, y1, x0, x1).float().cpu()  # (N, C, h, w)
            if total is None:
                total = torch.zeros(*out.shape[:2], height, width)
            total[..., y0:y1, x0:x1] += out * w
            weight[y0:y1, x0:x1] += w
            if progress is not None:
                progress(i * len(xs) + j + 1, len(ys) * len(xs))
    return total / weight
