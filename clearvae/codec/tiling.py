"""Tiles and blocks of the codec: what lets it code any image size in bounded memory.

Images are padded to a multiple of 64 (``pad``); the transforms run over overlapping tiles of
``COMPUTE_TILE`` pixels with a ``MARGIN`` of context, keeping each tile's centre (``tiled``:
the same result as one pass); the coder walks row-major blocks of the latent grid
(``block_rects``) so that its working set stays small too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clearvae.codec import container
from clearvae.codec.model import MULTIPLE
from clearvae.errors import ConfigError, DataError

COMPUTE_TILE = 512  # g_a / g_s run on tiles of this many pixels (plus a margin)
MARGIN = 64  # pixels of context around each tile (covers g_a's 61-pixel receptive field)


def as_tensor(image: np.ndarray | Tensor, model_channels: int) -> tuple[Tensor, int]:
    """(1, model_channels, H, W) float32 in [0, 1] and the number of channels the caller gave
    (a gray image goes through an RGB model as three equal planes)."""
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got "
                        f"{a.shape}")
    if a.shape[2] == 4:
        raise DataError("the image has an alpha channel, which the codec does not keep: "
                        "flatten it onto a background first (e.g. --drop-alpha)")
    if a.shape[2] == 3 and model_channels == 1:
        raise DataError("this codec model codes gray images only, and the image is colour: "
                        "convert it to gray first, or use an RGB model")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        raise DataError("16-bit images are not supported by the codec: convert to 8 bits "
                        "first (the codec codes 8-bit images)")
    elif not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        raise DataError(f"expected uint8 or finite float pixels, got {a.dtype}")
    h, w, c = a.shape
    if min(h, w) < 1 or max(h, w) > container.MAX_SIDE:
        raise DataError(f"image size {w}x{h} is outside 1..{container.MAX_SIDE} pixels a side")
    x = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None].clamp(0, 1)
    return (x.expand(1, model_channels, h, w).contiguous() if c == 1 else x), c


def tile_size(h: int, w: int, tile: int) -> int:
    if tile == 0:  # automatic: one block up to 2048 pixels a side
        return 2048 if max(h, w) > 2048 else max(-(-h // 64), -(-w // 64)) * 64
    if tile % MULTIPLE or tile < MULTIPLE:
        raise ConfigError(f"tile must be a positive multiple of {MULTIPLE}, got {tile}")
    return tile


def pad(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % MULTIPLE, 0, -h % MULTIPLE), mode="replicate")


def block_rects(h: int, w: int, size: int) -> list[tuple[int, int, int, int]]:
    """Row-major blocks (i0, i1, j0, j1) of ``size`` latent pixels over an (h, w) latent grid
    (edge blocks smaller, multiples of 4)."""
    return [(i, min(i + size, h), j, min(j + size, w))
            for i in range(0, h, size) for j in range(0, w, size)]


def tiled(fn, x: Tensor, scale: float) -> Tensor:  # noqa: ANN001
    """Apply a convolutional ``fn`` that resizes by ``scale`` over overlapping tiles of x,
    keeping each tile's centre: the same result as ``fn(x)`` in bounded memory."""
    step = int(COMPUTE_TILE if scale < 1 else COMPUTE_TILE / 16)
    margin = int(MARGIN if scale < 1 else MARGIN / 16)
    h, w = x.shape[-2:]
    if h <= step + 2 * margin and w <= step + 2 * margin:
        return fn(x)
    out = None
    for i in range(0, h, step):
        for j in range(0, w, step):
            i0, j0 = max(i - margin, 0), max(j - margin, 0)
            piece = fn(x[..., i0 : min(i + step + margin, h), j0 : min(j + step + margin, w)])
            a, b = int((i - i0) * scale), int((j - j0) * scale)
            hh, ww = int(min(step, h - i) * scale), int(min(step, w - j) * scale)
            if out is None:
                out = piece.new_empty((*piece.shape[:2], int(h * scale), int(w * scale)))
            out[..., int(i * scale) : int(i * scale) + hh,
                int(j * scale) : int(j * scale) + ww] = piece[..., a : a + hh, b : b + ww]
    return out
