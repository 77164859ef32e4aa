"""Classic codecs beside ours: what JPEG and WebP (through Pillow) need for a given PSNR.

For one 8-bit image and a PSNR target (say the PSNR a ``.cvae`` file decoded to), each format's
quality setting is bisected for the smallest file that reaches the target. PSNR rises with the
quality setting for both formats (almost always strictly; where it does not, the bisection
may settle one step high, never below the target). Settings as in the Kodak benchmark
(``benchmarks/codec_kodak.py``): Pillow's JPEG defaults (4:2:0 chroma), WebP at ``method=6``
(its slowest, smallest).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clearvae.errors import ConfigError, DataError

FORMATS = {"jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 6})}
QUALITIES = (1, 100)  # the quality settings searched, both formats


@dataclass(frozen=True)
class Baseline:
    """One format's smallest file that reaches the target PSNR (or its best, if none does)."""

    format: str
    quality: int  # the format's own quality setting
    bytes: int
    bpp: float  # real bits per pixel, from the bytes
    psnr: float  # dB, 8-bit, against the image
    reached: bool  # False: even the highest quality stays below the target


def encode(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """(H, W) or (H, W, C) uint8 -> the bytes of a ``fmt`` file ("jpeg" or "webp")."""
    name, options = FORMATS[fmt]
    buffer = io.BytesIO()
    Image.fromarray(_planar(image)).save(buffer, format=name, quality=quality, **options)
    return buffer.getvalue()


def decode(data: bytes, like: np.ndarray) -> np.ndarray:
    """The pixels of an encoded file, in the shape and channels of ``like``."""
    with Image.open(io.BytesIO(data)) as im:
        out = np.asarray(im.convert("L" if _planar(like).ndim == 2 else "RGB"))
    return out.reshape(like.shape)


def psnr(a: np.ndarray, b: np.ndarray, peak: int = 255) -> float:
    """PSNR (dB) of two integer images with values up to ``peak``; inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def at_psnr(image: np.ndarray, target: float, fmt: str,
            progress: Callable[[int], None] | None = None) -> Baseline:
    """The smallest ``fmt`` file of ``image`` (uint8, (H, W) or (H, W, C), C = 1 or 3) whose
    PSNR reaches ``target`` dB; ``progress`` gets the number of encodings so far."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not (isinstance(target, (int, float)) and 0 < target < 100):
        raise ConfigError(f"the target PSNR must be a number of dB between 0 and 100, got "
                          f"{target!r}")
    if image.dtype != np.uint8 or _planar(image).ndim not in (2, 3):
        raise DataError(f"JPEG and WebP take 8-bit gray or RGB images, got {image.dtype} of "
                        f"shape {image.shape}")
    tried: dict[int, Baseline] = {}

    def trial(q: int) -> Baseline:
        if q not in tried:
            data = encode(image, fmt, q)
            reached = psnr(image, decode(data, image))
            pixels = image.shape[0] * image.shape[1]
            tried[q] = Baseline(fmt, q, len(data), 8 * len(data) / pixels, reached,
                                reached >= target)
            if progress is not None:
                progress(len(tried))
        return tried[q]

    lo, hi = QUALITIES
    if not trial(hi).reached:
        return trial(hi)
    if trial(lo).reached:
        return trial(lo)
    while hi - lo > 1:  # trial(lo) below the target, trial(hi) at or above it
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if trial(mid).reached else (mid, hi)
    return trial(hi)


def _planar(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) as (H, W): the shape Pillow takes for gray."""
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
