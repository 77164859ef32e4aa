"""The ``.cvae`` file, format 3: a gray volume (a DICOM series or file, a NIfTI volume or a
16-bit image), its slices coded one by one behind a shared header.

Layout (all integers little-endian; format 2, single images, is ``codec.container``)::

    offset  size  field
    0       4     magic b"CVAE"
    4       1     format version (3)
    5       1     source kind: 0 gray image (PNG/TIFF), 1 DICOM, 2 NIfTI
    6       1     bits of the coded values (1..16): values - offset lie in 0 .. 2**bits - 1
    7       1     mode: 0 lossy, 1 bounded error (every value within ±max_error; 0: lossless)
    8       2     max_error (0 unless mode 1)
    10      1     effort (0..3; informational)
    11      1     stored dtype: 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32
    12      8     model id
    20      4     offset (int32): stored value = coded value + offset
    24      4     slices
    28      4     slice height
    32      4     slice width
    36      2     block size (as format 2: 0 or a multiple of 64 below the longer side)
    38      4     byte length of the metadata that follows (zlib; the source's header)
    42      m     metadata
    ...     4*S   byte length of each slice's record, so one slice is found without the others
    ...           the slice records: quality steps (2 bytes; in mode 1, 0: no lossy layer);
                  in mode 1 the residual coder's parameters (a varint length, then them:
                  ``residual``); the byte lengths as LEB128 varints of each block's streams
                  (z, z escapes, y, y escapes; none without a lossy layer) and in mode 1 of
                  the residual's (residual, escapes); the streams
    end-4   4     CRC-32 of every byte before it
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from clearvae.codec.container import (
    BLOCK_MULTIPLE,
    MAGIC,
    MAX_EFFORT,
    MAX_PIXELS,
    MAX_SIDE,
    QUALITY_STEPS,
    Header,
    TileStreams,
)
from clearvae.errors import DataError

VOLUME_VERSION = 3
KINDS = ("image", "dicom", "nifti")
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32")
MAX_SLICES = 1 << 20
MAX_META = 1 << 26  # 64 MiB of header data, compressed or not: far above any real series
_VOL = struct.Struct("<4sBBBBHBB8siIIIHI")


@dataclass(frozen=True)
class VolumeHeader:
    kind: str  # one of KINDS
    bits: int
    max_error: int | None  # None: lossy; 0: lossless; K: every value within ±K
    effort: int
    dtype: str  # one of DTYPES
    model_id: bytes
    offset: int
    slices: int
    height: int
    width: int
    tile: int  # 0: one block per slice

    def key(self, meta: bytes) -> bytes:
        """What the check symbols derive from: the header fields and the metadata."""
        return _volume_fields(self, len(meta)) + hashlib.sha256(meta).digest()

    def tile_count(self) -> int:
        return Header(1, QUALITY_STEPS, self.model_id, self.height, self.width,
                      self.tile).tile_count()


MAX_PARAMS = 1024  # bytes of residual-coder parameters a slice may carry


@dataclass(frozen=True)
class SliceRecord:
    quality_steps: int  # 0: no lossy layer (bounded error only)
    blocks: list[TileStreams]  # the lossy code, block by block
    residual: tuple[bytes, bytes] | None = None  # bounded error: the residual and its escapes
    params: bytes = b""  # bounded error: the residual coder's parameters

    def streams(self) -> list[bytes]:
        out = [part for block in self.blocks for part in block.parts()]
        return out + list(self.residual or ())


def _volume_fields(h: VolumeHeader, meta_length: int) -> bytes:
    mode, k = (0, 0) if h.max_error is None else (1, h.max_error)
    return _VOL.pack(MAGIC, VOLUME_VERSION, KINDS.index(h.kind), h.bits, mode, k, h.effort,
                     DTYPES.index(h.dtype), h.model_id, h.offset, h.slices, h.height, h.width,
                     h.tile, meta_length)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    n = shift = 0
    while pos < end and shift < 35:
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return n, pos
        shift += 7
    raise ValueError("bad length")


def pack_volume(header: VolumeHeader, meta: bytes, records: list[SliceRecord]) -> bytes:
    """The bytes of a format-3 ``.cvae`` file; ``meta`` as stored (already compressed)."""
    if len(records) != header.slices:
        raise ValueError(f"{len(records)} slices given, header says {header.slices}")
    out = bytearray(_volume_fields(header, len(meta)) + meta)
    bodies = []
    bounded = header.max_error is not None
    for r in records:
        blocks = header.tile_count() if r.quality_steps else 0
        if (r.residual is not None) != bounded or len(r.blocks) != blocks or (
                not bounded and r.params) or len(r.params) > MAX_PARAMS:
            raise ValueError("a slice record does not match the header's mode or blocks")
        streams = r.streams()
        body = struct.pack("<H", r.quality_steps)
        if bounded:
            body += _varint(len(r.params)) + r.params
        body += b"".join(_varint(len(s)) for s in streams) + b"".join(streams)
        bodies.append(body)
    out += b"".join(struct.pack("<I", len(b)) for b in bodies)
    out += b"".join(bodies)
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def is_volume(data: bytes) -> bool:
    """Whether ``data`` starts like a format-3 (gray volume) file."""
    return data[:4] == MAGIC and len(data) > 4 and data[4] == VOLUME_VERSION


def read_volume_header(data: bytes, name: str = "input", max_pixels: int = MAX_PIXELS,
                       ) -> tuple[VolumeHeader, bytes, int]:
    """The checked header of a format-3 file, its stored metadata, and where the slice
    table starts. Sizes are checked against ``max_pixels`` (all slices together) first."""
    if len(data) < _VOL.size + 4:
        raise DataError(f"'{name}' is truncated ({len(data)} bytes)")
    (magic, version, kind, bits, mode, k, effort, dtype, model_id, offset, slices, h, w, tile,
     meta_length) = _VOL.unpack_from(data)
    if magic != MAGIC or version != VOLUME_VERSION:
        raise DataError(f"'{name}' is not a clearvae gray-volume file (.cvae format 3)")
    problems = []
    if kind >= len(KINDS):
        problems.append(f"source kind {kind}")
    if not 1 <= bits <= 16:
        problems.append(f"{bits} bits")
    if mode > 1 or (mode == 0 and k) or (mode == 1 and bits <= 16 and k >= 1 << bits):
        problems.append(f"mode {mode} with max error {k}")
    if effort > MAX_EFFORT:
        problems.append(f"effort {effort}")
    if dtype >= len(DTYPES):
        problems.append(f"dtype code {dtype}")
    if not 1 <= slices <= MAX_SLICES:
        problems.append(f"{slices} slices")
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        problems.append(f"slice size {w}x{h}")
    elif tile and (tile % BLOCK_MULTIPLE or tile >= max(h, w)):
        problems.append(f"block size {tile}")
    if meta_length > MAX_META:
        problems.append(f"{meta_length} bytes of metadata")
    if problems:
        raise DataError(f"'{name}' has an invalid header: {', '.join(problems)}")
    if slices * h * w > max_pixels:
        raise DataError(f"'{name}' claims {slices} slices of {w}x{h} ({slices * h * w} "
                        f"pixels), more than the limit of {max_pixels} pixels: refused before "
                        "decoding (raise max_pixels only for a file you trust)")
    header = VolumeHeader(KINDS[kind], bits, k if mode else None, effort, DTYPES[dtype],
                          model_id, offset, slices, h, w, tile)
    end = _VOL.size + meta_length
    if end + 4 * slices + 4 > len(data):
        raise DataError(f"'{name}' is truncated (metadata or slice table)")
    return header, data[_VOL.size : end], end


def unpack_volume(data: bytes, name: str = "input", max_pixels: int = MAX_PIXELS,
                  which: list[int] | None = None,
                  ) -> tuple[VolumeHeader, bytes, dict[int, SliceRecord]]:
    """Parse and check a format-3 file: header, stored metadata, and the records of the
    slices ``which`` (default all). Any inconsistency is a DataError naming ``name``."""
    header, meta, pos = read_volume_header(data, name, max_pixels)
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise DataError(f"'{name}' is corrupt or truncated (checksum mismatch)")
    lengths = struct.unpack_from(f"<{header.slices}I", data, pos)
    pos += 4 * header.slices
    if pos + sum(lengths) != len(data) - 4:
        raise DataError(f"'{name}' is corrupt: slice lengths do not add up to the file size")
    starts = [pos + sum(lengths[:i]) for i in range(header.slices)]
    wanted = range(header.slices) if which is None else which
    records = {}
    bounded = header.max_error is not None
    for i in wanted:
        if not 0 <= i < header.slices:
            raise DataError(f"'{name}' has {header.slices} slices: there is no slice {i}")
        start, end = starts[i], starts[i] + lengths[i]
        try:
            if end - start < 2:
                raise ValueError("short record")
            (steps,) = struct.unpack_from("<H", data, start)
            p, params = start + 2, b""
            if bounded:
                size, p = _read_varint(data, p, end)
                if size > MAX_PARAMS or p + size > end:
                    raise ValueError("parameters")
                params, p = data[p : p + size], p + size
            n = header.tile_count() if steps else 0
            sizes = []
            for _ in range(4 * n + 2 * bounded):
                size, p = _read_varint(data, p, end)
                sizes.append(size)
            if p + sum(sizes) != end:
                raise ValueError("stream lengths")
        except ValueError:
            raise DataError(f"'{name}' is corrupt: slice {i}'s record is damaged") from None
        if steps < QUALITY_STEPS and (steps or not bounded):
            raise DataError(f"'{name}' is corrupt: slice {i} has quality {steps / 16}")
        streams = []
        for size in sizes:
            streams.append(data[p : p + size])
            p += size
        blocks = [TileStreams(*streams[4 * b : 4 * b + 4]) for b in range(n)]
        residual = (streams[-2], streams[-1]) if bounded else None
        records[i] = SliceRecord(steps, blocks, residual, params)
    return header, meta, records


def volume_overhead(meta_length: int, slices: int, tiles: int) -> int:
    """Most bytes a format-3 file spends besides its streams (lengths < 2 MiB each)."""
    return _VOL.size + meta_length + 4 + slices * (4 + 2 + 3 * (4 * tiles + 2))


def compress_meta(meta: bytes) -> bytes:
    """The source's header as stored in a format-3 file."""
    if len(meta) > MAX_META:
        raise DataError(f"the source's header data is {len(meta)} bytes, more than the "
                        f"{MAX_META} a .cvae file holds")
    return zlib.compress(meta, 9) if meta else b""


def decompress_meta(stored: bytes, name: str = "input") -> bytes:
    """Inverse of ``compress_meta``, bounded: a zip bomb is refused, not inflated."""
    if not stored:
        return b""
    inflate = zlib.decompressobj()
    try:
        meta = inflate.decompress(stored, MAX_META)
    except zlib.error:
        raise DataError(f"'{name}' is corrupt: its metadata does not inflate") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise DataError(f"'{name}' is corrupt: its metadata is damaged or larger than "
                        f"{MAX_META} bytes")
    return meta
