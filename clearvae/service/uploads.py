"""What comes in: the request body's size, the private folder of a job, and uploaded files
checked from their headers before anything decodes them.

Uploads never use the client's file name: each is written as its form field's name (``image``,
``mask``, ``file``, ...) in a private temporary folder (mode 0700) that is removed when the
job is over, and the suffix comes from what the bytes are. Images are checked with the image
layer (``clearvae.data.images.opened``) from their header, so a PNG whose header claims
100000 x 100000 pixels is refused without allocating them; ``.cvae`` files by their header
(``clearvae.codec.container``) likewise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clearvae.codec import container
from clearvae.data.images import opened
from clearvae.errors import DataError
from clearvae.service.errors import ServiceError

SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
ANY_SIZE = container.MAX_SIDE**2  # headers are read with this limit, then held to ours


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 JSON, from its
    Content-Length at once or while it streams in, before the app parses any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:  # the body, at most max_bytes of it, in memory
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only a disconnect can come

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_bytes
        body = json.dumps({"error": f"the request is larger than this server's limit of "
                           f"{limit / 2**20:g} MB: send a smaller file",
                           "detail": {"limit_bytes": limit}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Workdir:
    """A private temporary folder for one job's inputs and outputs."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="clearvae-service-"))  # mode 0700

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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


def save_cvae(folder: Path, field: str, data: bytes, max_pixels: int,
              ) -> tuple[Path, bytes, str]:
    """Write an uploaded ``.cvae`` file as ``folder/field.cvae`` after checking its header
    (400 when damaged or not one; 413 when it claims more than ``max_pixels`` pixels; 415 for
    volumes that decode to DICOM or NIfTI). Returns the path, the model id that coded it and
    what it decodes to: "image" (8-bit) or "gray" (a 16-bit PNG)."""
    try:
        if container.is_volume(data):
            header, _, _ = container.read_volume_header(data, field, ANY_SIZE)
            pixels, what = header.slices * header.height * header.width, "gray"
            if header.kind != "image" or header.slices != 1:
                raise ServiceError(415, f"'{field}' holds a {header.kind} volume of "
                                   f"{header.slices} slices: this server decodes images; "
                                   "decode it with `clearvae decompress`")
        else:
            header = container.read_header(data, field, ANY_SIZE)
            pixels, what = header.height * header.width, "image"
    except DataError as exc:
        raise ServiceError(400, str(exc)) from None
    if pixels > max_pixels:
        raise ServiceError(413, f"'{field}' decodes to {pixels} pixels, more than this server's "
                           f"limit of {max_pixels}", {"limit_pixels": max_pixels})
    path = folder / f"{field}.cvae"
    path.write_bytes(data)
    return path, header.model_id, what


def _formats() -> str:
    names = [k if k != "WEBP" else "WebP" for k in SUFFIXES]
    return ", ".join(names[:-1]) + " or " + names[-1]
