"""Digits that clearvae draws itself, so that ``clearvae demo`` needs no download.

Each image is a digit 0-9 in Pillow's default font, thickened or not, moved by a random
affine map (rotation, scale, shear, shift), shrunk with antialiasing and slightly blurred:
white on black and centred with a margin, like MNIST. Image ``i`` depends only on
(seed, i), so any subset is reproducible in any process.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from clearvae.data.mnist import TensorImages
from clearvae.errors import ConfigError

OVERSAMPLE = 2  # draw at twice the size, then shrink with antialiasing
BOX = 18  # digit box side at 28 px (MNIST's is 20): room left for the random map
GLYPH_CANVAS = 96  # pixels of the canvas a glyph is drawn on before the affine map


def _font() -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """Pillow's default font and how much to enlarge what it draws to fill the glyph canvas."""
    try:
        return ImageFont.load_default(size=GLYPH_CANVAS * 2 // 3), 1  # scalable: Pillow >= 10.1
    except (ImportError, OSError):  # Pillow built without FreeType: a small bitmap font
        return ImageFont.load_default(), 4


@functools.cache
def _glyph(digit: int, thickness: int) -> tuple[Image.Image, tuple[float, float], float]:
    """Digit drawn white on black: (canvas, centre of its box, longest side of its box)."""
    font, zoom = _font()
    side = GLYPH_CANVAS // zoom
    canvas = Image.new("L", (side, side))
    ImageDraw.Draw(canvas).text((side / 2, side / 2), str(digit), fill=255, font=font,
                                anchor="mm")
    if zoom > 1:
        canvas = canvas.resize((GLYPH_CANVAS, GLYPH_CANVAS), Image.Resampling.BICUBIC)
    if thickness:
        canvas = canvas.filter(ImageFilter.MaxFilter(2 * thickness + 1))
    left, top, right, bottom = canvas.getbbox() or (0, 0, GLYPH_CANVAS, GLYPH_CANVAS)
    return canvas, ((left + right) / 2, (top + bottom) / 2), max(right - left, bottom - top)


def render_digit(digit: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One digit as uint8 (size, size), with a random affine map drawn from ``rng``."""
    canvas, (cx, cy), extent = _glyph(digit, int(rng.integers(0, 3)))
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.8, 1.2) * (BOX / 28 * size * OVERSAMPLE) / extent
    shear = rng.uniform(-0.2, 0.2)
    shift = rng.uniform(-2, 2, size=2) * size / 28 * OVERSAMPLE
    # forward map: out = centre + A (in - glyph centre) + shift, A = scale * R(angle) * shear
    cos, sin = math.cos(angle), math.sin(angle)
    a = scale * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(a)
    big = size * OVERSAMPLE
    offset = np.array([cx, cy]) - inverse @ (np.array([big / 2, big / 2]) + shift)
    coeffs = (*inverse[0], offset[0], *inverse[1], offset[1])  # Pillow maps out -> in
    image = canvas.transform((big, big), Image.Transform.AFFINE, coeffs,
                             resample=Image.Resampling.BILINEAR)
    image = image.resize((size, size), Image.Resampling.BOX)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.6) * size / 28))
    return np.asarray(image)


class SyntheticDigits(TensorImages):
    """``n`` drawn digits as 1 x size x size images in [0, 1]; image ``i`` shows ``i % 10``."""

    def __init__(self, n: int = 10000, seed: int = 0, size: int = 28) -> None:
        if n < 1 or size < 8:
            raise ConfigError(f"SyntheticDigits needs n >= 1 and size >= 8, got n={n}, "
                              f"size={size}")
        labels = torch.arange(n) % 10
        images = np.stack([render_digit(int(label), np.random.default_rng([seed, i]), size)
                           for i, label in enumerate(labels)])
        super().__init__(torch.from_numpy(images).unsqueeze(1), labels)  # (N, 1, size, size)
