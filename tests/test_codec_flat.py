"""Flat cells: regions of one exact colour decode to exactly that colour, and a damaged
flat-cell map is an error."""

import struct
import zlib

import numpy as np
import pytest
import torch

from clearvae.codec import container, flat
from clearvae.codec.codec import Codec
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.errors import DataError


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return Codec(HyperpriorCodec(HyperpriorCodecConfig(channels_n=8, channels_m=8)).eval())


def _picture(h, w, seed=0):
    """(H, W, 3) uint8 noise: every 16 x 16 cell holds more than one value."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 220, (h, w, 3), dtype=np.uint8)


def _with_flat(h=70, w=90):
    """A picture whose left 40 columns are black and its bottom right corner from (48, 60) is
    one grey;
    the cells wholly inside them are flat, the cells they share with the noise are not."""
    img = _picture(h, w)
    img[:, :40] = 0
    img[48:, 60:] = (120, 130, 140)
    return img


def test_find_flags_whole_cells_of_one_value_only():
    img = _with_flat()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    cells = flat.find(x, 3)
    mask, values = cells.mask, cells.values
    assert mask.shape == flat.grid(70, 90) == (5, 6)
    expected = np.zeros((5, 6), bool)
    expected[:, :2] = True  # columns 0-31 are black; cell column 2 (32-47) is half noise
    expected[3:, 4:] = True  # rows 48-69 (the last cell row is short) x columns 64-89: grey
    assert np.array_equal(mask, expected)
    assert values.shape == (expected.sum(), 3)
    grey = np.zeros((5, 6), bool)
    grey[3:, 4:] = True
    assert (values[grey[mask]] == (120, 130, 140)).all()
    assert (values[~grey[mask]] == 0).all()


def test_flat_cells_decode_exactly_and_the_rest_as_before(codec):
    img = _with_flat()
    data = codec.compress(img, quality=1)
    header, _, cells = container.unpack(data)
    assert header.flat and cells
    out = np.round(codec.decompress(data) * 255).astype(np.uint8)
    assert (out[:, :32] == 0).all()  # exact, not "close": the untrained model is far off
    assert (out[48:70, 64:90] == (120, 130, 140)).all()
    # the model alone (no map) is far from black there: the map is what makes it exact
    rng = np.random.default_rng(1)
    plain = img.copy()
    plain[:, :40] = rng.integers(0, 2, (70, 40, 3))  # no cell is flat any more
    plain[48:, 60:] = rng.integers(119, 122, (22, 30, 3))
    no_map = codec.compress(plain, quality=1)
    assert not container.read_header(no_map).flat
    assert np.abs(codec.decompress(no_map)[:, :32] * 255).max() > 2


def test_a_picture_without_flat_cells_writes_no_map(codec):
    data = codec.compress(_picture(40, 40), quality=2)
    header, _, cells = container.unpack(data)
    assert not header.flat and cells == b""
    assert data[9] == 0


def test_a_flat_image_of_any_size_and_gray_decodes_exactly(codec):
    for shape, value in (((37, 50), 255), ((37, 50, 3), (3, 250, 17))):
        img = np.empty(shape, np.uint8)
        img[...] = value
        out = codec.decompress(codec.compress(img, quality=1))
        assert out.shape[:2] == (37, 50)
        assert (np.round(out * 255) == np.asarray(value)).all()


def test_encoder_reconstruction_carries_the_flat_cells(codec):
    """What rate control measures (``Encoded.x_hat``) is what the decoder gives there."""
    img = _with_flat()
    prep = codec.prepare(img)
    enc = codec.encode(prep, 16, reconstruct=True)
    out = codec.decompress(enc.data)
    x_hat = enc.x_hat[0].permute(1, 2, 0).numpy()
    assert (np.round(x_hat[:, :32] * 255) == 0).all()
    assert np.array_equal(np.round(x_hat * 255), np.round(out * 255))


def _repacked(codec, data, cells: bytes) -> bytes:
    header, streams, _ = container.unpack(data)
    return container.pack(header, streams, cells)


@pytest.mark.parametrize("how, message", [
    ("garbage", "does not inflate"),
    ("bomb", "does not end where"),
    ("trailing", "does not end where"),
    ("beyond", "beyond the image"),
    ("values", "value bytes"),
    ("none", "value bytes"),
])
def test_a_bad_flat_cell_map_is_an_error(codec, how, message):
    img = _with_flat()
    data = codec.compress(img, quality=2)
    rows, cols = flat.grid(70, 90)
    _, _, good = container.unpack(data)
    raw = zlib.decompress(good)
    flags = -(-rows * cols // 8)
    bad = {
        "garbage": good[:2] + bytes(len(good) - 2),
        "bomb": zlib.compress(bytes(10_000_000)),
        "trailing": good + b"\x00",
        "beyond": zlib.compress(raw[: flags - 1] + bytes([raw[flags - 1] | 1]) + raw[flags:]),
        "values": zlib.compress(raw + b"\x07"),
        "none": zlib.compress(bytes(flags)),
    }[how]
    with pytest.raises(DataError, match=message):
        codec.decompress(_repacked(codec, data, bad))


def test_an_edited_flat_flag_is_an_error(codec):
    with_map = codec.compress(_with_flat(), quality=2)
    without = codec.compress(_picture(70, 90), quality=2)
    for data, flags in ((with_map, 0), (without, 1), (without, 2)):
        edited = bytearray(data)
        edited[9] = flags
        edited[-4:] = struct.pack("<I", zlib.crc32(bytes(edited[:-4])))
        with pytest.raises(DataError):
            codec.decompress(bytes(edited))



def test_refinement_leaves_the_painted_cells_out_and_they_still_decode_exactly(codec):
    mask = np.zeros(flat.grid(70, 90), bool)
    mask[1, 2] = mask[4, 5] = True
    keep = flat.uncovered(mask, 128, 128)  # the image padded to 64
    assert keep.shape == (1, 1, 128, 128)
    assert keep[0, 0, 16:32, 32:48].eq(0).all() and keep[0, 0, 64:80, 80:96].eq(0).all()
    assert keep.sum() == 128 * 128 - 2 * 16 * 16
    img = _with_flat()
    img[:, :60] = 0  # mostly black
    out = np.round(codec.decompress(codec.compress(img, quality=4, effort=1)) * 255)
    assert (out[:, :48] == 0).all()
