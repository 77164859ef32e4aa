"""Compressing image files to ``.cvae`` files and back (the task behind the CLI).

Outputs are written atomically, and only at the end: an error or an interrupted encode leaves
no partial file and replaces nothing. A decoded PNG is marked as clearvae's (a PNG text
chunk), so that ``--force`` may replace an earlier decode but never the original photo that a
``.cvae`` file sits beside.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clearvae.codec import container, signing, volume_container
from clearvae.codec.codec import Codec, Progress
from clearvae.codec.gray import GrayVolume, compress_gray, decompress_gray
from clearvae.data import dicom, medical, read_image_bit_depth, write_image
from clearvae.data.images import opened, write_pixels
from clearvae.data.medical import is_gray_volume
from clearvae.errors import DataError
from clearvae.files import atomic_write

SUFFIX = ".cvae"
DECODED_BY = "clearvae decompress"  # the PNG text chunk "Software" of every decoded image


@dataclass(frozen=True)
class Settings:
    """How to code: a quality, or one target that chooses it; the effort; the block size."""

    quality: float | None = None  # None: 4 (lossy), or the smallest file (max_error)
    effort: int = 0
    tile: int = 0
    target_bpp: float | None = None
    max_bytes: int | None = None
    target_psnr: float | None = None
    max_error: int | None = None  # gray 12/16-bit images: every value within ±K (0: lossless)

    def describe(self) -> str:
        """Which of quality / target decided, for messages."""
        for key in ("target_bpp", "max_bytes", "target_psnr", "max_error"):
            if getattr(self, key) is not None:
                return f"{key.replace('_', '-')} {getattr(self, key)}"
        return f"quality {4 if self.quality is None else self.quality:g}"


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


def target_for(source: Path, suffix: str = SUFFIX) -> Path:
    """``source`` with its image suffix replaced (``x.nii.gz`` -> ``x.cvae``; a series folder
    ``scans/t1/`` -> ``scans/t1.cvae``)."""
    name = source.name
    for ending in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(ending):
            return source.with_name(name[: -len(ending)] + suffix)
    return source.with_suffix(suffix) if source.suffix and not source.is_dir() else \
        source.with_name(name + suffix)


def compress_file(codec: Codec, source: str | os.PathLike, target: str | os.PathLike | None = None,
                  settings: Settings = Settings(), drop_alpha: bool = False,
                  overwrite: bool = False, progress: Progress | None = None,
                  max_pixels: int = container.MAX_PIXELS, key: bytes | None = None) -> Result:
    """Compress one image file (or DICOM series folder); the ``.cvae`` file is written
    atomically, at the end. Gray 12/16-bit sources (``is_gray_volume``) need a gray codec.
    ``key``: seal the file with it (``codec.signing``; ``max_bytes`` counts the seal)."""
    source = Path(source)
    target = Path(target) if target else target_for(source)
    _check_target(source, target, overwrite)
    settings = _room_for_seal(settings, key)
    if is_gray_volume(source):
        return _compress_volume(codec, source, target, settings, progress, max_pixels, key)
    if settings.max_error is not None:
        raise DataError(f"'{source}' is an 8-bit image: --max-error and --lossless are for "
                        "12/16-bit gray images (DICOM, NIfTI, 16-bit PNG / TIFF)")
    image = read_for_codec(source, drop_alpha)
    quality = 4 if settings.quality is None else settings.quality
    data = codec.compress(image, quality=quality, tile=settings.tile,
                          effort=settings.effort, target_bpp=settings.target_bpp,
                          max_bytes=settings.max_bytes, target_psnr=settings.target_psnr,
                          progress=progress)
    written = _write(target, data, key)
    header = container.read_header(data, str(target))
    return Result(source, target, written, image.shape[0] * image.shape[1], header.quality,
                  header.effort)


def _room_for_seal(settings: Settings, key: bytes | None) -> Settings:
    """``settings`` with ``max_bytes`` lowered by what the seal of ``key`` adds."""
    if key is None or settings.max_bytes is None:
        return settings
    if settings.max_bytes <= signing.OVERHEAD:
        raise DataError(f"--max-bytes {settings.max_bytes} leaves no room: the seal alone is "
                        f"{signing.OVERHEAD} bytes")
    return dataclasses.replace(settings, max_bytes=settings.max_bytes - signing.OVERHEAD)


def _compress_volume(codec: Codec, source: Path, target: Path, settings: Settings,
                     progress: Progress | None, max_pixels: int, key: bytes | None) -> Result:
    """The gray 12/16-bit path: the volume's stored integers, coded with its metadata."""
    volume = medical.read_volume(source, max_pixels)
    gray = GrayVolume(volume.unsigned(), volume.bits, volume.kind, str(volume.values.dtype),
                      volume.offset, volume.meta)
    data = compress_gray(codec, gray, settings.quality, settings.effort, settings.tile,
                         max_error=settings.max_error, target_bpp=settings.target_bpp,
                         max_bytes=settings.max_bytes, target_psnr=settings.target_psnr,
                         refine_progress=progress)
    written = _write(target, data, key)
    _, _, records = volume_container.unpack_volume(data, str(target))
    steps = [r.quality_steps for r in records.values()]
    return Result(source, target, written, volume.values.size,
                  float(np.mean(steps)) / container.QUALITY_STEPS, settings.effort)


def is_volume_file(data: bytes) -> bool:
    """Whether ``.cvae`` bytes (their first 32 suffice; sealed or not) hold a gray volume
    (format 3), for the gray codec."""
    if signing.is_sealed(data):
        data = data[signing.OVERHEAD - signing.TAG_BYTES :]
    return volume_container.is_volume(data)


def volume_target(source: Path, kind: str) -> Path:
    """The default output of a decoded volume: DICOM (a file, or a folder for a series),
    NIfTI (.nii.gz) or a PNG, beside the ``.cvae`` file."""
    return source.with_suffix({"dicom": ".dcm", "nifti": ".nii.gz"}.get(kind, ".png"))


def decompress_file(codec: Codec, source: str | os.PathLike,
                    target: str | os.PathLike | None = None, overwrite: bool = False,
                    max_pixels: int = container.MAX_PIXELS, key: bytes | None = None,
                    slices: list[int] | None = None) -> Result:
    """Decompress one ``.cvae`` file to an image (PNG unless ``target`` says otherwise), or a
    gray volume back to its format (DICOM, NIfTI, 16-bit PNG). A sealed file needs its
    ``key`` (and a ``key`` accepts only files sealed with it: ``codec.signing``). ``slices``
    (volumes only): decode just these slices, without the others, each to a gray PNG
    NAME_s0007.png (stored value minus the volume's offset, 8 or 16 bits) beside the file
    or in the folder ``target``."""
    source = Path(source)
    default = target is None
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read '{source}': {exc.strerror or exc}") from None
    data = signing.open_sealed(data, key, str(source))
    if slices is not None:
        return _decompress_slices(codec, source, data, None if default else Path(target),
                                  overwrite, max_pixels, slices)
    if volume_container.is_volume(data):
        return _decompress_volume(codec, source, data, None if default else Path(target),
                                  overwrite, max_pixels)
    target = source.with_suffix(".png") if default else Path(target)
    header, _, _ = container.unpack(data, str(source), max_pixels)  # a damaged file: say so first
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


def _decompress_volume(codec: Codec, source: Path, data: bytes, target: Path | None,
                       overwrite: bool, max_pixels: int) -> Result:
    header, stored_meta, _ = volume_container.read_volume_header(data, str(source), max_pixels)
    default = target is None
    target = volume_target(source, header.kind) if default else target
    series = header.kind == "dicom" and dicom.parse_meta(
        volume_container.decompress_meta(stored_meta, str(source)))[0]
    if series and default:
        target = source.with_suffix("")
    if default and target.exists():  # beside the .cvae file: maybe the original
        raise DataError(f"'{target}' exists (the original?): not replacing it, even with "
                        "--force; give the output name with -o")
    _check_target(source, target, overwrite)
    if series and target.exists():
        raise DataError(f"'{target}' exists: a series is written to a new folder; remove it or "
                        "give another with -o")
    gray, header = decompress_gray(codec, data, str(source), max_pixels)
    volume = medical.volume_from_meta(header.kind, gray.meta, gray.stored(), header.offset,
                                      header.bits)
    lossy = None
    if header.max_error != 0 and header.kind == "dicom":  # lossy or within ±K: say so
        raw = volume.values.size * volume.values.dtype.itemsize
        lossy = medical.Lossy(round(raw / len(data), 2))
    try:
        medical.write_volume(target, volume, volume.values, lossy)
    except OSError as exc:
        raise DataError(f"cannot write '{target}': {exc.strerror or exc}") from None
    steps = volume_container.unpack_volume(data, str(source), max_pixels)[2]
    quality = float(np.mean([r.quality_steps for r in steps.values()])) / 16
    return Result(source, target, len(data), volume.values.size, quality, header.effort)


def _decompress_slices(codec: Codec, source: Path, data: bytes, folder: Path | None,
                       overwrite: bool, max_pixels: int, slices: list[int]) -> Result:
    """Some slices of a volume file, each decoded alone, as gray PNGs."""
    if not volume_container.is_volume(data):
        raise DataError(f"'{source}' holds one image, not a volume: --slices is for volumes "
                        "(DICOM, NIfTI, 16-bit gray)")
    header, _, _ = volume_container.read_volume_header(data, str(source), max_pixels)
    bad = [i for i in slices if not 0 <= i < header.slices]
    if bad or not slices:
        raise DataError(f"'{source}' has slices 0..{header.slices - 1}; asked for "
                        f"{bad or 'none'}")
    folder = folder if folder is not None else source.parent
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--slices writes one PNG per slice: -o must be a folder, got "
                        f"'{folder}'")
    targets = {i: folder / f"{source.stem}_s{i:04d}.png" for i in sorted(set(slices))}
    for target in targets.values():
        _check_target(source, target, overwrite)
    gray, header = decompress_gray(codec, data, str(source), max_pixels, which=list(targets))
    dtype = np.uint8 if header.bits <= 8 else np.uint16
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for values, target in zip(gray.values, targets.values()):
            write_pixels(target, values.astype(dtype), software=DECODED_BY)
    except OSError as exc:
        raise DataError(f"cannot write to '{folder}': {exc.strerror or exc}") from None
    return Result(source, next(iter(targets.values())), len(data), gray.values.size, 0.0,
                  header.effort)


def _check_target(source: Path, target: Path, overwrite: bool) -> None:
    if target.resolve() == source.resolve():
        raise DataError(f"refusing to overwrite the input '{source}'")
    if target.exists() and not overwrite:
        raise DataError(f"'{target}' exists: remove it or pass --force")


def _write(target: Path, data: bytes, key: bytes | None = None) -> int:
    """Write a ``.cvae`` file atomically (sealed with ``key``); returns its size."""
    if key is not None:
        data = signing.seal(data, key)
    try:
        atomic_write(target, data)
        return len(data)
    except OSError as exc:
        raise DataError(f"cannot write '{target}': {exc.strerror or exc}; nothing was "
                        "written") from None


def _decoded_by_us(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.info.get("Software") == DECODED_BY
    except (OSError, ValueError):
        return False
