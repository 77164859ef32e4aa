"""Data: image files, folders, MNIST-style digits and drawn digits, opened by one
``open_dataset``. Every dataset serves float32 (C, H, W) images in [0, 1] and takes the key
``index`` or ``(index, seed)`` (the seed places a random crop)."""

from clearvae.data.images import (
    IMAGE_EXTENSIONS,
    FloatImages,
    ImageFolder,
    fit_to_size,
    list_images,
    read_image,
    read_image_bit_depth,
    write_image,
)
from clearvae.data.mnist import (
    TensorImages,
    download_mnist,
    load_digits_csv,
    load_mnist,
    load_mnist_labels,
    read_idx,
)
from clearvae.data.registry import open_dataset
from clearvae.data.synthetic import SyntheticDigits

__all__ = [
    "IMAGE_EXTENSIONS",
    "FloatImages",
    "ImageFolder",
    "SyntheticDigits",
    "TensorImages",
    "download_mnist",
    "fit_to_size",
    "list_images",
    "load_digits_csv",
    "load_mnist",
    "load_mnist_labels",
    "open_dataset",
    "read_idx",
    "read_image",
    "read_image_bit_depth",
    "write_image",
]
