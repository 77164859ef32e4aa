"""Compressing image files to ``.cvae`` files and back (the task behind the CLI)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clearvae.codec.codec import Codec
from clearvae.data import read_image_bit_depth, write_image
from clearvae.errors import DataError
from clearvae.files import atomic_write

SUFFIX = ".cvae"


@dataclass(frozen=True)
class Result:
    source: Path
    target: Path
    compressed_bytes: int  # size of the .cvae file, header and checksum included
    pixels: int

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
    try:
        with Image.open(path) as im:
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            if has_alpha and not drop_alpha:
                raise DataError(f"'{path}' has an alpha channel, which the codec does not keep: "
                                "pass --drop-alpha to code the colour only")
            gray = im.mode in ("1", "L", "LA", "I", "I;16")
            return np.asarray(im.convert("L" if gray else "RGB"))
    except OSError as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from None


def compress_file(codec: Codec, source: str | os.PathLike, target: str | os.PathLike | None = None,
                  quality: int = 4, tile: int = 0, drop_alpha: bool = False,
                  overwrite: bool = False) -> Result:
    """Compress one image file; the ``.cvae`` file is written atomically."""
    source = Path(source)
    target = Path(target) if target else source.with_suffix(SUFFIX)
    if target.resolve() == source.resolve():
        raise DataError(f"refusing to overwrite the input '{source}' with its compressed file")
    if target.exists() and not overwrite:
        raise DataError(f"'{target}' exists: remove it or pass --force")
    image = read_for_codec(source, drop_alpha)
    data = codec.compress(image, quality=quality, tile=tile)
    atomic_write(target, data)
    return Result(source, target, len(data), image.shape[0] * image.shape[1])


def decompress_file(codec: Codec, source: str | os.PathLike,
                    target: str | os.PathLike | None = None, overwrite: bool = False) -> Result:
    """Decompress one ``.cvae`` file to an image (PNG unless ``target`` says otherwise)."""
    source = Path(source)
    target = Path(target) if target else source.with_suffix(".png")
    if target.resolve() == source.resolve():
        raise DataError(f"refusing to overwrite the input '{source}'")
    if target.exists() and not overwrite:
        raise DataError(f"'{target}' exists: remove it or pass --force")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read '{source}': {exc}") from None
    image = codec.decompress(data, name=str(source))
    write_image(target, np.round(image * 255) / 255)
    return Result(source, target, len(data), image.shape[0] * image.shape[1])
