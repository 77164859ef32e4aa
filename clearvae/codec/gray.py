"""Gray images of any bit depth (12/16-bit MRI, CT): lossy, bounded-error and lossless coding.

A volume (one image, a DICOM series, a multi-frame DICOM, a NIfTI volume) is a stack of 2-D
slices of unsigned integers below 2**bits; it becomes one ``.cvae`` file of format 3
(``container``: one header, the source's metadata, a record per slice that can be found and
decoded alone). Each slice is divided by 2**bits - 1 and coded by the gray codec as an image:

    lossy          the codec's streams; decoded values round(x̂ (2**bits - 1))
    bounded error  the lossy streams, then the residual r = v - p against a prediction p that
    (K >= 0)       encoder and decoder compute exactly alike: p = round(x̃ (2**bits - 1)), x̃
                   from the *exact* decoder (``exact``: fixed point, the same bits on every
                   machine). r is quantised with step 2K + 1, q = sign(r) ⌊(|r| + K) / (2K + 1)⌋,
                   so v' = clamp(p + (2K + 1) q) is within ±K of v (K = 0: lossless), and q
                   is coded with Laplace tables chosen per context of p's local activity
                   (``RESIDUAL_CONTEXTS`` contexts; the encoder picks each context's table by
                   its exact cost and stores the choice: 16 bytes a slice).

This is the lossy-plus-residual design of Mentzer et al., "Learning better lossless
compression using lossy compression" (CVPR 2020), with the residual's probability model
conditioned on the lossy reconstruction (its local activity) and fitted to the slice, and
every quantity that picks a probability computed exactly. For the bounded-error modes the
encoder also picks the lossy quality of each slice that makes the whole record smallest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from clearvae.codec import container, residual, volume_container
from clearvae.codec.codec import Codec, Prepared, Progress
from clearvae.codec.container import QUALITY_STEPS
from clearvae.codec.tiling import tile_size
from clearvae.codec.volume_container import SliceRecord, VolumeHeader
from clearvae.errors import ConfigError, DataError

MAX_ERROR = 1 << 15  # largest K: beyond it the residual is nothing but a worse lossy code
REPROBE = 16  # bounded error: every 16th slice searches all qualities, the others near the last


@dataclass(frozen=True)
class GrayVolume:
    """Slices of unsigned integers and what is needed to give them back as stored."""

    values: np.ndarray  # (S, H, W) integers in 0 .. 2**bits - 1
    bits: int
    kind: str = "image"  # volume_container.KINDS: where the slices came from
    dtype: str = "uint16"  # the stored dtype (volume_container.DTYPES)
    offset: int = 0  # stored value = value + offset
    meta: bytes = b""  # the source's header, as its reader serialised it

    def stored(self) -> np.ndarray:
        """(S, H, W) the values as stored in the source (offset added, its dtype)."""
        return (self.values.astype(np.int64) + self.offset).astype(self.dtype)


@torch.no_grad()
def compress_gray(codec: Codec, volume: GrayVolume, quality: float | None = None,
                  effort: int = 0, tile: int = 0, *, max_error: int | None = None,
                  target_bpp: float | None = None, max_bytes: int | None = None,
                  target_psnr: float | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  refine_progress: Progress | None = None) -> bytes:
    """A gray volume -> ``.cvae`` (format 3) bytes.

    Lossy at ``quality`` (default 4), or chosen per slice by ``target_bpp`` / ``target_psnr``,
    or within ``max_bytes`` for the whole file; ``max_error`` K (0: lossless) codes every
    value within ±K, the quality of each slice then chosen for the smallest file unless
    given. ``progress`` gets (slices done, slices)."""
    values, bits = _check_volume(codec, volume, max_error)
    targets = {"target_bpp": target_bpp, "max_bytes": max_bytes, "target_psnr": target_psnr}
    given = {k: v for k, v in targets.items() if v is not None}
    if given and (max_error is not None or quality is not None or len(given) > 1):
        raise ConfigError("give one of quality, target_bpp, max_bytes or target_psnr (and no "
                          "rate target with max_error)")
    s, h, w = values.shape
    tile = tile_size(h, w, tile)
    header = VolumeHeader(volume.kind, bits, max_error, effort, volume.dtype, codec.id,
                          volume.offset, s, h, w, 0 if tile >= max(h, w) else tile)
    meta = volume_container.compress_meta(volume.meta)
    key = header.key(meta)
    fixed = 0
    if "max_bytes" in given:  # shared out by pixels, less the file's own bytes
        fixed = volume_container.volume_overhead(len(meta), s, header.tile_count())
        budget = max_bytes - fixed
        if budget < s * 2:
            raise DataError(f"max_bytes {max_bytes} cannot hold even the header and metadata "
                            f"of this file ({fixed} bytes)")
        given = {"max_bytes": container.overhead(header.tile_count()) + budget // s - 2}
    records: list[SliceRecord] = []
    for i in range(s):
        x = values[i].astype(np.float32) / float(2**bits - 1)
        prepared: list[Prepared] = []

        def prepare(x: np.ndarray = x, prepared: list[Prepared] = prepared) -> Prepared:
            if not prepared:  # g_a runs only for slices that get a lossy layer
                prepared.append(codec.prepare(x, tile, flat_cells=False))
            return prepared[0]

        slice_key = key + struct.pack("<I", i)
        if given:
            steps = _search(codec, prepare(), effort, given, refine_progress, max_bytes, values,
                            bits, tile, fixed if max_bytes is not None else 0)
        elif max_error is None or quality is not None:
            steps = codec.quality_steps(4 if quality is None else quality)
        else:
            steps = None
        if max_error is None:
            coded = codec.code(prepare(), steps, effort, _record_key(slice_key, steps),
                               progress=refine_progress)
            records.append(SliceRecord(steps, coded.streams))
        else:  # a full quality search every REPROBE slices, else around the last choice
            hint = records[-1].quality_steps if i % REPROBE else None
            records.append(_bounded_record(codec, prepare, values[i], bits, max_error, steps,
                                           effort, slice_key, refine_progress, hint))
        if progress is not None:
            progress(i + 1, s)
    data = volume_container.pack_volume(header, meta, records)
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(f"cannot fit the volume in {max_bytes} bytes: the lowest quality gives "
                        f"{len(data)}")
    return data


@torch.no_grad()
def decompress_gray(codec: Codec, data: bytes, name: str = "input",
                    max_pixels: int = container.MAX_PIXELS, which: list[int] | None = None,
                    ) -> tuple[GrayVolume, VolumeHeader]:
    """``.cvae`` (format 3) bytes -> the volume (only the slices ``which``, if given) and its
    header. Every slice is checked (model, streams, check symbols) as it is decoded."""
    header, meta, records = volume_container.unpack_volume(data, name, max_pixels, which)
    if header.model_id != codec.id:
        raise DataError(f"'{name}' was compressed with another model (id "
                        f"{header.model_id.hex()}); this is {codec.name} (id {codec.id.hex()}): "
                        "decompress with the model that compressed it (--model)")
    if header.max_error is not None and codec.tables.exact is None:
        raise DataError(f"'{name}' needs a gray codec with an exact decoder; {codec.name} has "
                        "none")
    key = header.key(meta)
    top = 2**header.bits - 1
    out = np.zeros((len(records), header.height, header.width), np.uint16)
    for n, (i, record) in enumerate(sorted(records.items())):
        if record.quality_steps > codec.qualities * QUALITY_STEPS:
            raise DataError(f"'{name}': slice {i} has quality {record.quality_steps / 16}, "
                            f"beyond this model's {codec.qualities}")
        slice_key = key + struct.pack("<I", i)
        shape = (header.height, header.width)
        p = None
        if record.quality_steps:
            y_hat, s_z, symbols = codec.decode_latents(
                record.blocks, record.quality_steps, *shape, header.tile,
                _record_key(slice_key, record.quality_steps))
            if header.max_error is None:
                x_hat = codec._synthesis(y_hat, record.quality_steps - QUALITY_STEPS, *shape)
                out[n] = np.clip(np.rint(x_hat[0].mean(0).double().numpy() * top), 0, top)
                continue
            p = _prediction(codec, s_z, symbols, record.quality_steps, shape, top)
        out[n] = residual.decode(record.params, record.residual, shape, top,
                                 header.max_error, p, codec.tables.residual,
                                 _residual_check(_record_key(slice_key, record.quality_steps)))
    volume = GrayVolume(out, header.bits, header.kind, header.dtype, header.offset,
                        volume_container.decompress_meta(meta, name))
    return volume, header


def _search(codec: Codec, prep, effort: int, given: dict, progress: Progress | None,
            max_bytes: int | None, values: np.ndarray, bits: int, tile: int,
            fixed: int) -> int:
    """The quality steps of one slice that ``rate.search`` finds for the target ``given``."""
    from clearvae.codec import rate

    try:
        return round(rate.search(codec, prep, effort, progress=progress, **given).quality
                     * QUALITY_STEPS)
    except DataError:
        if max_bytes is None:
            raise
    smallest = fixed + sum(  # every slice at the lowest quality
        sum(len(b"".join(b.parts())) for b in codec.code(
            codec.prepare(v.astype(np.float32) / float(2**bits - 1), tile, flat_cells=False),
            QUALITY_STEPS, 0, b"").streams) for v in values)
    raise DataError(f"cannot fit the volume in {max_bytes} bytes: the smallest file for it "
                    f"is about {smallest} bytes (quality 1)") from None


def _record_key(slice_key: bytes, steps: int) -> bytes:
    """What a slice record's check symbols derive from: the header, the metadata, the slice
    number and the record's quality (so that an edited quality is found too)."""
    return slice_key + struct.pack("<H", steps)


def _residual_check(key: bytes) -> Callable[[bytes], bytes]:
    """The residual stream's check symbols, from the record's key and its parameters."""
    return lambda params: container.block_check(key + params, 1 << 31)


def _check_volume(codec: Codec, volume: GrayVolume, max_error: int | None,
                  ) -> tuple[np.ndarray, int]:
    values = np.asarray(volume.values)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.dtype.kind not in "ui" or not values.size:
        raise DataError(f"a gray volume is (slices, H, W) integers, got {values.dtype} of shape "
                        f"{values.shape}")
    if not (isinstance(volume.bits, int) and 1 <= volume.bits <= 16):
        raise DataError(f"bits must be 1..16, got {volume.bits!r}")
    if values.min() < 0 or values.max() >= 2**volume.bits:
        raise DataError(f"the values must lie in 0..{2**volume.bits - 1} for {volume.bits} "
                        f"bits, got {values.min()}..{values.max()}")
    if max_error is not None:
        if not isinstance(max_error, int) or not 0 <= max_error < min(MAX_ERROR,
                                                                      2**volume.bits):
            raise ConfigError(f"max_error must be an integer from 0 (lossless) to "
                              f"{min(MAX_ERROR, 2**volume.bits) - 1}, got {max_error!r}")
        if codec.tables.exact is None:
            raise ConfigError(f"{codec.name} is a colour codec: the bounded-error and lossless "
                              "modes need a gray one (image_channels 1), e.g. the bundled MRI "
                              "codec")
    return values, volume.bits


def _prediction(codec: Codec, s_z: np.ndarray, symbols: np.ndarray, steps: int,
                shape: tuple[int, int], top: int) -> np.ndarray:
    """p (H, W) int64: the exact decoder's picture in value units, the same on any machine."""
    h, w = shape
    exact = codec.tables.exact
    ctx = codec.model.context
    parts = np.split(symbols, 1 if ctx is None else ctx.slices, axis=1)
    x = exact.reconstruct(codec.z_input(s_z, steps), parts, steps - QUALITY_STEPS, h, w)
    x = x[0].mean(0) if x.shape[1] > 1 else x[0, 0]
    return torch.floor(x.clamp(0, 1) * top + 0.5).long().numpy()


def _bounded_record(codec: Codec, prepare: Callable[[], Prepared], values: np.ndarray,
                    bits: int, k: int, steps: int | None, effort: int, key: bytes,
                    progress: Progress | None, hint: int | None = None) -> SliceRecord:
    """The smallest record of one slice within ±k: at ``steps``, or the best quality step
    (0: no lossy layer) found by a coarse-to-fine search over the codec's qualities, or
    around ``hint`` (the choice for the slice before: neighbouring slices are alike)."""
    top = 2**bits - 1
    h, w = values.shape
    tried: dict[int, SliceRecord] = {}

    def record(s: int) -> SliceRecord:
        if s not in tried:
            p, blocks = None, []
            if s:
                coded = codec.code(prepare(), s, effort, _record_key(key, s), progress=progress)
                p = _prediction(codec, coded.s_z, coded.symbols, s, (h, w), top)
                blocks = coded.streams
            params, streams = residual.encode(values, top, k, p, codec.tables.residual,
                                              _residual_check(_record_key(key, s)))
            tried[s] = SliceRecord(s, blocks, streams, params)
        return tried[s]

    def size(s: int) -> int:
        r = record(s)
        return len(r.params) + len(b"".join(r.streams()))

    if steps is not None:
        return record(steps)
    top_steps = codec.qualities * QUALITY_STEPS
    if hint == 0:  # the slice before had no use for a lossy layer: nor has this one, likely
        return record(0)
    if hint is not None:
        candidates, steps_around = [0, hint], (QUALITY_STEPS // 2,)
    else:  # no lossy layer, then the codec's qualities coarse to fine
        candidates, steps_around = [0, top_steps // 2, top_steps], (2 * QUALITY_STEPS,
                                                                   QUALITY_STEPS)
    best = min(candidates, key=size)
    for step in steps_around if best else ():
        around = [s for s in (best - step, best + step) if QUALITY_STEPS <= s <= top_steps]
        best = min([best, *around], key=size)
    return record(best)
