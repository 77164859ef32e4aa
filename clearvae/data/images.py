"""Image files: read (8 and 16 bit) and write them, and serve folders of them as a dataset.

Inside clearvae an image is a float32 tensor in [0, 1] of shape (C, H, W), C = 1 (gray) or 3
(RGB). Files are decoded with Pillow; anything wrong with a file becomes a ``DataError`` that
names it. A dataset item is asked for by ``index`` (centre crop) or ``(index, seed)`` (the
seed places a random crop), so the same key gives the same tensor in every process.
"""

from __future__ import annotations

import contextlib
import io
import operator
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from clearvae.codec.container import MAX_SIDE  # one side limit for reading and coding
from clearvae.errors import ClearvaeError, ConfigError, DataError
from clearvae.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 2**28  # refuse larger images (decompression bombs, absurd headers)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as Pillow's "L" conversion
Mode = Literal["crop", "resize", "full"]
ValueRange = Literal["container", "used"]


@contextlib.contextmanager
def opened(path: Path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow (pixel limit, MAX_PIXELS by default, and MAX_SIDE a side,
    checked from the header before decoding); every failure inside the block, MemoryError
    included, becomes a DataError."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as im:
            if not (0 < im.width <= MAX_SIDE and 0 < im.height <= MAX_SIDE):
                raise DataError(f"cannot read image '{path}': {im.width}x{im.height} is outside "
                                f"1..{MAX_SIDE} pixels a side (a damaged header?)")
            if im.width * im.height > limit:
                raise DataError(f"cannot read image '{path}': {im.width}x{im.height} is more "
                                f"than {limit} pixels; shrink or tile it first")
            yield im
    except ClearvaeError:  # ours already speaks to the user
        raise
    except FileNotFoundError:
        raise DataError(f"cannot read image '{path}': no such file") from None
    except Exception as e:  # Pillow's plugins raise many types (OSError, SyntaxError, ...)
        raise DataError(f"cannot read image '{path}': {e}; replace or remove the file") from e


def _source_bits(im: Image.Image) -> int:
    """Bits per channel stored in the file, from the decoder's raw mode (e.g. 'RGB;16B')."""
    for tile in im.tile:
        args = tile[3]
        rawmode = args if isinstance(args, str) else next(iter(args or ()), "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _pixels(path: Path, im: Image.Image, bits: int) -> np.ndarray:
    """The pixels of a loaded image as (H, W, C) uint8 or uint16, C = 1 or 3; alpha dropped."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)[..., None]
    if im.mode == "I":  # 32-bit integers: accepted when they hold 8- or 16-bit values
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"cannot read image '{path}': its 32-bit pixels go beyond 16 bits; "
                            "convert it to an 8- or 16-bit PNG")
        deep = bits == 16 or (a.size and a.max() > 255)
        return a.astype(np.uint16 if deep else np.uint8)[..., None]
    if im.mode == "F":
        raise DataError(f"cannot read image '{path}': floating-point pixels are not supported; "
                        "convert it to an 8- or 16-bit PNG")
    if bits == 16:  # Pillow has no 16-bit multi-channel mode: it decodes these to 8 bits
        warnings.warn(f"'{path}' has 16 bits per channel; Pillow reads this kind of image "
                      "(colour or with alpha) with 8-bit precision", stacklevel=4)
    if im.mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"))[..., None]
    if im.mode in ("P", "PA"):  # through RGBA so that palette transparency is honoured
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """(H, W, C) image with ``channels`` channels: gray by BT.601 luma, RGB by replication."""
    c = image.shape[-1]
    if channels is None or channels == c:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    if channels == 1:
        gray = image.astype(np.float64) @ np.array(LUMA)
        if image.dtype.kind in "ui":
            gray = np.rint(gray)
        return gray.astype(image.dtype)[..., None]
    raise ConfigError(f"channels must be 1 (gray), 3 (RGB) or None (as stored), got {channels}")


def _decode(path: Path, channels: int | None, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` to (H, W, C) uint8 or uint16 with ``channels`` channels."""
    with opened(path, max_pixels) as im:
        bits = _source_bits(im)  # before load(), which drops the decoder's tiles
        im.load()  # decode now, inside the error translation
        return convert_channels(_pixels(path, im, bits), channels)


def used_bits(values: np.ndarray) -> int:
    """Bits that non-negative integer values actually use, e.g. 12 for 0..3470 (at least 1)."""
    return max(1, int(values.max(initial=0)).bit_length())


def _to_float(image: np.ndarray, value_range: ValueRange = "container") -> np.ndarray:
    """uint8 / uint16 pixels -> float32 in [0, 1], divided by the container's top value (255 or
    65535) or, ``value_range="used"``, by 2**bits - 1 for the bits the values use (a 12-bit
    MRI slice in a 16-bit PNG spans [0, 1] as the codec sees it, not [0, 1/16])."""
    if value_range == "used":
        return image.astype(np.float32) / float(2 ** used_bits(image) - 1)
    return image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 65535.0)


def read_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """Read an image file as float32 (H, W, C) in [0, 1]; ``channels`` None keeps gray/colour.

    16-bit gray files keep their 16 bits (divided by 65535); alpha is dropped, not composited.
    """
    return _to_float(_decode(Path(path), channels))


def read_pixels(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file's pixels as stored: (H, W, C) uint8 or uint16, C = 1 or 3, unscaled."""
    return _decode(Path(path), None, max_pixels)


def read_image_bit_depth(path: str | os.PathLike) -> int:
    """Bits per channel stored in an image file: 8 or 16."""
    path = Path(path)
    with opened(path) as im:
        bits = _source_bits(im)
        if im.mode == "I" and bits == 8:  # 32-bit integers: 16 if they need more than 8 bits
            return 16 if _decode(path, None).dtype == np.uint16 else 8
        return 16 if im.mode.startswith("I;16") else bits


def _as_hwc(array: Any, path: Path) -> np.ndarray:
    """A float image given as torch (C, H, W) or numpy (H, W, C), as (H, W, C) in [0, 1]."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):  # the library's (C, H, W)
            array = array.transpose(1, 2, 0)
    a = np.asarray(array)
    if a.dtype.kind != "f":
        raise DataError(f"cannot write '{path}': write_image takes floats in [0, 1], got "
                        f"{a.dtype} (divide 8-bit pixels by 255 first)")
    if a.ndim == 3 and a.shape[-1] not in (1, 3) and a.shape[0] in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise DataError(f"cannot write '{path}': expected (C, H, W) or (H, W, C) with 1 or 3 "
                        f"channels, got shape {tuple(np.shape(array))}")
    if not np.isfinite(a).all():
        raise DataError(f"cannot write '{path}': the image holds NaN or infinite values")
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _format(path: Path) -> str:
    """The Pillow format that ``path``'s extension names (PNG, JPEG, ...)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the image format of '{path}' from its extension: "
                        f"use one of {', '.join(IMAGE_EXTENSIONS)}")
    return fmt


def write_image(path: str | os.PathLike, array: Any, bit_depth: int = 8,
                software: str | None = None) -> None:
    """Write a [0, 1] image atomically in the format its extension names (PNG, JPEG, ...);
    ``software`` goes into a PNG's "Software" text chunk."""
    path = Path(path)
    image = _as_hwc(array, path)
    fmt = _format(path)
    if bit_depth not in (8, 16):
        raise ConfigError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and image.shape[-1] == 3:
        raise DataError(f"cannot write '{path}' with 16 bits: Pillow writes 16-bit images in "
                        "gray only; use bit_depth=8 or a 1-channel image")
    dtype, top = (np.uint8, 255) if bit_depth == 8 else (np.uint16, 65535)
    _save(path, fmt, np.rint(image * top).astype(dtype), software)


def write_pixels(path: str | os.PathLike, pixels: np.ndarray, software: str | None = None) -> None:
    """Write integer pixels unchanged, atomically: (H, W) or (H, W, 1) uint8 / uint16 gray, or
    (H, W, 3) uint8 RGB, in the format the extension names (16 bits: PNG or TIFF)."""
    path = Path(path)
    a = np.asarray(pixels)
    a = a[..., None] if a.ndim == 2 else a
    fmt = _format(path)
    gray16 = a.dtype == np.uint16 and a.ndim == 3 and a.shape[-1] == 1
    if not (gray16 or (a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] in (1, 3))):
        raise DataError(f"cannot write '{path}': write_pixels takes uint8 gray or RGB, or uint16 "
                        f"gray, as (H, W) or (H, W, C); got {a.dtype} of shape {np.shape(pixels)}")
    _save(path, fmt, a, software)


def _save(path: Path, fmt: str, pixels: np.ndarray, software: str | None) -> None:
    """Encode (H, W, C) uint8 / uint16 pixels as ``fmt`` and write them atomically."""
    im = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)  # L, I;16, RGB
    buffer = io.BytesIO()
    options = {}
    if software is not None and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_text("Software", software)
    try:
        im.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as e:
        bits = 16 if pixels.dtype == np.uint16 else 8
        raise DataError(f"cannot write '{path}' as {fmt} with {bits} bits: {e}") from e
    atomic_write(path, buffer.getvalue())  # temp file in the same folder, then os.replace


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, sorted; hidden files and folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder '{root}' {what}")
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"no images found under '{root}': accepted extensions are "
                        f"{', '.join(IMAGE_EXTENSIONS)} (any letter case)")
    return files


def check_scale(scale: Any) -> tuple[float, float] | None:
    """Validate a random downscaling range (lo, hi) with 0 < lo <= hi <= 1, or None."""
    if scale is None:
        return None
    ok = isinstance(scale, (tuple, list)) and len(scale) == 2 and all(
        isinstance(v, (int, float)) and np.isfinite(v) for v in scale)
    if not ok or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"scale must be a downscaling range [lo, hi] with 0 < lo <= hi <= 1, "
                          f"got {scale!r}")
    return float(scale[0]), float(scale[1])


def check_fit(size: int | tuple[int, int] | None, mode: str) -> tuple[int, int] | None:
    """Validate ``size`` and ``mode``; ``size`` as (H, W), or None for the whole image."""
    if mode not in ("crop", "resize", "full"):
        raise ConfigError(f"mode must be 'crop', 'resize' or 'full', got {mode!r}")
    if size is None:
        return None
    if mode == "full":
        raise ConfigError(f"mode 'full' keeps whole images: give no size (got {size})")
    pair = (size, size) if isinstance(size, int) else size
    is_pair = isinstance(pair, (tuple, list)) and len(pair) == 2
    if not is_pair or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ConfigError(f"size must be a positive integer or (height, width), got {size!r}")
    return pair[0], pair[1]


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, H, W) float image resized to (C, h, w): Lanczos (antialiased), clipped to [0, 1]."""
    channels = [Image.fromarray(np.ascontiguousarray(c, dtype=np.float32))  # mode "F"
                .resize((w, h), Image.Resampling.LANCZOS) for c in image]
    return np.clip(np.stack([np.asarray(c) for c in channels]), 0.0, 1.0)


def fit_to_size(image: np.ndarray, size: tuple[int, int] | None, mode: str,
                seed: int | None = None, scale: tuple[float, float] | None = None,
                ) -> np.ndarray:
    """Crop (reflection-padding small images) or resize a (C, H, W) float image to ``size``.

    A crop is centred when ``seed`` is None, else placed by ``seed``; resizing is Lanczos
    (antialiased) and does not keep the aspect ratio. ``size`` None returns ``image`` as is.
    ``scale`` (lo, hi), for seeded crops: the image is first downscaled by a factor drawn
    log-uniformly from [lo, hi] (never below the crop), as learned codecs train on large
    photos (their detail at the statistics of smaller ones, camera noise averaged away);
    done as a crop of size / factor resized to size.
    """
    if size is None or mode == "full":
        return image
    h, w = size
    if mode == "resize":
        return _resized(image, h, w)
    if scale is not None and seed is not None:
        rng = np.random.default_rng(seed)
        lo, hi = scale
        factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        factor = max(factor, h / image.shape[1], w / image.shape[2])
        if factor < 1:
            ch, cw = round(h / factor), round(w / factor)
            top = int(rng.integers(image.shape[1] - ch + 1))
            left = int(rng.integers(image.shape[2] - cw + 1))
            return _resized(image[:, top : top + ch, left : left + cw], h, w)
    pad_h, pad_w = max(h - image.shape[1], 0), max(w - image.shape[2], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                               (pad_w // 2, pad_w - pad_w // 2)), mode="reflect")
    free_h, free_w = image.shape[1] - h, image.shape[2] - w
    if seed is None:
        top, left = free_h // 2, free_w // 2
    else:
        rng = np.random.default_rng(seed)
        top, left = int(rng.integers(free_h + 1)), int(rng.integers(free_w + 1))
    return image[:, top : top + h, left : left + w]


def split_key(key: int | tuple[int, int], length: int) -> tuple[int, int | None]:
    """A dataset key ``index`` or ``(index, seed)`` as (index in range, seed or None)."""
    index, seed = key if isinstance(key, tuple) else (key, None)
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f"index {index} is outside a dataset of {length} images")
    return index % length, None if seed is None else operator.index(seed)


def to_image_tensor(pixels: np.ndarray, size: tuple[int, int] | None, mode: str,
                    seed: int | None = None, value_range: ValueRange = "container",
                    scale: tuple[float, float] | None = None) -> torch.Tensor:
    """(H, W, C) integer pixels -> float32 (C, H, W) tensor in [0, 1], fitted to ``size``."""
    image = fit_to_size(_to_float(pixels, value_range).transpose(2, 0, 1), size, mode, seed,
                        scale)
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


class ImageFolder(torch.utils.data.Dataset):
    """The images under a folder (recursively) as (C, H, W) float32 tensors in [0, 1]
    (``value_range``: divided by the container's or the used bits' top value, ``_to_float``)."""

    def __init__(self, root: str | os.PathLike, size: int | tuple[int, int] | None = None,
                 mode: Mode = "crop", channels: int = 3,
                 on_error: Literal["raise", "skip"] = "raise", preload: bool = False,
                 value_range: ValueRange = "container",
                 scale: tuple[float, float] | None = None) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if value_range not in ("container", "used"):
            raise ConfigError(f"value_range must be 'container' or 'used', got {value_range!r}")
        self.value_range, self.scale = value_range, check_scale(scale)
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root, self.files = Path(root), list_images(root)
        self.size, self.mode = check_fit(size, mode), mode
        self.channels, self.on_error = channels, on_error
        self._bad: set[int] = set()  # indices that failed (and were warned about) here
        self._cache: list[np.ndarray | None] | None = None
        if preload:  # integer pixels: a quarter of the memory of float32
            self._cache = [self._pixels(i) for i in range(len(self.files))]

    def __len__(self) -> int:
        return len(self.files)

    def _pixels(self, index: int) -> np.ndarray | None:
        """(H, W, C) integer pixels of image ``index``, or None if it is bad and skipped."""
        if self._cache is not None:
            return self._cache[index]
        if index in self._bad:
            return None
        try:
            return _decode(self.files[index], self.channels)
        except DataError as e:
            if self.on_error == "raise":
                raise
            self._bad.add(index)
            warnings.warn(f"skipped (on_error='skip'): {e}", stacklevel=3)
            return None

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key, len(self))
        for step in range(len(self)):  # a bad image is replaced by the next good one
            pixels = self._pixels((index + step) % len(self))
            if pixels is not None:
                return to_image_tensor(pixels, self.size, self.mode, seed, self.value_range,
                                       self.scale)
        raise DataError(f"none of the {len(self)} images under '{self.root}' can be read")

    def validate(self) -> list[Path]:
        """Decode every file; return those that cannot be read."""
        bad = []
        for path in self.files:
            try:
                _decode(path, self.channels)
            except DataError:
                bad.append(path)
        return bad


class FloatImages(torch.utils.data.Dataset):
    """Float images held in memory, e.g. noisy data that strays outside [0, 1] (not clipped).

    ``images``: (H, W) or (H, W, C) arrays; items are (C, H, W) float32 tensors, cut to
    ``size`` like ``ImageFolder`` (a key ``(index, seed)`` places a random crop).
    """

    def __init__(self, images: list[np.ndarray], size: int | tuple[int, int] | None = None,
                 mode: Mode = "crop") -> None:
        self.images = []
        for i, image in enumerate(images):
            a = np.asarray(image, dtype=np.float32)
            a = a[..., None] if a.ndim == 2 else a
            if a.ndim != 3 or a.shape[-1] not in (1, 3):
                raise DataError(f"image {i}: expected (H, W) or (H, W, C) with C = 1 or 3, got "
                                f"shape {np.shape(image)}")
            self.images.append(np.ascontiguousarray(a.transpose(2, 0, 1)))
        self.size, self.mode = check_fit(size, mode), mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key, len(self))
        image = fit_to_size(self.images[index], self.size, self.mode, seed)
        return torch.from_numpy(np.ascontiguousarray(image))
