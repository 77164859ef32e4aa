"""The ``.cvae`` file: a small header, the coded streams of each tile, and a checksum.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"CVAE"
    4       1     format version (2)
    5       1     channels of the decoded image (1 = gray, 3 = RGB)
    6       2     quality in steps of 1/16: 16 q (q = 1.0 .. the model's highest quality)
    8       1     effort the encoder spent (0..3; informational, the decoder ignores it)
    9       1     flags: bit 0 = the file carries a flat-cell map (``flat``); other bits 0
    10      2     reserved, 0
    12      8     model id: the first 8 bytes of SHA-256 over the model's weights and tables
    20      4     image height
    24      4     image width
    28      2     block size in pixels, a multiple of 64 below the longer side (0: one block)
    30      4     number of blocks (row-major)
    34      16*n  per block: byte lengths of its 4 streams (z, z escapes, y, y escapes)
    [4]           with flag bit 0: byte length of the flat-cell map
    ...           the streams, block after block, then the flat-cell map
    end-4   4     CRC-32 of every byte before it

The decoder checks magic, version, every header field, the pixel count against a limit, the
stream lengths and the checksum before it allocates or decodes anything, so a truncated,
corrupted, foreign or absurd file is reported instead of decoded into garbage. The CRC catches
accidents (truncation, bit rot, a bad copy), not tampering: anyone can recompute it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from clearvae.errors import DataError

MAGIC = b"CVAE"
VERSION = 2
MAX_SIDE = 1 << 17  # 131072 pixels: far beyond any camera, small enough to refuse nonsense
MAX_PIXELS = 2**28  # default pixel limit of the decoder (as for input images): 16k x 16k
QUALITY_STEPS = 16  # the header stores the quality in steps of 1/16
MAX_EFFORT = 3
BLOCK_MULTIPLE = 64
_HEAD = struct.Struct("<4sBBHBB2s8sIIHI")
_LENGTH = struct.Struct("<I")
FLAT = 1  # flag bit: a flat-cell map follows the streams
_TILE = struct.Struct("<IIII")


@dataclass(frozen=True)
class Header:
    channels: int
    quality_steps: int  # quality in steps of 1/16 (16 = quality 1)
    model_id: bytes
    height: int
    width: int
    tile: int  # 0: untiled
    effort: int = 0
    flat: bool = False  # a flat-cell map follows the streams (``flat``)

    @property
    def quality(self) -> float:
        return self.quality_steps / QUALITY_STEPS

    def tile_count(self) -> int:
        if self.tile == 0:
            return 1
        return -(-self.height // self.tile) * -(-self.width // self.tile)


@dataclass(frozen=True)
class TileStreams:
    z: bytes
    z_escapes: bytes
    y: bytes
    y_escapes: bytes

    def parts(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.z, self.z_escapes, self.y, self.y_escapes


def header_key(header: Header) -> bytes:
    """The header's fields as bytes: what the check symbols of its streams derive from."""
    return _HEAD.pack(MAGIC, VERSION, header.channels, header.quality_steps, header.effort,
                      FLAT * header.flat, bytes(2), header.model_id, header.height,
                      header.width, header.tile, header.tile_count())


def block_check(key: bytes, block: int) -> bytes:
    """The 2 bytes that block ``block``'s streams end in: a hash of the header (``key``), so
    that a stream decoded under an edited header (even one whose checksum was recomputed)
    fails."""
    return hashlib.sha256(key + struct.pack("<I", block)).digest()[:2]


def check_bytes(header: Header, block: int) -> bytes:
    """``block_check`` of an image file's header."""
    return block_check(header_key(header), block)


def pack(header: Header, tiles: list[TileStreams], flat: bytes = b"") -> bytes:
    """The bytes of a ``.cvae`` file; ``flat`` is the flat-cell map (``header.flat`` says
    whether there is one)."""
    if len(tiles) != header.tile_count():
        raise ValueError(f"{len(tiles)} tiles given, header implies {header.tile_count()}")
    if header.flat != bool(flat):
        raise ValueError("header.flat must say whether a flat-cell map is given")
    out = bytearray(header_key(header))
    for t in tiles:
        out += _TILE.pack(*(len(p) for p in t.parts()))
    if flat:
        out += _LENGTH.pack(len(flat))
    for t in tiles:
        for part in t.parts():
            out += part
    out += flat
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def read_header(data: bytes, name: str = "input", max_pixels: int = MAX_PIXELS) -> Header:
    """The header of a ``.cvae`` file, checked field by field (no checksum, no streams)."""
    if len(data) < _HEAD.size + 4:
        if data[:4] != MAGIC[: len(data[:4])]:
            raise DataError(f"'{name}' is not a clearvae compressed file (.cvae)")
        raise DataError(f"'{name}' is truncated ({len(data)} bytes)")
    (magic, version, channels, quality, effort, flags, reserved, model_id, h, w, tile,
     n) = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DataError(f"'{name}' is not a clearvae compressed file (.cvae)")
    if version > VERSION:
        raise DataError(f"'{name}' uses .cvae format {version}; this clearvae reads format "
                        f"{VERSION}: upgrade clearvae")
    if version < VERSION:
        raise DataError(f"'{name}' uses .cvae format {version}, written by an earlier "
                        f"development version of clearvae; this one reads format {VERSION}")
    header = Header(channels, quality, model_id, h, w, tile, effort, bool(flags & FLAT))
    problems = []
    if channels not in (1, 3):
        problems.append(f"{channels} channels")
    if quality < QUALITY_STEPS:
        problems.append(f"quality {quality / QUALITY_STEPS}")
    if effort > MAX_EFFORT:
        problems.append(f"effort {effort}")
    if flags & ~FLAT or reserved != bytes(2):
        problems.append("reserved bits set")
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        problems.append(f"size {w}x{h}")
    elif tile and (tile % BLOCK_MULTIPLE or tile >= max(h, w)):
        problems.append(f"block size {tile} (must be 0 or a multiple of {BLOCK_MULTIPLE} "
                        f"below {max(h, w)})")
    elif n != header.tile_count():
        problems.append(f"{n} blocks where {w}x{h} in blocks of {tile} makes "
                        f"{header.tile_count()}")
    if problems:
        raise DataError(f"'{name}' has an invalid header: {', '.join(problems)}")
    if h * w > max_pixels:
        raise DataError(f"'{name}' claims a {w}x{h} image ({h * w} pixels), more than the "
                        f"limit of {max_pixels} pixels: refused before decoding (raise "
                        "max_pixels only for a file you trust)")
    return header


def unpack(data: bytes, name: str = "input",
           max_pixels: int = MAX_PIXELS) -> tuple[Header, list[TileStreams], bytes]:
    """Parse and check a ``.cvae`` file: its header, the streams of each block and the
    flat-cell map (b"" when there is none); any inconsistency is a DataError naming
    ``name``."""
    header = read_header(data, name, max_pixels)
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise DataError(f"'{name}' is corrupt or truncated (checksum mismatch)")
    n = header.tile_count()
    pos = _HEAD.size
    if pos + n * _TILE.size > len(data) - 4:
        raise DataError(f"'{name}' is truncated (block table)")
    lengths = [_TILE.unpack_from(data, pos + i * _TILE.size) for i in range(n)]
    pos += n * _TILE.size
    flat = 0
    if header.flat:
        if pos + _LENGTH.size > len(data) - 4:
            raise DataError(f"'{name}' is truncated (flat-cell map length)")
        (flat,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if flat == 0:
            raise DataError(f"'{name}' is corrupt: its header announces an empty flat-cell map")
    if pos + sum(map(sum, lengths)) + flat != len(data) - 4:
        raise DataError(f"'{name}' is corrupt: stream lengths do not add up to the file size")
    tiles = []
    for lens in lengths:
        parts = []
        for size in lens:
            parts.append(data[pos : pos + size])
            pos += size
        tiles.append(TileStreams(*parts))
    return header, tiles, data[pos : pos + flat]


def overhead(tiles: int) -> int:
    """Bytes of a file besides its streams: header, block table and checksum (a flat-cell map
    adds its own bytes and 4 for its length)."""
    return _HEAD.size + tiles * _TILE.size + 4
