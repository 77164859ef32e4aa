"""The ``.cvae`` file: a small header, the coded streams of each tile, and a checksum.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"CVAE"
    4       1     format version (1)
    5       1     channels of the decoded image (1 = gray, 3 = RGB)
    6       1     quality (1..255; the codec's quality level)
    7       1     reserved, 0
    8       8     model id: the first 8 bytes of SHA-256 over the model's weights and tables
    16      4     image height
    20      4     image width
    24      2     tile size in pixels (0: the image is one tile)
    26      4     number of tiles (row-major)
    30      16*n  per tile: byte lengths of its 4 streams (z, z escapes, y, y escapes)
    ...           the streams, tile after tile
    end-4   4     CRC-32 of every byte before it

The decoder checks magic, version, sizes, lengths and checksum before decoding anything, so a
truncated, corrupted or foreign file is reported instead of decoded into garbage.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from clearvae.errors import DataError

MAGIC = b"CVAE"
VERSION = 1
MAX_SIDE = 1 << 17  # 131072 pixels: far beyond any camera, small enough to refuse nonsense
_HEAD = struct.Struct("<4sBBBB8sIIHI")
_TILE = struct.Struct("<IIII")


@dataclass(frozen=True)
class Header:
    channels: int
    quality: int
    model_id: bytes
    height: int
    width: int
    tile: int  # 0: untiled

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


def pack(header: Header, tiles: list[TileStreams]) -> bytes:
    """The bytes of a ``.cvae`` file."""
    if len(tiles) != header.tile_count():
        raise ValueError(f"{len(tiles)} tiles given, header implies {header.tile_count()}")
    out = bytearray(_HEAD.pack(MAGIC, VERSION, header.channels, header.quality, 0,
                               header.model_id, header.height, header.width, header.tile,
                               len(tiles)))
    for t in tiles:
        out += _TILE.pack(*(len(p) for p in t.parts()))
    for t in tiles:
        for part in t.parts():
            out += part
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack(data: bytes, name: str = "input") -> tuple[Header, list[TileStreams]]:
    """Parse and check a ``.cvae`` file; any inconsistency is a DataError naming ``name``."""
    if len(data) < _HEAD.size + 4:
        if data[:4] != MAGIC[: len(data[:4])]:
            raise DataError(f"'{name}' is not a clearvae compressed file (.cvae)")
        raise DataError(f"'{name}' is truncated ({len(data)} bytes)")
    magic, version, channels, quality, reserved, model_id, h, w, tile, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DataError(f"'{name}' is not a clearvae compressed file (.cvae)")
    if version > VERSION:
        raise DataError(f"'{name}' uses .cvae format {version}; this clearvae reads format "
                        f"{VERSION}: upgrade clearvae")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise DataError(f"'{name}' is corrupt or truncated (checksum mismatch)")
    header = Header(channels, quality, model_id, h, w, tile)
    if version != VERSION or reserved or channels not in (1, 3) or not 0 < h <= MAX_SIDE \
            or not 0 < w <= MAX_SIDE or n != header.tile_count():
        raise DataError(f"'{name}' has an invalid header (version {version}, {channels} "
                        f"channels, {w}x{h}, tile {tile}, {n} tiles)")
    pos = _HEAD.size
    if pos + n * _TILE.size > len(data) - 4:
        raise DataError(f"'{name}' is truncated (tile table)")
    lengths = [_TILE.unpack_from(data, pos + i * _TILE.size) for i in range(n)]
    pos += n * _TILE.size
    if pos + sum(map(sum, lengths)) != len(data) - 4:
        raise DataError(f"'{name}' is corrupt: stream lengths do not add up to the file size")
    tiles = []
    for lens in lengths:
        parts = []
        for size in lens:
            parts.append(data[pos : pos + size])
            pos += size
        tiles.append(TileStreams(*parts))
    return header, tiles
