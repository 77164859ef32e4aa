"""Tests of clearvae.data: image files, folders, MNIST IDX / CSV files, drawn digits."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearvae.data import (
    ImageFolder,
    SyntheticDigits,
    TensorImages,
    download_mnist,
    list_images,
    load_digits_csv,
    load_mnist,
    load_mnist_labels,
    open_dataset,
    read_idx,
    read_image,
    read_image_bit_depth,
    write_image,
)
from clearvae.data import images as images_module
from clearvae.data import mnist as mnist_module
from clearvae.errors import ConfigError, DataError
from tests.conftest import shared

REPO = Path(__file__).resolve().parents[1]


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels (H, W, C)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Save uint8/uint16 pixels with Pillow (gray when C = 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    (im.convert(mode) if mode else im).save(path)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG file written by hand (for what Pillow cannot write)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, gz: bool = False) -> Path:
    """An IDX file holding ``array`` (big-endian, as the format says)."""
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(dtype).tobytes())
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------- reading and writing files

def test_16_bit_png_is_scaled_not_truncated(tmp_path: Path) -> None:
    pixels = np.full((4, 5), 40000, np.uint16)
    pixels[0, 0], pixels[0, 1] = 65535, 1
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.shape == (4, 5, 1) and image.dtype == np.float32
    assert image[1, 1, 0] == pytest.approx(40000 / 65535, abs=1e-7)
    assert image[0, 0, 0] == 1.0 and image[0, 1, 0] == pytest.approx(1 / 65535)
    assert read_image_bit_depth(path) == 16
    assert read_image(path, channels=3).shape == (4, 5, 3)


def test_16_bit_write_round_trip(tmp_path: Path) -> None:
    gray = torch.linspace(0, 1, 60).reshape(1, 6, 10)
    write_image(tmp_path / "g16.png", gray, bit_depth=16)
    assert read_image_bit_depth(tmp_path / "g16.png") == 16
    back = read_image(tmp_path / "g16.png")[..., 0]
    assert np.abs(back - gray[0].numpy()).max() <= 0.5 / 65535 + 1e-7
    with pytest.raises(DataError, match="16-bit"):
        write_image(tmp_path / "rgb16.png", torch.rand(3, 4, 4), bit_depth=16)


def test_16_bit_colour_png_warns_about_8_bit_precision(tmp_path: Path) -> None:
    rows = b"".join(b"\0" + np.full(6, 40000, ">u2").tobytes() for _ in range(2))
    path = tmp_path / "rgb48.png"
    path.write_bytes(raw_png(2, 2, 16, 2, rows))
    assert read_image_bit_depth(path) == 16
    with pytest.warns(UserWarning, match="8-bit precision"):
        image = read_image(path)
    assert image.shape == (2, 2, 3)
    assert image[0, 0, 0] == pytest.approx(40000 / 65535, abs=1 / 255)


def test_gray_and_colour_conversions(tmp_path: Path) -> None:
    rgb = save(tmp_path / "rgb.png", noise(6, 7))
    gray = save(tmp_path / "gray.png", noise(6, 7, 1))
    assert read_image(rgb).shape == (6, 7, 3)
    assert read_image(gray).shape == (6, 7, 1)
    luma = np.asarray(Image.open(rgb).convert("L"), np.float32) / 255
    assert np.abs(read_image(rgb, channels=1)[..., 0] - luma).max() <= 1 / 255 + 1e-6
    replicated = read_image(gray, channels=3)
    assert replicated.shape == (6, 7, 3) and (replicated == replicated[..., :1]).all()
    assert read_image(save(tmp_path / "a.png", noise(5, 5, 4)), channels=None).shape == (5, 5, 3)
    assert read_image(save(tmp_path / "la.png", noise(5, 5), "LA")).shape == (5, 5, 1)
    assert read_image(save(tmp_path / "p.png", noise(5, 5), "P")).shape == (5, 5, 3)
    assert read_image(save(tmp_path / "c.tif", noise(5, 5), "CMYK")).shape == (5, 5, 3)
    assert read_image_bit_depth(rgb) == 8
    with pytest.raises(ConfigError, match="channels"):
        read_image(rgb, channels=2)


def test_unreadable_files_raise_data_error_naming_them(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(0).bytes(500))
    complete = save(tmp_path / "whole.png", noise(64, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    for path in (junk, cut, tmp_path / "missing.png", tmp_path):
        with pytest.raises(DataError, match="cannot read image") as error:
            read_image(path)
        assert str(path) in str(error.value)


def test_absurd_sizes_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "bomb.png"  # a header promising 40 000 x 40 000 pixels
    bomb.write_bytes(raw_png(40000, 40000, 8, 0, b""))
    with pytest.raises(DataError, match="bomb.png"):
        read_image(bomb)
    # a long thin header within the pixel limit (the fuzz campaign's 48 x 2 097 192 PNG, which
    # took 20 s to decode before the refusal): refused by its side, before any decoding
    thin = tmp_path / "thin.png"
    thin.write_bytes(raw_png(48, 2097192, 8, 0, b""))
    with pytest.raises(DataError, match="outside 1..131072 pixels a side"):
        read_image(thin)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100)
    with pytest.raises(DataError, match="more than 100 pixels"):
        read_image(save(tmp_path / "big.png", noise(11, 10)))


def test_write_image_layouts_and_checks(tmp_path: Path) -> None:
    chw = torch.rand(3, 5, 6)
    write_image(tmp_path / "deep/dir/a.png", chw)  # creates the folders
    write_image(tmp_path / "b.png", chw.permute(1, 2, 0).numpy())  # numpy (H, W, C)
    a, b = read_image(tmp_path / "deep/dir/a.png"), read_image(tmp_path / "b.png")
    assert a.shape == (5, 6, 3) and (a == b).all()
    assert np.abs(a - chw.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    write_image(tmp_path / "clip.png", torch.full((1, 2, 2), 7.0))
    assert (read_image(tmp_path / "clip.png") == 1.0).all()
    for bad, message in [(torch.full((1, 2, 2), float("nan")), "NaN"),
                         (np.zeros((2, 2), np.uint8), "floats"),
                         (torch.rand(4, 5, 5), "shape")]:
        with pytest.raises(DataError, match=message):
            write_image(tmp_path / "bad.png", bad)
    with pytest.raises(DataError, match="extension"):
        write_image(tmp_path / "bad.xyz", chw)


def test_write_image_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    write_image(target, torch.zeros(1, 4, 4))
    before = target.read_bytes()
    with pytest.raises(DataError):  # fails while encoding: the old file stays
        write_image(target, torch.ones(3, 4, 4), bit_depth=16)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled out"):  # fails at the very last step
        write_image(target, torch.ones(1, 4, 4))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary files left
    write_image(target, torch.ones(1, 4, 4))
    assert (read_image(target) == 1.0).all()
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# ---------------------------------------------------------------- folders of images

def test_list_images_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    for name in ["b.PNG", "a/c.JpG", "a/deep/d.tiff", "e.webp", "notes.txt", ".hidden.png",
                 ".cache/f.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/c.JpG", "a/deep/d.tiff", "b.PNG", "e.webp"]
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found .*\.png"):
        list_images(tmp_path / "empty")


def test_crops_are_deterministic_and_seeded(tmp_path: Path) -> None:
    pixels = noise(40, 50)
    save(tmp_path / "x.png", pixels)
    data = ImageFolder(tmp_path, size=16)
    crop = data[(0, 7)]
    assert crop.shape == (3, 16, 16) and crop.dtype == torch.float32
    assert torch.equal(crop, ImageFolder(tmp_path, size=16)[(0, 7)])  # any instance, same key
    assert not torch.equal(crop, data[(0, 8)])
    centre = torch.from_numpy(pixels[12:28, 17:33].transpose(2, 0, 1) / 255).float()
    assert torch.allclose(data[0], centre)
    # the crop is a real window of the image
    image = torch.from_numpy(pixels.transpose(2, 0, 1) / 255).float()
    windows = image.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, 25, 35, 16, 16)
    assert (windows == crop[:, None, None]).all(-1).all(-1).all(0).any()
    # the trainer's loader asks for (index, seed) keys in batches
    loader = torch.utils.data.DataLoader(data, batch_sampler=[[(0, 7), (0, 8)]])
    batch = next(iter(loader))
    assert batch.shape == (2, 3, 16, 16) and torch.equal(batch[0], crop)


def test_small_images_are_reflection_padded(tmp_path: Path) -> None:
    pixels = noise(4, 5, 1)
    save(tmp_path / "small.png", pixels)
    out = ImageFolder(tmp_path, size=8, channels=1)[(0, 3)][0].numpy()
    expected = np.pad(pixels[..., 0] / 255, ((2, 2), (1, 2)), mode="reflect")
    assert out.shape == (8, 8) and np.allclose(out, expected)
    assert out[0, 1] == pytest.approx(pixels[2, 0, 0] / 255)  # row -2 mirrors row 2


def test_resize_and_full_modes(tmp_path: Path) -> None:
    save(tmp_path / "x.png", noise(30, 40))
    resized = ImageFolder(tmp_path, size=(10, 20), mode="resize")[0]
    assert resized.shape == (3, 10, 20) and 0 <= resized.min() and resized.max() <= 1
    assert ImageFolder(tmp_path, mode="full", channels=1)[0].shape == (1, 30, 40)
    with pytest.raises(ConfigError, match="full"):
        ImageFolder(tmp_path, size=8, mode="full")
    with pytest.raises(ConfigError, match="height, width"):
        ImageFolder(tmp_path, size=(4, 5, 6))
    save(tmp_path / "flat.png", np.full((30, 40, 3), 128, np.uint8))
    flat = ImageFolder(tmp_path, size=7, mode="resize")[0]
    assert torch.allclose(flat, torch.full_like(flat, 128 / 255), atol=1e-5)


def test_bad_images_raise_or_are_skipped_with_one_warning(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / f"{i}.png", noise(8, 8, seed=i))
    (tmp_path / "1.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="1.png"):
        ImageFolder(tmp_path)[1]
    assert ImageFolder(tmp_path).validate() == [tmp_path / "1.png"]

    data = ImageFolder(tmp_path, on_error="skip")
    with pytest.warns(UserWarning, match="1.png"):
        replacement = data[(1, 5)]
    assert torch.equal(replacement, data[(2, 5)])  # the next good image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use of the bad file warns no more
        assert torch.equal(data[1], data[2])
    with pytest.warns(UserWarning, match="1.png"):
        preloaded = ImageFolder(tmp_path, on_error="skip", preload=True)
    assert torch.equal(preloaded[1], data[2])

    for i in (0, 2):
        (tmp_path / f"{i}.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 3 images"):
        ImageFolder(tmp_path, on_error="skip")[0]


def test_preload_gives_the_same_images(tmp_path: Path) -> None:
    for i in range(2):
        save(tmp_path / f"{i}.jpg", noise(20, 20, seed=i))
    lazy, eager = ImageFolder(tmp_path, size=8), ImageFolder(tmp_path, size=8, preload=True)
    assert all(torch.equal(lazy[(i, 3)], eager[(i, 3)]) for i in range(2))
    with pytest.raises(IndexError):
        lazy[2]


# ---------------------------------------------------------------- MNIST IDX and CSV files

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", array, gz=gz)), array)
    ints = np.array([-5, 70000, 3], np.int32)
    back = read_idx(write_idx(tmp_path / "b.idx", ints, code=0x0C, gz=gz))
    assert back.dtype == np.int32 and np.array_equal(back, ints)


def test_bad_idx_files(tmp_path: Path) -> None:
    whole = write_idx(tmp_path / "whole.idx", np.zeros((3, 28, 28), np.uint8)).read_bytes()
    cases = {"cut.idx": (whole[:-10], "truncated"), "long.idx": (whole + b"\0", "longer"),
             "head.idx": (whole[:9], "header"), "magic.idx": (b"\1\2" + whole[2:], "magic"),
             "gz.idx": (gzip.compress(whole)[:-20], "cannot read")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=message) as error:
            read_idx(tmp_path / name)
        assert name in str(error.value)


def test_load_mnist_from_a_folder(tmp_path: Path) -> None:
    digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", digits, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 2, 1], np.uint8))
    images = load_mnist(tmp_path, "test")
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 28, 28)
    assert np.array_equal(images[:, 0].numpy(), digits)
    labels = load_mnist_labels(tmp_path, "test")
    assert labels.dtype == torch.int64 and labels.tolist() == [7, 2, 1]
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*download_mnist"):
        load_mnist(tmp_path, "train")


def write_csv(path: Path, rows: list[list[int]], header: str | None = None) -> Path:
    text = "".join(line + "\n" for line in ([header] if header else [])
                   + [",".join(map(str, r)) for r in rows])
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def test_digits_csv(tmp_path: Path) -> None:
    rows = [[(i + j) % 256 for j in range(784)] + [i] for i in range(3)]
    plain = load_digits_csv(write_csv(tmp_path / "d.csv", rows))
    zipped = load_digits_csv(write_csv(tmp_path / "d.csv.gz", rows,
                                       header=",".join(f"p{j}" for j in range(784)) + ",label"))
    for images, labels in (plain, zipped):
        assert images.dtype == torch.uint8 and images.shape == (3, 1, 28, 28)
        assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2]
        assert images[2, 0, 0, 0] == 2 and images[1, 0, 27, 27] == (1 + 783) % 256
    label_first = [[r[-1]] + r[:-1] for r in rows]
    images, labels = load_digits_csv(write_csv(tmp_path / "k.csv", label_first,
                                               header="label," + ",".join(["pixel"] * 784)))
    assert labels.tolist() == [0, 1, 2] and torch.equal(images, plain[0])


@pytest.mark.parametrize("row, message", [
    ([0] * 783 + [1], "line 3: expected 785"),
    ([0] * 783 + ["x", 1], "line 3: every value must be an integer"),
    ([300] + [0] * 783 + [1], "line 3: pixels must be 0-255"),
])
def test_malformed_csv_rows(tmp_path: Path, row: list, message: str) -> None:
    good = [0] * 784 + [5]
    path = write_csv(tmp_path / "bad.csv", [good, row], header="h" + ",h" * 784)
    with pytest.raises(DataError, match=message) as error:
        load_digits_csv(path)
    assert "bad.csv" in str(error.value)


def test_download_checks_md5_and_writes_nothing_bad(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def fake_fetch(url: str) -> bytes:
        asked.append(url)
        return b"not mnist"

    monkeypatch.setattr(mnist_module, "_fetch", fake_fetch)
    with pytest.raises(DataError, match="checksum") as error:
        download_mnist(tmp_path, "test")
    assert len(asked) == len(mnist_module.MIRRORS) and str(tmp_path) in str(error.value)
    assert list(tmp_path.iterdir()) == []

    def offline(url: str) -> bytes:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mnist_module, "_fetch", offline)
    with pytest.raises(DataError, match="by hand"):
        download_mnist(tmp_path, "train")

    payload = gzip.compress(b"payload")  # what the mirrors serve, with its true MD5
    monkeypatch.setattr(mnist_module, "_fetch", lambda url: payload)
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(mnist_module, "MD5", dict.fromkeys(mnist_module.MD5, md5))
    download_mnist(tmp_path, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                          "t10k-labels-idx1-ubyte.gz"]


def test_tensor_images(tmp_path: Path) -> None:
    images = torch.arange(2 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    data = TensorImages(images, torch.tensor([3, 4]))
    assert torch.equal(data[1], data[(1, 99)]) and data[1].dtype == torch.float32
    assert torch.allclose(data[1] * 255, images[1].float())
    assert TensorImages(images, channels=3)[0].shape == (3, 4, 4)
    assert TensorImages(images, size=8)[(0, 1)].shape == (1, 8, 8)
    with pytest.raises(DataError, match="uint8"):
        TensorImages(images.float())


# ---------------------------------------------------------------- drawn digits

def test_synthetic_digits_are_deterministic_digit_images() -> None:
    few, more = SyntheticDigits(n=12, seed=3), SyntheticDigits(n=20, seed=3)
    assert torch.equal(few.images, more.images[:12])  # image i depends on (seed, i) only
    assert not torch.equal(few.images, SyntheticDigits(n=12, seed=4).images)
    x = few[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert few.labels.tolist() == [i % 10 for i in range(12)]
    ink = few.images.float() / 255  # white digits on black, centred like MNIST
    assert ink[..., :2, :].mean() < 0.01 and ink[..., 10:18, 10:18].mean() > 0.2
    assert SyntheticDigits(n=2, size=32)[1].shape == (1, 32, 32)


def test_synthetic_digits_without_freetype(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFont

    from clearvae.data import synthetic

    bitmap_font = ImageFont.load_default

    def no_freetype(size: float | None = None) -> ImageFont.ImageFont:
        if size is not None:
            raise ImportError("The _imagingft C module is not installed")
        return bitmap_font()

    monkeypatch.setattr(ImageFont, "load_default", no_freetype)
    synthetic._glyph.cache_clear()
    try:
        ink = SyntheticDigits(n=10).images.float() / 255
    finally:
        synthetic._glyph.cache_clear()  # later tests get the FreeType glyphs again
    assert ink[..., :2, :].mean() < 0.01 and ink[..., 10:18, 10:18].mean() > 0.2


# ---------------------------------------------------------------- open_dataset

def test_open_dataset_dispatch(tmp_path: Path) -> None:
    synthetic = open_dataset("synthetic-digits:15", channels=3, size=20)
    assert len(synthetic) == 15 and synthetic[(0, 1)].shape == (3, 20, 20)

    csv = write_csv(tmp_path / "digits.csv", [[0] * 784 + [1]] * 4)
    assert isinstance(open_dataset(str(csv)), TensorImages) and len(open_dataset(str(csv))) == 4

    idx = tmp_path / "mnist"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx(idx / "train-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    mnist = open_dataset(str(idx), "train")
    assert isinstance(mnist, TensorImages) and mnist.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="for the train split but not for 'test'"):
        open_dataset(str(idx), "test")

    folder = tmp_path / "photos"
    save(folder / "a.png", noise(12, 12, 1))
    photos = open_dataset(str(folder), size=8)
    assert isinstance(photos, ImageFolder) and photos[(0, 2)].shape == (3, 8, 8)
    assert open_dataset(str(folder), mode="full", channels=1)[0].shape == (1, 12, 12)

    save(tmp_path / "split/train/a.png", noise(4, 4))
    with pytest.raises(DataError, match="split folders train"):
        open_dataset(str(tmp_path / "split"))
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="cannot use the file"):
        open_dataset(str(folder / "a.png"))
    with pytest.raises(ConfigError, match="positive integer"):
        open_dataset("synthetic-digits:many")


# ---------------------------------------------------------------- the shared reference data

def test_shared_mnist_5k_csv() -> None:
    images, labels = load_digits_csv(shared("mnist/mnist_5k.csv.gz"))
    assert images.shape == (5000, 1, 28, 28) and labels.shape == (5000,)
    assert torch.bincount(labels).tolist() == [500] * 10


def test_shared_mnist_test_split() -> None:
    folder = shared("mnist")
    images = load_mnist(folder, "test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert load_mnist_labels(folder, "test")[:5].tolist() == [7, 2, 1, 0, 4]
    assert len(open_dataset(str(folder), "test")) == 10000


def test_comma_separated_specs_are_used_together() -> None:
    both = open_dataset("synthetic-digits:5, synthetic-digits:7")
    assert len(both) == 12
    assert both[(6, 3)].shape == (1, 28, 28)


def test_downscaled_crops_and_flat_crops(tmp_path):
    from clearvae.data.images import fit_to_size
    from clearvae.data.registry import WithFlat

    rng = np.random.default_rng(0)
    image = rng.random((3, 200, 300)).astype(np.float32)
    plain = fit_to_size(image, (64, 64), "crop", seed=3)
    scaled = fit_to_size(image, (64, 64), "crop", seed=3, scale=(0.25, 0.5))
    assert scaled.shape == plain.shape == (3, 64, 64)
    # averaging many noisy pixels into one: the downscaled crop is much smoother
    assert np.abs(np.diff(scaled, axis=-1)).mean() < 0.6 * np.abs(np.diff(plain, axis=-1)).mean()
    assert np.array_equal(fit_to_size(image, (64, 64), "crop", seed=None, scale=(0.25, 0.5)),
                          fit_to_size(image, (64, 64), "crop", seed=None))  # eval: as before
    with pytest.raises(ConfigError, match="scale"):
        ImageFolder(tmp_path, 16, scale=(0.5, 2.0))

    base = torch.utils.data.TensorDataset(torch.rand(10, 3, 16, 16))

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, key):
            index = key[0] if isinstance(key, tuple) else key
            return base[index][0]

    mixed = WithFlat(Plain(), 0.5)
    items = [mixed[(i, s)] for i in range(10) for s in range(4)]
    flat = [x for x in items if float(x.std(dim=(1, 2)).max()) < 0.02 or
            float(np.abs(np.diff(x.numpy(), 2, axis=-1)).max()) < 0.05]
    assert 0.25 * len(items) < len(flat) < 0.75 * len(items)
    assert all(x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1 for x in items)
    assert torch.equal(mixed[(3, 1)], mixed[(3, 1)])  # seeded: the same item again
    assert torch.equal(mixed[3], base[3][0])  # unseeded (evaluation): never replaced
