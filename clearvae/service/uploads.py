"""Uploaded files: the private folder of a job, and images and ``.cvae`` files checked from
their headers before anything decodes them.

Uploads never use the client's file name: each is written as its form field's name (``image``,
``mask``, ``file``, ...) in a private temporary folder (mode 0700) that is removed when the
job is over, and the suffix comes from what the bytes are. Images are checked with the image
layer (``clearvae.data.images.opened``) from their header, so a PNG whose header claims
100000 x 100000 pixels is refused without allocating them; ``.cvae`` files by their header
(``clearvae.codec.container``) likewise.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clearvae.codec import container, volume_container
from clearvae.data.images import opened
from clearvae.errors import DataError
from clearvae.service.errors import ServiceError

SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
ANY_SIZE = container.MAX_SIDE**2  # headers are read with this limit, then held to ours


class Workdir:
    """A private temporary folder for one job's inputs and outputs: removed when the ``with``
    block ends, unless a job took it over (``keep``; the job queue removes it then)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="clearvae-service-"))  # mode 0700
        self.kept = False

    def keep(self) -> None:
        self.kept = True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.kept:
            self.remove()


@dataclass(frozen=True)
class Checked:
    """An uploaded file written to the job's folder, with what its header says."""

    path: Path
    width: int
    height: int


def save_image(folder: Path, field: str, data: bytes, max_pixels: int) -> Checked:
    """Write an uploaded image as ``folder/field.<its format's suffix>``, after checking
    from its header that it is a PNG, JPEG, BMP, TIFF or WebP of at most ``max_pixels``
    pixels (413) that Pillow can read (415)."""
    if not data:
        raise ServiceError(400, f"'{field}' is empty: upload an image file")
    raw = folder / field
    raw.write_bytes(data)
    try:
        with opened(raw, max_pixels) as im:
            kind, width, height = im.format, im.width, im.height
    except DataError as exc:
        # ``opened`` raises the pixel limit itself (no cause); Pillow's own bomb check (far
        # larger headers) comes as the cause. Anything else: Pillow cannot read the file.
        if exc.__cause__ is None or isinstance(exc.__cause__, Image.DecompressionBombError):
            raise ServiceError(413, f"'{field}' claims more pixels than this server's limit "
                               f"of {max_pixels} (read from its header; nothing was decoded): "
                               "send a smaller image", {"limit_pixels": max_pixels}) from None
        raise ServiceError(415, f"'{field}' is not an image this server can read: send a "
                           f"{_formats()} file") from None
    if kind not in SUFFIXES:
        raise ServiceError(415, f"'{field}' is a {kind} image: send a {_formats()} file")
    path = raw.rename(raw.with_suffix(SUFFIXES[kind]))
    return Checked(path, width, height)


def save_cvae(folder: Path, field: str, data: bytes, max_pixels: int) -> tuple[Path, bytes]:
    """Write an uploaded ``.cvae`` file as ``folder/field.cvae`` after checking its header,
    stream table and checksum (400 when damaged or not one; 413 when it claims more than
    ``max_pixels`` pixels; 415 for volumes that decode to DICOM or NIfTI, which this server
    does not write). Returns the path and the id of the model that coded it."""
    try:
        if volume_container.is_volume(data):
            header, _, _ = volume_container.unpack_volume(data, field, ANY_SIZE)
            pixels = header.slices * header.height * header.width
            if header.kind != "image" or header.slices != 1:
                raise ServiceError(415, f"'{field}' holds a {header.kind} volume of "
                                   f"{header.slices} slices: this server decodes images; "
                                   "decode it with `clearvae decompress`")
        else:
            header, _, _ = container.unpack(data, field, ANY_SIZE)
            pixels = header.height * header.width
    except DataError as exc:
        raise ServiceError(400, str(exc)) from None
    if pixels > max_pixels:
        raise ServiceError(413, f"'{field}' decodes to {pixels} pixels, more than this server's "
                           f"limit of {max_pixels}", {"limit_pixels": max_pixels})
    path = folder / f"{field}.cvae"
    path.write_bytes(data)
    return path, header.model_id


def _formats() -> str:
    names = [k if k != "WEBP" else "WebP" for k in SUFFIXES]
    return ", ".join(names[:-1]) + " or " + names[-1]
