"""MNIST-style digits: IDX files (official MNIST), their download, and digits CSV files.

Digit sets are small enough to hold in memory as one uint8 tensor (N, C, H, W);
``TensorImages`` serves such a tensor as a dataset of float32 images in [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from clearvae.data.images import (
    Mode,
    check_fit,
    convert_channels,
    split_key,
    to_image_tensor,
)
from clearvae.errors import ConfigError, DataError
from clearvae.files import atomic_write

Split = Literal["train", "test"]
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MD5 = {  # of the canonical gzip files on the mirrors
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "IDX file format")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CSV_FIELDS = 28 * 28 + 1  # 784 pixels and the label


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic 1f 8b."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read '{path}': {e}; the file is damaged, fetch it again") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) as a numpy array of its stored type and shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise DataError(f"'{path}' is not an IDX file (bad magic number); give the MNIST "
                        "files as published, e.g. t10k-images-idx3-ubyte.gz")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"'{path}' is truncated inside its header; download it again")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = len(data) - 4 - 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if body != expected:
        what = "truncated" if body < expected else "longer than its header says"
        raise DataError(f"'{path}' is {what}: shape {dims} needs {expected} bytes of data, "
                        f"found {body}; download it again")
    array = np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable


def _mnist_names(split: str, kind: Literal["images", "labels"]) -> tuple[str, str]:
    """The file names (plain, gzipped) of one MNIST split and kind."""
    if split not in ("train", "test"):
        raise ConfigError(f"MNIST split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    name = f"{prefix}-images-idx3-ubyte" if kind == "images" else f"{prefix}-labels-idx1-ubyte"
    return name, name + ".gz"


def find_mnist(root: str | os.PathLike, split: str,
               kind: Literal["images", "labels"] = "images") -> Path | None:
    """The MNIST IDX file of ``split`` and ``kind`` in ``root``, or None if there is none."""
    for name in _mnist_names(split, kind):
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def _load_mnist_file(root: str | os.PathLike, split: str,
                     kind: Literal["images", "labels"]) -> np.ndarray:
    """The array in an MNIST IDX file, with a DataError saying what to do if it is missing."""
    path = find_mnist(root, split, kind)
    if path is None:
        names = " or ".join(_mnist_names(split, kind))
        raise DataError(f"no MNIST {split} {kind} in '{root}': expected {names}; get them with "
                        f"clearvae.data.download_mnist('{root}', '{split}')")
    array = read_idx(path)
    want_ndim = 3 if kind == "images" else 1
    if array.dtype != np.uint8 or array.ndim != want_ndim:
        raise DataError(f"'{path}' holds {array.dtype} data of shape {array.shape}; MNIST "
                        f"{kind} are uint8 with {want_ndim} dimensions")
    return array


def load_mnist(root: str | os.PathLike, split: Split) -> torch.Tensor:
    """MNIST images of ``split`` from the IDX files in ``root``: uint8 (N, 1, 28, 28)."""
    return torch.from_numpy(_load_mnist_file(root, split, "images")).unsqueeze(1)


def load_mnist_labels(root: str | os.PathLike, split: Split) -> torch.Tensor:
    """MNIST labels of ``split`` from the IDX files in ``root``: int64 (N,)."""
    return torch.from_numpy(_load_mnist_file(root, split, "labels").astype(np.int64))


def _fetch(url: str) -> bytes:
    """The body of ``url`` (replaced in tests: this machine may have no network)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _download(name: str, root: Path) -> bytes:
    """``name`` from the first mirror that serves it with the right MD5."""
    problems = []
    for url in (mirror + name for mirror in MIRRORS):
        try:
            data = _fetch(url)
        except (OSError, ValueError, http.client.HTTPException) as e:
            problems.append(f"{url}: {e}")
            continue
        digest = hashlib.md5(data).hexdigest()
        if digest == MD5[name]:
            return data
        problems.append(f"{url}: checksum {digest}, expected {MD5[name]}")
    raise DataError(f"could not download {name} ({'; '.join(problems)}). Download it by hand "
                    f"from {MIRRORS[0]}{name} (or another mirror) into '{root}'")


def download_mnist(root: str | os.PathLike, split: Split) -> None:
    """Download the MNIST images and labels of ``split`` into ``root``, checking their MD5."""
    root = Path(root)
    for kind in ("images", "labels"):
        name = _mnist_names(split, kind)[1]
        target = root / name
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == MD5[name]:
            continue  # already there and intact
        atomic_write(target, _download(name, root))


def load_digits_csv(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits from a CSV (gzipped or not) of rows "784 pixels 0-255, label", header optional.

    A header whose first column is ``label`` puts the label first (Kaggle's layout).
    Returns uint8 images (N, 1, 28, 28) and int64 labels (N,).
    """
    path = Path(path)
    try:
        lines = _read_bytes(path).decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not a text CSV file: {e}") from e
    first = lines[0].split(",")[0].strip().strip('"') if lines else ""
    has_header = bool(first) and not first.lstrip("+-").isdigit()
    label_first = has_header and first.lower() == "label"
    numbered = [(n, line) for n, line in enumerate(lines, start=1)
                if line.strip() and not (has_header and n == 1)]
    if not numbered:
        raise DataError(f"'{path}' holds no digit rows")
    values = np.empty((len(numbered), CSV_FIELDS), np.int32)  # parsed row by row: bounded memory
    for row, (number, line) in enumerate(numbered):
        fields = line.split(",")
        if len(fields) != CSV_FIELDS:
            raise DataError(f"'{path}' line {number}: expected {CSV_FIELDS} comma-separated "
                            f"values (784 pixels and a label), found {len(fields)}")
        try:
            values[row] = fields
        except (ValueError, OverflowError) as e:
            raise DataError(f"'{path}' line {number}: every value must be an integer "
                            f"({e})") from None
    if label_first:
        labels, pixels = values[:, 0], values[:, 1:]
    else:
        labels, pixels = values[:, -1], values[:, :-1]
    bad_rows = np.flatnonzero(((pixels < 0) | (pixels > 255)).any(axis=1) | (labels < 0))
    if bad_rows.size:
        raise DataError(f"'{path}' line {numbered[bad_rows[0]][0]}: pixels must be 0-255 and "
                        "the label non-negative")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(labels.astype(np.int64))


class TensorImages(torch.utils.data.Dataset):
    """A uint8 (N, C, H, W) tensor served as float32 (C, H, W) images in [0, 1].

    Keys are ``index`` or ``(index, seed)`` like ``ImageFolder``; the seed only places a
    random crop, so without a ``size`` it is ignored.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                 size: int | tuple[int, int] | None = None, mode: Mode = "crop",
                 channels: int | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"TensorImages needs uint8 images (N, C, H, W) with C = 1 or 3, got "
                            f"{images.dtype} {tuple(images.shape)}")
        if labels is not None and len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        if channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 (gray), 3 (RGB) or None, got {channels}")
        self.images, self.labels = images, labels
        self.size, self.mode, self.channels = check_fit(size, mode), mode, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key, len(self))
        pixels = self.images[index].numpy().transpose(1, 2, 0)  # (H, W, C)
        pixels = convert_channels(pixels, self.channels)
        return to_image_tensor(pixels, self.size, self.mode, seed)
