"""Fractional qualities, encode effort (latent refinement) and rate control, on real files."""

import math

import numpy as np
import pytest
import torch

from clearvae.codec import container, refine
from clearvae.errors import ConfigError, DataError
from tests.test_codec import _image, _symbols, codec  # noqa: F401  (the fitted codec fixture)


def _psnr(codec, data, img):  # noqa: F811
    out = np.round(codec.decompress(data) * 255)
    return 10 * math.log10(255**2 / max(np.mean((out - img) ** 2), 1e-10))


@pytest.fixture(scope="module")
def bundled():
    from clearvae.codec.storage import load_codec

    return load_codec()


def test_fractional_quality_rate_rises_with_it(bundled):
    """Qualities between the trained ones interpolate the gains: with the bundled model the
    file grows with the quality over the whole range, and the header records the step."""
    codec = bundled  # noqa: F811
    img = _image(96, 128, seed=11)
    qualities = [1 + k / 4 for k in range(29)]  # 1, 1.25, .., 8
    sizes = []
    for q in qualities:
        data = codec.compress(img, quality=q)
        assert container.read_header(data).quality == q
        sizes.append(len(data))
    assert sizes[-1] > 3 * sizes[0]
    assert all(a < b for a, b in zip(sizes[::4], sizes[4::4]))  # each trained quality
    assert all(b - a >= -8 for a, b in zip(sizes, sizes[1:]))  # at most 2 rANS words back
    steps = np.diff(np.log(sizes))
    assert steps.max() < 4 * np.median(steps)  # no jumps: the rate rises smoothly
    assert codec.decompress(codec.compress(img, quality=3.5)).shape == (96, 128, 3)


def test_quality_steps_and_range(codec):  # noqa: F811
    img = _image(16, 16)
    assert container.read_header(codec.compress(img, quality=3.54)).quality == 3.5625
    for bad in (0.5, 8.5, float("nan"), "4"):
        with pytest.raises(ConfigError, match="quality"):
            codec.compress(img, quality=bad)
    for bad in (-1, 4, 1.5):
        with pytest.raises(ConfigError, match="effort"):
            codec.compress(img, effort=bad)


def test_effort_lowers_the_real_rate_distortion_cost(codec):  # noqa: F811
    """Refinement searches latents for this image: its real cost λ 255² MSE + bpp (bytes
    on disk, 8-bit PSNR) is lower than the one-pass encoder's, with the same decoder."""
    img = _image(64, 96, seed=12)
    for q in (2, 6):
        lam = codec.model.config.lambdas[q - 1]
        costs = []
        for effort in (0, 1):
            data = codec.compress(img, quality=q, effort=effort)
            assert container.read_header(data).effort == effort
            mse = 255**2 / 10 ** (_psnr(codec, data, img) / 10) / 255**2
            costs.append(lam * 255**2 * mse + 8 * len(data) / img[..., 0].size)
        assert costs[1] < costs[0]


def test_refined_files_decode_alike_with_other_threads_and_float64(codec):  # noqa: F811
    """A file written at effort > 0 decodes to the same symbols with one thread or with the
    decoder's float parts in float64: refinement changes only what the encoder chose."""
    import copy

    from clearvae.codec.codec import Codec

    img = _image(64, 64, seed=13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data = codec.compress(img, quality=5, effort=1)
        expected = _symbols(codec, data)
        torch.set_num_threads(1)
        for a, b in zip(_symbols(codec, data), expected):
            assert np.array_equal(a, b)
    finally:
        torch.set_num_threads(threads)
    wide = Codec(copy.deepcopy(codec.model).double(), codec.tables)
    wide.id = codec.id
    for a, b in zip(_symbols(wide, data), expected):
        assert np.array_equal(a, b)
    assert codec.compress(img, quality=5, effort=1) == data  # seeded: same file every time


def test_refinement_in_windows_and_blocks(codec, monkeypatch):  # noqa: F811
    """Large images are refined in windows and coded in blocks at any effort: shrink both so
    that a small image has several, and check that it decodes and that progress is told."""
    monkeypatch.setattr(refine, "WINDOW", 4)  # 64-pixel windows
    monkeypatch.setitem(refine.ITERATIONS, 1, 5)
    img = _image(150, 200, seed=14)
    calls = []
    data = codec.compress(img, quality=4, effort=1, tile=128,
                          progress=lambda *a: calls.append(a))
    assert container.read_header(data).tile == 128
    windows = math.ceil(192 / 64) * math.ceil(256 / 64)
    assert len(calls) == 5 * windows and calls[-1][:2] == (5 * windows, 5 * windows)
    assert _psnr(codec, data, img) > _psnr(codec, codec.compress(img, quality=1), img) - 3


def test_target_bpp_max_bytes_and_target_psnr(codec):  # noqa: F811
    img = _image(128, 128, seed=15)
    pixels = 128 * 128
    smallest, largest = (len(codec.compress(img, quality=q)) for q in (1, 8))
    for bpp in np.linspace(1.2 * 8 * smallest / pixels, 0.8 * 8 * largest / pixels, 4):
        data = codec.compress(img, target_bpp=float(bpp))
        assert abs(8 * len(data) / pixels / bpp - 1) < 0.1
    for limit in np.linspace(smallest, largest, 5).astype(int).tolist():
        data = codec.compress(img, max_bytes=limit)
        assert len(data) <= limit
        q = container.read_header(data).quality
        if q < codec.qualities:  # the next quality step would not have fitted
            assert len(codec.compress(img, quality=q + 1 / 16)) > limit
    with pytest.raises(DataError, match=f"smallest file for this image is {smallest} bytes"):
        codec.compress(img, max_bytes=smallest - 1)
    goal = (_psnr(codec, codec.compress(img, quality=2), img)
            + _psnr(codec, codec.compress(img, quality=6), img)) / 2
    data = codec.compress(img, target_psnr=goal)
    assert _psnr(codec, data, img) >= goal
    q = container.read_header(data).quality
    assert q == 1 or _psnr(codec, codec.compress(img, quality=q - 1 / 16), img) < goal
    with pytest.raises(DataError, match="out of reach"):
        codec.compress(img, target_psnr=99)
    for bpp in (0.5 * 8 * smallest / pixels, 2 * 8 * largest / pixels):
        with pytest.raises(DataError, match="bpp is out of reach"):
            codec.compress(img, target_bpp=bpp)
    with pytest.raises(ConfigError, match="one of"):
        codec.compress(img, target_bpp=1.0, max_bytes=100)


def test_max_bytes_at_an_effort_never_exceeds(codec, monkeypatch):  # noqa: F811
    monkeypatch.setitem(refine.ITERATIONS, 1, 10)
    img = _image(128, 128, seed=16)
    limit = (len(codec.compress(img, quality=2)) + len(codec.compress(img, quality=6))) // 2
    data = codec.compress(img, max_bytes=limit, effort=1)
    assert len(data) <= limit


def test_edited_headers_are_errors_not_other_images(codec):  # noqa: F811
    """Quality 0 or above the model's, a block size that is no multiple of 64, a changed
    width or height (with the checksum recomputed), and a header claiming more pixels than
    the limit: each is refused, the last before anything is allocated."""
    import struct
    import zlib

    data = codec.compress(_image(64, 96, seed=17), quality=3)
    head = container._HEAD

    def edited(**fields):
        names = ["magic", "version", "channels", "quality_steps", "effort", "flags",
                 "reserved", "model_id", "height", "width", "tile", "tiles"]
        values = dict(zip(names, head.unpack_from(data)))
        values.update(fields)
        body = head.pack(*values.values()) + data[head.size:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    for fields, message in [({"quality_steps": 0}, "quality"), ({"quality_steps": 8 * 16 + 1},
                            "beyond"), ({"tile": 100}, "block size"),
                            ({"width": 80}, "corrupt"), ({"height": 128}, "corrupt"),
                            ({"effort": 9}, "effort"), ({"flags": 4}, "reserved"),
                            ({"reserved": b"\x00\x01"}, "reserved")]:
        with pytest.raises(DataError, match=message):
            codec.decompress(edited(**fields))
    huge = edited(height=100_000, width=100_000)
    with pytest.raises(DataError, match="limit"):
        codec.decompress(huge)
    with pytest.raises(DataError, match="limit"):
        codec.decompress(data, max_pixels=64 * 95)
