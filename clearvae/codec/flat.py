"""Flat cells: the parts of an image that are one exact colour, coded beside the latents.

A learned codec spends its distortion where it pays in bits, so a region of one exact value
(a black background, a white page, the flat fill of a chart) comes back as faint texture a few
levels off: at quality 1 the bundled model decodes pure black with errors up to 14. The
encoder therefore looks for cells of ``CELL`` x ``CELL`` pixels whose 8-bit values are all
equal in every channel, and the file carries, beside the latent streams, a map of those cells
and their values; the decoder paints them with exactly that value after the synthesis
transform. Nothing else changes: the latents, the tables and every other pixel decode as
before, and an image without such a cell writes no map (the file is the same as without this
module).

The map is a bitmap of the cell grid (row-major, ``numpy.packbits`` order) followed by the
values of the flagged cells (one byte per channel, in grid order), the whole deflated (zlib).
The decoder checks its size against the header before inflating more than that, and refuses
a map whose bits, values or end do not add up.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from clearvae.errors import DataError

CELL = 16  # pixels a side of a cell: one quarter of the model's latent stride of 64


def grid(height: int, width: int) -> tuple[int, int]:
    """Cells (rows, columns) of an image; edge cells hold what is left of the image."""
    return -(-height // CELL), -(-width // CELL)


@dataclass(frozen=True)
class Cells:
    """The flat cells of an image: a (rows, cols) bool map and the 8-bit values (k, channels)
    of its k flagged cells in grid order."""

    mask: np.ndarray
    values: np.ndarray

    @cached_property
    def data(self) -> bytes:
        """The map as the file stores it (``pack``), made once per image."""
        return pack(self.mask, self.values)


def find(x: Tensor, channels: int) -> Cells | None:
    """The flat cells of ``x`` (1, C, H, W) in [0, 1]; None when no cell is flat."""
    rows, cols = grid(*x.shape[-2:])
    mask = np.zeros((rows, cols), bool)
    values = []
    for i in range(rows):  # one band of cells at a time: memory O(width)
        band = np.round(x[0, :channels, i * CELL:(i + 1) * CELL].clamp(0, 1).numpy() * 255)
        band = band.astype(np.uint8)  # (C, h, W)
        c, h, w = band.shape
        band = np.pad(band, ((0, 0), (0, 0), (0, cols * CELL - w)), mode="edge")
        cells = band.reshape(c, h, cols, CELL)
        lo, hi = cells.min(axis=(1, 3)), cells.max(axis=(1, 3))  # (C, cols)
        mask[i] = (lo == hi).all(axis=0)
        values.append(lo[:, mask[i]].T)
    if not mask.any():
        return None
    return Cells(mask, np.concatenate(values).reshape(-1, channels))


def uncovered(mask: np.ndarray, height: int, width: int) -> Tensor:
    """(1, 1, height, width) float, for an image padded to at least the cell grid: 0 on the
    flagged cells, 1 elsewhere: the pixels whose error counts once the decoder has painted
    the cells (what encode-time refinement minimises)."""
    rows, cols = mask.shape
    keep = torch.ones(1, 1, height, width)
    cells = torch.from_numpy(~mask).float().repeat_interleave(CELL, 0)
    keep[..., : rows * CELL, : cols * CELL] = cells.repeat_interleave(CELL, 1)
    return keep


def pack(mask: np.ndarray, values: np.ndarray) -> bytes:
    """The map's bytes: the deflated bitmap and values (b"" when no cell is flat)."""
    if not mask.any():
        return b""
    return zlib.compress(np.packbits(mask.ravel()).tobytes()
                         + values.astype(np.uint8).tobytes(), 9)


def unpack(stream: bytes, height: int, width: int, channels: int,
           name: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """The map of a checked stream: (rows, cols) bool and (k, channels) uint8 values."""
    rows, cols = grid(height, width)
    flags = -(-rows * cols // 8)
    limit = flags + rows * cols * channels
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(stream, limit + 1)
    except zlib.error as e:
        raise DataError(f"'{name}' is corrupt: its flat-cell map does not inflate ({e})") from e
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data or len(raw) < flags:
        raise DataError(f"'{name}' is corrupt: its flat-cell map does not end where it should")
    bits = np.unpackbits(np.frombuffer(raw[:flags], np.uint8))
    if bits[rows * cols:].any():
        raise DataError(f"'{name}' is corrupt: its flat-cell map flags cells beyond the image")
    mask = bits[: rows * cols].reshape(rows, cols).astype(bool)
    k = int(mask.sum())
    if k == 0 or len(raw) != flags + k * channels:
        raise DataError(f"'{name}' is corrupt: its flat-cell map holds {len(raw) - flags} "
                        f"value bytes for {k} flagged cells of {channels} channels")
    return mask, np.frombuffer(raw[flags:], np.uint8).reshape(k, channels)


def paint(image: np.ndarray, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Set the flagged cells of ``image`` (H, W, C) float in [0, 1] to their values, in place;
    the image is returned."""
    h, w = image.shape[:2]
    rows, cols = mask.shape
    fill = np.zeros((rows, cols, values.shape[1]), np.float32)
    fill[mask] = values.astype(np.float32) / 255
    for i in np.flatnonzero(mask.any(axis=1)):  # band by band: memory O(width)
        on = np.repeat(mask[i], CELL)[:w]  # (W,)
        band = image[i * CELL:(i + 1) * CELL]  # (h, W, C), a view
        band[:, on] = np.repeat(fill[i], CELL, axis=0)[:w][on]
    return image
