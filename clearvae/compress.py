"""Compressing image files to ``.cvae`` files and back (the task behind the CLI).

Outputs are written atomically, and only at the end: an error or an interrupted encode leaves
no partial file and replaces nothing. A decoded PNG is marked as clearvae's (a PNG text
chunk), so that ``--force`` may replace an earlier decode but never the original photo that a
``.cvae`` file sits beside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clearvae.codec import container
from clearvae.codec.codec import Codec, Progress
from clearvae.data import read_image_bit_depth, write_image
from clearvae.data.images import opened
from clearvae.errors import DataError
from clearvae.files import atomic_write

SUFFIX = ".cvae"
DECODED_BY = "clearvae decompress"  # the PNG text chunk "Software" of every decoded image


@dataclass(frozen=True)
class Settings:
    """How to code: a quality, or one target that chooses it; the effort; the block size."""

    quality: float = 4
    effort: int = 0
    tile: int = 0
    target_bpp: float | None = None
    max_bytes: int | None = None
    target_psnr: float | None = None

    def describe(self) -> str:
        """Which of quality / target decided, for messages."""
        for key in ("target_bpp", "max_bytes", "target_psnr"):
            if getattr(self, key) is not None:
                return f"{key.replace('_', '-')} {getattr(self, key)}"
        return f"quality {self.quality:g}"


@dataclass(frozen=True)
class Result:
    source: Path
    target: Path
    compressed_bytes: int  # size of the .cvae file, header and checksum included
    pixels: int
    quality: float = 0.0  # the quality the file was coded at (as its header says)
    effort: int = 0

    @property
    def bpp(self) -> float:
        """Real bits per pixel, from the bytes of the file."""
        return 8 * self.compressed_bytes / self.pixels


def read_for_codec(path: Path, drop_alpha: bool = False) -> np.ndarray:
    """An 8-bit image file as uint8 (H, W, C), C = 1 or 3; alpha and 16 bits are refused
    with what to do (the codec would otherwise silently lose them)."""
    if read_image_bit_depth(path) == 16:
        raise DataError(f"'{path}' has 16 bits per sample; the codec codes 8-bit images: "
                        "convert it to 8 bits first")
    with opened(path) as im:  # every Pillow failure, and a decompression bomb, a DataError
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise DataError(f"'{path}' holds {frames} frames (an animation or a multi-page "
                            "file); the codec codes one still image: extract the frame to "
                            "code first")
        if im.mode.startswith("F") or im.mode == "I;16F":
            raise DataError(f"'{path}' has floating-point pixels; the codec codes 8-bit "
                            "images: convert it to 8 bits first")
        has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        if has_alpha and not drop_alpha:
            raise DataError(f"'{path}' has an alpha channel, which the codec does not keep: "
                            "pass --drop-alpha to code the colour only")
        gray = im.mode in ("1", "L", "LA", "I", "I;16")
        return np.asarray(im.convert("L" if gray else "RGB"))


def compress_file(codec: Codec, source: str | os.PathLike, target: str | os.PathLike | None = None,
                  settings: Settings = Settings(), drop_alpha: bool = False,
                  overwrite: bool = False, progress: Progress | None = None) -> Result:
    """Compress one image file; the ``.cvae`` file is written atomically, at the end."""
    source = Path(source)
    target = Path(target) if target else source.with_suffix(SUFFIX)
    _check_target(source, target, overwrite)
    image = read_for_codec(source, drop_alpha)
    data = codec.compress(image, quality=settings.quality, tile=settings.tile,
                          effort=settings.effort, target_bpp=settings.target_bpp,
                          max_bytes=settings.max_bytes, target_psnr=settings.target_psnr,
                          progress=progress)
    _write(target, data)
    header = container.read_header(data, str(target))
    return Result(source, target, len(data), image.shape[0] * image.shape[1], header.quality,
                  header.effort)


def decompress_file(codec: Codec, source: str | os.PathLike,
                    target: str | os.PathLike | None = None, overwrite: bool = False,
                    max_pixels: int = container.MAX_PIXELS) -> Result:
    """Decompress one ``.cvae`` file to an image (PNG unless ``target`` says otherwise)."""
    source = Path(source)
    default = target is None
    target = source.with_suffix(".png") if default else Path(target)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read '{source}': {exc.strerror or exc}") from None
    header, _ = container.unpack(data, str(source), max_pixels)  # a damaged file: say so first
    _check_target(source, target, overwrite)
    if default and target.exists() and not _decoded_by_us(target):
        raise DataError(f"'{target}' exists and was not written by clearvae (the original "
                        "image?): not replacing it even with --force; give the output name "
                        "with -o")
    image = codec.decompress(data, name=str(source), max_pixels=max_pixels)
    try:
        write_image(target, np.round(image * 255) / 255, software=DECODED_BY)
    except OSError as exc:
        raise DataError(f"cannot write '{target}': {exc.strerror or exc}; nothing was "
                        "written") from None
    return Result(source, target, len(data), image.shape[0] * image.shape[1], header.quality,
                  header.effort)


def _check_target(source: Path, target: Path, overwrite: bool) -> None:
    if target.resolve() == source.resolve():
        raise DataError(f"refusing to overwrite the input '{source}'")
    if target.exists() and not overwrite:
        raise DataError(f"'{target}' exists: remove it or pass --force")


def _write(target: Path, data: bytes) -> None:
    try:
        atomic_write(target, data)
    except OSError as exc:
        raise DataError(f"cannot write '{target}': {exc.strerror or exc}; nothing was "
                        "written") from None


def _decoded_by_us(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.info.get("Software") == DECODED_BY
    except (OSError, ValueError):
        return False
