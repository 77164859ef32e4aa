"""The gray (12/16-bit) codec: lossy, bounded-error and lossless volumes in format-3 files."""

import copy
import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch

from clearvae.codec import volume_container
from clearvae.codec.codec import Codec
from clearvae.codec.gray import GrayVolume, compress_gray, decompress_gray
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig, rd_loss
from clearvae.errors import ConfigError, DataError

CONFIG = HyperpriorCodecConfig(channels_n=16, channels_m=24, image_channels=1, context_slices=3)


def _phantom(h: int, w: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    """An MRI-like (H, W) image: a dark background, a bright ellipse with structure, noise."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    inside = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.3) ** 2 < 1
    body = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy)
    x = np.where(inside, body, 0.02) + 0.01 * g.standard_normal((h, w))
    return np.clip(np.rint(x * (2**bits - 1)), 0, 2**bits - 1).astype(np.uint16)


@pytest.fixture(scope="module")
def codec():
    """A small gray codec with channel context, fit briefly to phantoms (so that its gains,
    means and context networks are not at their initial values)."""
    torch.manual_seed(0)
    model = HyperpriorCodec(CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(np.stack([_phantom(64, 64, seed=s) for s in range(2)])[:, None]
                         .astype(np.float32) / 4095)
    for _ in range(120):
        loss, _ = rd_loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Codec(model.eval())


@pytest.fixture(scope="module")
def volume():
    return GrayVolume(np.stack([_phantom(48, 72, seed=s) for s in range(3)]), 12)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_bounded_error_holds_for_every_value(codec, volume, k):
    data = compress_gray(codec, volume, max_error=k, quality=3)
    back, header = decompress_gray(codec, data)
    err = np.abs(back.values.astype(np.int64) - volume.values.astype(np.int64))
    assert err.max() <= k
    if k == 0:
        assert np.array_equal(back.values, volume.values)
    assert header.max_error == k and back.bits == 12


def test_lossless_is_smaller_than_the_raw_values_and_picks_the_best_quality(codec, volume):
    data = compress_gray(codec, volume, max_error=0)
    assert len(data) < volume.values.size * 12 / 8
    _, _, records = volume_container.unpack_volume(data)
    assert all(r.quality_steps == 0 or 16 <= r.quality_steps <= 16 * codec.qualities
               for r in records.values())  # 0: no lossy layer
    for q in (2, 8):  # the search found no worse than these fixed qualities
        assert len(data) <= len(compress_gray(codec, volume, max_error=0, quality=q))
    back, _ = decompress_gray(codec, data)
    assert np.array_equal(back.values, volume.values)


def test_lossless_does_not_depend_on_the_float_networks(codec, volume):
    """The decoder's prediction comes from the exact fixed-point decoder alone: a codec whose
    float means and g_s differ slightly (another machine, say) decodes the same values."""
    data = compress_gray(codec, volume, max_error=0, quality=4)
    other = copy.deepcopy(codec)
    with torch.no_grad():
        for p in [*other.model.g_s.parameters(), *other.model.h_s.means.parameters()]:
            p.mul_(1 + 1e-4)
    other.id = codec.id  # the same file, read by a decoder whose float path differs
    back, _ = decompress_gray(other, data)
    assert np.array_equal(back.values, volume.values)


def test_lossless_decodes_the_same_with_another_thread_count(codec, volume):
    data = compress_gray(codec, volume, max_error=0, quality=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        back, _ = decompress_gray(codec, data)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(back.values, volume.values)


def test_lossy_keeps_bit_depth_dtype_offset_and_rises_with_quality(codec, volume):
    signed = dataclasses.replace(volume, dtype="int16", offset=-1000, meta=b"header bytes")
    sizes, errors = [], []
    for q in (1, 4, 8):
        data = compress_gray(codec, signed, quality=q)
        back, header = decompress_gray(codec, data)
        assert back.values.shape == volume.values.shape and back.values.max() < 4096
        assert (back.dtype, back.offset, back.meta, back.kind) == ("int16", -1000,
                                                                   b"header bytes", "image")
        assert back.stored().dtype == np.int16 and back.stored().min() >= -1000
        sizes.append(len(data))
        errors.append(np.abs(back.values.astype(float) - volume.values).mean())
    assert sizes[0] < sizes[1] < sizes[2]
    assert errors[0] > errors[2]


def test_one_slice_decodes_alone_and_equals_the_whole_decode(codec, volume):
    data = compress_gray(codec, volume, max_error=0, quality=3)
    whole, _ = decompress_gray(codec, data)
    one, _ = decompress_gray(codec, data, which=[1])
    assert np.array_equal(one.values[0], whole.values[1])
    with pytest.raises(DataError, match="no slice 5"):
        decompress_gray(codec, data, which=[5])


def test_max_bytes_is_never_exceeded(codec, volume):
    for limit in (1500, 3000):
        data = compress_gray(codec, volume, max_bytes=limit)
        assert len(data) <= limit
    with pytest.raises(DataError, match="smallest file"):
        compress_gray(codec, volume, max_bytes=500)
    with pytest.raises(DataError, match="cannot hold"):
        compress_gray(codec, volume, max_bytes=60)


def test_damaged_files_are_refused(codec, volume):
    data = compress_gray(codec, volume, max_error=0, quality=3)
    for bad in (data[:-7], data[:30], data[:-4] + b"\0\0\0\0"):
        with pytest.raises(DataError):
            decompress_gray(codec, bad)
    # an edited field with the CRC recomputed: the check symbols notice
    edited = bytearray(data)
    edited[7:9] = struct.pack("<H", 2)  # lossless -> within ±2
    edited[-4:] = struct.pack("<I", zlib.crc32(bytes(edited[:-4])))
    with pytest.raises(DataError):
        decompress_gray(codec, bytes(edited))
    other = Codec(HyperpriorCodec(CONFIG))
    with pytest.raises(DataError, match="another model"):
        decompress_gray(other, data)


def test_a_header_claiming_a_huge_volume_is_refused_before_decoding(codec, volume):
    data = bytearray(compress_gray(codec, volume, quality=2))
    struct.pack_into("<III", data, 24, 4096, 8192, 8192)  # slices, height, width
    with pytest.raises(DataError, match="limit"):
        decompress_gray(codec, bytes(data))


def test_a_metadata_bomb_is_refused(codec, volume):
    meta = zlib.compress(b"\0" * (volume_container.MAX_META + 10), 9)
    with pytest.raises(DataError, match="larger than"):
        volume_container.decompress_meta(meta)


def test_bad_options_are_refused(codec, volume):
    with pytest.raises(ConfigError, match="max_error"):
        compress_gray(codec, volume, max_error=-1)
    with pytest.raises(ConfigError, match="one of"):
        compress_gray(codec, volume, quality=3, target_bpp=1.0)
    with pytest.raises(DataError, match="0..4095"):
        compress_gray(codec, dataclasses.replace(volume, values=volume.values * 2), quality=2)
    colour = Codec(HyperpriorCodec(dataclasses.replace(CONFIG, image_channels=3)))
    with pytest.raises(ConfigError, match="gray"):
        compress_gray(colour, volume, max_error=0)


def test_effort_and_rate_targets_work_on_gray_volumes(codec, volume):
    plain = compress_gray(codec, volume, quality=3)
    refined = compress_gray(codec, volume, quality=3, effort=1)
    back, header = decompress_gray(codec, refined)
    assert header.effort == 1 and back.values.shape == volume.values.shape
    assert len(refined) != len(plain)  # the refinement changed the latents
    target = 8 * len(plain) / volume.values.size
    data = compress_gray(codec, volume, target_bpp=target)
    assert abs(8 * len(data) / volume.values.size / target - 1) < 0.2


def test_edited_record_quality_or_residual_parameters_are_found(codec, volume):
    """Fields outside the header, edited with the CRC recomputed: the check symbols (which
    derive from the record's quality and the residual's parameters too) notice."""
    data = compress_gray(codec, volume, max_error=0, quality=3)
    _, meta, table = volume_container.read_volume_header(data)
    first = table + 4 * volume.values.shape[0]  # slice 0's record: quality, then parameters
    for offset in (0, 3 + 2):  # the quality steps; the first predictor weight
        edited = bytearray(data)
        edited[first + offset] ^= 0x01
        edited[-4:] = struct.pack("<I", zlib.crc32(bytes(edited[:-4])))
        with pytest.raises(DataError):
            decompress_gray(codec, bytes(edited))


def test_the_whole_slice_lossless_encoder_gives_the_row_walk_s_integers():
    """``residual._lossless_rows`` (vectorised over the slice) against the row-by-row walk
    that the decoder mirrors: the same q and contexts, edges and tiny slices included."""
    from clearvae.codec import residual

    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        top = int(rng.choice([1, 255, 4095, 65535]))
        v = rng.integers(0, top + 1, (h, w)).astype(np.int64)
        p = rng.integers(0, top + 1, (h, w)).astype(np.int64) if trial % 2 else None
        weights = residual._fit(v, p) if trial % 3 else rng.integers(
            -400, 400, len(residual._names(p)))
        bias = rng.integers(-9, 9, residual.CONTEXTS)
        fast = residual._lossless_rows(v, top, p, weights, bias)
        slow = residual._walk_rows(v, top, 0, p, weights, bias)
        for (qa, ca), (qb, cb) in zip(fast, slow, strict=True):
            assert np.array_equal(qa, qb) and np.array_equal(ca, cb), (trial, h, w)
