"""Medical images in and out: DICOM (files, multi-frame files, series folders), NIfTI and gray
16/8-bit PNG/TIFF, as the stored integers of their 2-D slices plus what writes them back.

The codec codes ``Volume.values``, the (S, H, W) integers as stored (never rescaled or
windowed), as ``Volume.unsigned()`` = values - offset in ``bits`` bits; ``meta`` (bytes, so that
the codec can keep it inside its files) holds the headers that ``write_volume`` needs to write
the same format back. The formats live in ``clearvae.data.dicom`` and ``clearvae.data.nifti``;
PNG/TIFF go through the one image layer, ``clearvae.data.images``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from clearvae.data import dicom, images, nifti
from clearvae.errors import ConfigError, DataError

Kind = Literal["dicom", "nifti", "image"]
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")  # gray 8/16-bit images the medical path takes
MAX_BITS = 16  # the codec codes up to 16 bits per pixel


@dataclass(frozen=True, eq=False)
class Volume:
    """The stored integers of a medical image's slices and the headers to write it back."""

    kind: Kind  # "image": a gray 8/16-bit PNG or TIFF
    values: np.ndarray  # (S, H, W) the stored integers, dtype as stored (uint8, int16, ...)
    bits: int  # bits used by values - offset: max(1, (max - offset).bit_length())
    offset: int  # 0 for non-negative data, else values.min(), so that values - offset >= 0
    meta: bytes  # what writes the format back (see the format modules); b"" for "image"
    stored_bits: int  # container bits: DICOM BitsStored, the NIfTI dtype's bits, PNG 8/16

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise ConfigError(f"kind must be one of {get_args(Kind)}, got {self.kind!r}")
        if self.values.ndim != 3 or self.values.dtype.kind not in "iu" or not self.values.size:
            raise DataError(f"a volume's values must be non-empty (S, H, W) integers, got "
                            f"{self.values.dtype} of shape {self.values.shape}")

    def unsigned(self) -> np.ndarray:
        """(S, H, W) uint16 values - offset, the integers the codec codes."""
        if self.bits > MAX_BITS:
            raise DataError(f"this {self.kind} volume uses {self.bits} bits after its offset "
                            f"{self.offset}; the codec codes up to {MAX_BITS}")
        return (self.values.astype(np.int64) - self.offset).astype(np.uint16)


@dataclass(frozen=True)
class Lossy:
    """A lossy compression step to record in a DICOM output (PS3.3 C.7.6.1.1.5)."""

    ratio: float  # approximate compression ratio, e.g. 12.5 for 12.5:1
    method: str = "CLEARVAE"  # Lossy Image Compression Method: a DICOM code string

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and np.isfinite(self.ratio)
                and self.ratio > 0):
            raise ConfigError(f"ratio must be a positive number, got {self.ratio!r}")
        if not (isinstance(self.method, str) and re.fullmatch(r"[A-Z0-9_ ]{1,16}", self.method)):
            raise ConfigError("method must be 1 to 16 capitals, digits, spaces or underscores "
                              f"(a DICOM code string), got {self.method!r}")


def is_medical(path: str | os.PathLike) -> bool:
    """True for a folder holding DICOM files, a DICOM file (.dcm or the DICM preamble, any
    extension) or a .nii / .nii.gz file."""
    path = Path(path)
    if path.is_dir():
        try:
            return any(p.name.upper() != "DICOMDIR" and dicom.is_dicom_file(p)
                       for p in path.iterdir() if not p.name.startswith("."))
        except OSError:
            return False
    return path.is_file() and (nifti.is_nifti(path) or dicom.is_dicom_file(path))


def is_gray_volume(path: str | os.PathLike) -> bool:
    """Whether a file or folder takes the medical path (the gray 12/16-bit codec, the MRI
    denoiser): DICOM, NIfTI, or a 16-bit PNG / TIFF (8-bit images are photos)."""
    path = Path(path)
    if is_medical(path):
        return True
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        try:
            return images.read_image_bit_depth(path) == 16
        except DataError:
            return False
    return False


def _kind(path: Path) -> Kind:
    """The kind of a path, from its type, name and first bytes."""
    if not path.exists():
        raise DataError(f"cannot read '{path}': no such file or folder")
    if path.is_dir():
        return "dicom"
    if nifti.is_nifti(path):
        return "nifti"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if dicom.is_dicom_file(path):
        return "dicom"
    raise DataError(f"cannot tell what '{path}' is: give a DICOM file or series folder, a "
                    f".nii / .nii.gz file, or a gray {' / '.join(IMAGE_SUFFIXES)} image")


def _range(values: np.ndarray) -> tuple[int, int]:
    """(bits, offset) of stored values: offset = min if negative, bits of max - offset."""
    low, high = int(values.min()), int(values.max())
    offset = min(low, 0)
    return max(1, (high - offset).bit_length()), offset


def read_volume(path: str | os.PathLike, max_pixels: int = images.MAX_PIXELS) -> Volume:
    """Read a medical image as the stored integers of its slices.

    DICOM: a file (S = NumberOfFrames) or a folder holding one series (its own files, not
    subfolders), sorted as ``clearvae.data.dicom`` describes. NIfTI: slice s = t * Z + z is
    ``data[:, :, z, t]``, (H, W) = the first two array axes. PNG/TIFF: one gray slice. Sizes are
    checked against ``max_pixels`` from the headers, before any pixel data is decoded.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "dicom":
        values, meta, stored_bits = dicom.read(path, max_pixels)
    elif kind == "nifti":
        values, meta, stored_bits = nifti.read(path, max_pixels)
    else:
        pixels = images.read_pixels(path, max_pixels)  # (H, W, C) uint8 / uint16
        if pixels.shape[-1] != 1:
            raise DataError(f"cannot read '{path}': it is a colour image; the medical path codes "
                            "gray images: convert it to a gray (8- or 16-bit) PNG first")
        values, meta, stored_bits = pixels[None, :, :, 0], b"", pixels.dtype.itemsize * 8
    if not values.size:
        raise DataError(f"cannot read '{path}': it holds no pixels")
    bits, offset = _range(values)
    if bits > MAX_BITS:
        raise DataError(f"cannot read '{path}': its values {values.min()}..{values.max()} need "
                        f"{bits} bits after the offset {offset}; the codec codes up to {MAX_BITS}")
    return Volume(kind, values, bits, offset, meta, stored_bits)


def volume_from_meta(kind: Kind, meta: bytes, values: np.ndarray, offset: int, bits: int,
                     stored_bits: int | None = None) -> Volume:
    """Rebuild a Volume from (untrusted) meta bytes and decoded values, checking they agree
    (``stored_bits`` None: as the headers say)."""
    values = np.asarray(values)
    if kind == "dicom":
        expected = dicom.check(meta, values.shape, values.dtype)
    elif kind == "nifti":
        expected = nifti.check(meta, values.shape, values.dtype)
    elif kind == "image":
        if meta or values.ndim != 3 or values.shape[0] != 1 or values.dtype not in (np.uint8,
                                                                                    np.uint16):
            raise DataError("an image volume has no meta and one uint8 or uint16 slice, got "
                            f"{len(meta)} meta bytes and {values.dtype} of shape {values.shape}")
        expected = values.dtype.itemsize * 8
    else:
        raise DataError(f"unknown volume kind {kind!r}: expected one of {get_args(Kind)}")
    stored_bits = expected if stored_bits is None else stored_bits
    if (stored_bits != expected or not isinstance(offset, (int, np.integer))
            or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS):
        raise DataError(f"the volume's stored_bits {stored_bits}, bits {bits} or offset {offset} "
                        f"disagree with its headers ({expected} stored bits); the file is corrupt")
    return Volume(kind, values, int(bits), int(offset), meta, stored_bits)


def write_volume(path: str | os.PathLike, volume: Volume, values: np.ndarray,
                 lossy: Lossy | None = None, derived: str | None = None) -> list[Path]:
    """Write (S, H, W) ``values`` (in the volume's stored dtype, e.g. a decoder's output) in the
    volume's format, every file atomically; returns the files written.

    DICOM: the original headers, new SOPInstanceUIDs, uncompressed Explicit VR Little Endian;
    ``lossy`` records a lossy step (LossyImageCompression "01", ratio, method, Image Type
    DERIVED); ``derived`` (a description) marks denoised or otherwise derived values: a new
    Series Instance UID, Image Type DERIVED, the description in Derivation Description. One
    file at ``path`` for a file input; a new folder of IM00001.dcm, ... for a series. NIfTI:
    the same header bytes (affine, scaling, description) and raw values. Image: an 8/16-bit
    gray PNG or TIFF. NIfTI and images have no standard place for ``lossy`` or ``derived``:
    they are not recorded there.
    """
    path, values = Path(path), np.asarray(values)
    if values.shape != volume.values.shape or values.dtype.kind not in "iu":
        raise DataError(f"cannot write '{path}': expected integers of shape "
                        f"{volume.values.shape}, got {values.dtype} of shape {values.shape}")
    if volume.kind == "dicom":
        return dicom.write(path, volume.meta, values, lossy, derived)
    if volume.kind == "nifti":
        return nifti.write(path, volume.meta, values)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"cannot write '{path}': a gray image goes to "
                        f"{' / '.join(IMAGE_SUFFIXES)}")
    dtype = np.uint16 if volume.stored_bits > 8 else np.uint8
    if int(values.min()) < 0 or int(values.max()) > np.iinfo(dtype).max:
        raise DataError(f"cannot write '{path}': values {values.min()}..{values.max()} do not "
                        f"fit {volume.stored_bits} bits; clip them first")
    images.write_pixels(path, values[0].astype(dtype))
    return [path]


MEDICAL_FILES = (".dcm", ".nii", ".nii.gz")


def holds_medical(path: str | os.PathLike) -> bool:
    """Whether a dataset folder is medical: DICOM files in it, or .dcm / .nii(.gz) files
    anywhere below it."""
    path = Path(path).expanduser()
    return path.is_dir() and (is_medical(path) or any(
        p.name.lower().endswith(MEDICAL_FILES) for p in path.rglob("*")))


class MedicalSlices:
    """The 2-D slices of every DICOM file and NIfTI volume under a folder (recursively), as a
    training dataset of (1, H, W) float32 tensors in [0, 1]: each volume's unsigned values
    divided by 2**bits - 1 for the bits it uses (as the gray codec sees them). Slices are
    read once and kept as integers; keys are ``index`` (centre crop) or ``(index, seed)``.
    ``context`` k > 0 gives (2k + 1, H, W) stacks instead: the slice between its k neighbours
    on each side in its volume (repeated at the volume's ends), for 2.5-D denoisers."""

    def __init__(self, root: str | os.PathLike, size: tuple[int, int] | None = None,
                 mode: str = "crop", max_pixels: int = images.MAX_PIXELS,
                 context: int = 0) -> None:
        self.root = Path(root)
        files = sorted(p for p in self.root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
                       and (p.name.lower().endswith(MEDICAL_FILES) or dicom.is_dicom_file(p)))
        if not files:
            raise DataError(f"no DICOM or NIfTI files under '{root}'")
        self.size, self.mode, self.context = images.check_fit(size, mode), mode, context
        self.volumes: list[tuple[np.ndarray, int]] = []  # (S, H, W) uint16, bits
        self.slices: list[tuple[int, int]] = []  # (volume, slice)
        total = 0
        for path in files:
            volume = read_volume(path, max_pixels)
            total += volume.values.size
            if total > max_pixels:
                raise DataError(f"the volumes under '{root}' hold more than {max_pixels} pixels; "
                                "train on a smaller selection")
            self.slices += [(len(self.volumes), i) for i in range(volume.values.shape[0])]
            self.volumes.append((volume.unsigned(), volume.bits))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: int | tuple[int, int]):
        import torch

        index, seed = images.split_key(key, len(self))
        v, i = self.slices[index]
        values, bits = self.volumes[v]
        around = np.clip(np.arange(i - self.context, i + self.context + 1), 0, len(values) - 1)
        x = values[around].astype(np.float32) / float(2**bits - 1)  # (2k + 1, H, W)
        x = images.fit_to_size(x, self.size, self.mode, seed)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
