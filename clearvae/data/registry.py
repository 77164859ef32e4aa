"""``open_dataset``: the one way the trainer, evaluator and CLI turn a ``--data`` value into a
dataset of (C, H, W) float32 images in [0, 1]."""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from clearvae.data.images import ImageFolder, Mode, ValueRange, check_fit, split_key
from clearvae.data.mnist import (
    TensorImages,
    find_mnist,
    load_digits_csv,
    load_mnist,
    load_mnist_labels,
)
from clearvae.data.synthetic import SyntheticDigits
from clearvae.errors import ConfigError, DataError

SYNTHETIC = "synthetic-digits"
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")
KINDS = ("a folder of images, a folder with MNIST IDX files, a digits .csv or .csv.gz file, "
         f"or {SYNTHETIC}[:N]")


def open_dataset(spec: str, split: str = "train", *,
                 size: int | tuple[int, int] | None = None, mode: Mode = "crop",
                 channels: int | None = None, on_error: Literal["raise", "skip"] = "raise",
                 preload: bool = False, value_range: ValueRange = "container",
                 context: int = 0, scale: tuple[float, float] | None = None,
                 ) -> torch.utils.data.Dataset:
    """The dataset that ``spec`` names, its images cut to ``size`` as ``mode`` says.

    ``spec`` is ``synthetic-digits[:N]``, a digits CSV file, a folder holding MNIST IDX
    files (``split`` picks train or t10k), or any other folder of images (RGB unless
    ``channels`` says otherwise); several of them joined by commas are used together.
    ``on_error``, ``preload`` (decode every file once, up front, and keep the pixels in
    memory), ``value_range`` and ``scale`` (random downscaling of crops, ``ImageFolder``)
    apply to image folders. ``context`` k > 0
    serves stacks of 2k + 1 slices for 2.5-D models: neighbours from DICOM / NIfTI volumes,
    the image repeated for everything else (``Repeated``).
    """
    spec = str(spec)
    if "," in spec:
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        return Concat([open_dataset(p, split, size=size, mode=mode, channels=channels,
                                    on_error=on_error, preload=preload,
                                    value_range=value_range, context=context, scale=scale)
                       for p in parts])
    if context:
        from clearvae.data import medical

        path = Path(spec).expanduser()
        if medical.holds_medical(path):
            return medical.MedicalSlices(path, check_fit(size, mode), mode, context=context)
        return Repeated(open_dataset(spec, split, size=size, mode=mode, channels=channels,
                                     on_error=on_error, preload=preload,
                                     value_range=value_range, scale=scale), 2 * context + 1)
    fit = {"size": size, "mode": mode, "channels": channels}
    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        digits = SyntheticDigits(_synthetic_count(spec))
        return TensorImages(digits.images, digits.labels, **fit)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"dataset '{spec}' does not exist: give {KINDS}")
    if path.is_file():
        if path.name.lower().endswith((".csv", ".csv.gz")):
            return TensorImages(*load_digits_csv(path), **fit)
        raise DataError(f"cannot use the file '{spec}' as a dataset: give {KINDS}")
    if split in ("train", "test") and find_mnist(path, split):
        labels = load_mnist_labels(path, split) if find_mnist(path, split, "labels") else None
        return TensorImages(load_mnist(path, split), labels, **fit)
    other = {"train": "test", "test": "train"}.get(split)
    if other and find_mnist(path, other):
        raise DataError(f"'{spec}' holds MNIST IDX files for the {other} split but not for "
                        f"'{split}'; get them with clearvae.data.download_mnist('{spec}', "
                        f"'{split}'), or use a digits CSV file for training")
    from clearvae.data import medical

    if medical.holds_medical(path):  # DICOM / NIfTI: their slices, at their own bit depth
        return medical.MedicalSlices(path, check_fit(size, mode), mode)
    splits = sorted(p.name for p in path.iterdir()
                    if p.is_dir() and p.name.lower() in SPLIT_FOLDERS)
    if splits:  # a parent of split folders: taking all would mix training and test images
        raise DataError(f"'{spec}' holds the split folders {', '.join(splits)}: give one of "
                        f"them, e.g. '{path / splits[0]}'")
    return ImageFolder(path, size, mode, channels or 3, on_error, preload, value_range, scale)


class WithFlat(torch.utils.data.Dataset):
    """``dataset`` with a share of its seeded items replaced by flat and smooth images of the
    same shape: a constant colour (black, white or random) or a linear ramp between two
    colours, some with faint noise. Photos hold few such areas, and a codec that has not seen
    them decodes them as faint texture (docs/benchmarks.md, block seams and flat areas)."""

    def __init__(self, dataset: torch.utils.data.Dataset, share: float) -> None:
        self.dataset, self.share = dataset, share

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            return self.dataset[key]
        rng = np.random.default_rng([index % len(self), seed, 0xF1A7])
        if rng.random() >= self.share:
            return self.dataset[key]
        like = self.dataset[key]  # (C, H, W): the shape (and a crop not used)
        c, h, w = like.shape
        kind = rng.integers(4)
        if kind == 0:  # black or white
            a = b = np.full(c, float(rng.integers(2)))
        elif kind == 1:  # one colour
            a = b = rng.random(c)
        else:  # a ramp between two colours
            a, b = rng.random(c), rng.random(c)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[:h, :w]
        t = (np.cos(angle) * xx / max(w - 1, 1) + np.sin(angle) * yy / max(h - 1, 1))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
        image = a[:, None, None] + (b - a)[:, None, None] * t[None]
        if kind == 3:  # faint sensor-like noise
            image = image + rng.normal(0, rng.uniform(0.5, 2.0) / 255, image.shape)
        return torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))


class Repeated(torch.utils.data.Dataset):
    """Each (C, H, W) image of ``dataset`` as ``times`` copies along the channels: a 2-D image
    as a stack of identical slices, for 2.5-D models."""

    def __init__(self, dataset: torch.utils.data.Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        return self.dataset[key].repeat(self.times, 1, 1)


class Concat(torch.utils.data.Dataset):
    """Datasets one after another; keys are ``index`` or ``(index, seed)`` as everywhere."""

    def __init__(self, parts: list[torch.utils.data.Dataset]) -> None:
        self.parts = parts
        self.ends = list(itertools.accumulate(len(p) for p in parts))

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        part = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[part - 1] if part else 0)
        return self.parts[part][(local, seed) if seed is not None else local]


def _synthetic_count(spec: str) -> int:
    """N in ``synthetic-digits:N`` (10 000 without it)."""
    _, _, count = spec.partition(":")
    if not count:
        return 10000
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"'{spec}': the number of synthetic digits must be a positive "
                          f"integer, as in {SYNTHETIC}:5000")
    return int(count)


class Subset(torch.utils.data.Dataset):
    """The items ``indices`` of ``dataset``, under keys ``index`` or ``(index, seed)``."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key, len(self))
        inner = self.indices[index]
        return self.dataset[inner if seed is None else (inner, seed)]


def hold_out(dataset: torch.utils.data.Dataset, share: float,
             seed: int) -> tuple[Subset, Subset]:
    """(train, validation): a random ``share`` of the items, at least one, held out; the same
    split for the same seed, so that a resumed run validates on the same items."""
    n = len(dataset)
    held = max(1, round(share * n))
    if held >= n:
        raise ConfigError(f"data.val_share {share} holds out {held} of the {n} training "
                          "images, leaving none to train on: lower it, or add images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 0x5EED)).tolist()
    return Subset(dataset, sorted(order[held:])), Subset(dataset, sorted(order[:held]))
