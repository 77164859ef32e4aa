"""NIfTI-1 and NIfTI-2 files (.nii, .nii.gz): the raw stored integers, and the header to write
them back byte for byte.

An array of shape (X, Y, Z, T, ...) gives S = Z * T * ... slices of (H, W) = (X, Y): slice s is
``data[:, :, z, t]`` with s = t * Z + z (all slices of volume 0, then volume 1, ...), its rows
the first array axis, unflipped and untransposed. Values are the raw ones, before
scl_slope / scl_inter (``dataobj.get_unscaled()``), in the file's integer dtype.

``meta`` is the file's first vox_offset bytes: the header block and its extensions. Writing puts
those bytes back and the raw values after them, so header, affine, qform/sform codes and scaling
come back unchanged; going through nibabel's writer instead would recompute the scaling.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header
from nibabel.openers import ImageOpener

from clearvae.errors import ClearvaeError, DataError
from clearvae.files import atomic_write

_MAGIC = b"CVNIFTI1"
_MAX_HEADER = 1 << 24  # vox_offset beyond 16 MiB (header + extensions) is refused


def is_nifti(path: Path) -> bool:
    """True for a name ending in .nii or .nii.gz (any letter case)."""
    return path.name.lower().endswith((".nii", ".nii.gz"))


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Silence nibabel's warnings and turn its errors (and gzip's) into DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ClearvaeError:
        raise
    except FileNotFoundError:
        raise DataError(f"cannot read NIfTI file '{name}': no such file") from None
    except Exception as e:  # nibabel, gzip and zlib raise many types; quoted text dropped:
        # the header's descrip / intent_name may hold anything
        text = re.sub(r"b?'[^']*'|b?\"[^\"]*\"", "'…'", str(e))[:300] or type(e).__name__
        raise DataError(f"cannot read NIfTI file '{name}': {text}; the file may be truncated "
                        "or corrupt: replace it") from None


def _header_class(prefix: bytes) -> type[Nifti1Header]:
    """Nifti1Header or Nifti2Header, from sizeof_hdr (348 or 540, either byte order)."""
    for klass, size in ((Nifti1Header, 348), (Nifti2Header, 540)):
        if prefix[:4] in (struct.pack("<i", size), struct.pack(">i", size)):
            return klass
    raise DataError("the NIfTI header data is neither NIfTI-1 nor NIfTI-2; the file is corrupt")


def _layout(name: str, header: Nifti1Header, max_pixels: int | None) -> tuple[tuple[int, ...],
                                                                            np.dtype]:
    """The array shape and stored dtype a header describes, after the checks the codec needs."""
    shape, dtype = tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype()
    if len(shape) < 2 or min(shape) < 1:
        raise DataError(f"cannot read '{name}': its shape {shape} holds no 2-D slices")
    if max_pixels is not None and math.prod(shape) > max_pixels:  # before reading any data
        raise DataError(f"cannot read '{name}': shape {shape} is more than {max_pixels} "
                        "voxels; crop it or raise max_pixels")
    if dtype.kind not in "iu":
        what = "floating-point" if dtype.kind == "f" else f"{dtype} (RGB or complex)"
        raise DataError(f"cannot read '{name}': its voxels are {what}; the codec codes stored "
                        "integers only: convert the file to an integer type first")
    return shape, dtype


def read(path: Path, max_pixels: int) -> tuple[np.ndarray, bytes, int]:
    """(S, H, W) raw stored values, meta and the dtype's bits of a NIfTI file."""
    with _reading(str(path)):
        image = nib.load(path, mmap=False)  # reads the header only
        if not isinstance(image, nib.Nifti1Image):  # Nifti2Image derives from it
            raise DataError(f"cannot read '{path}': not a single-file NIfTI image")
        shape, dtype = _layout(str(path), image.header, max_pixels)
        offset = int(image.dataobj.offset)
        if offset > _MAX_HEADER:
            raise DataError(f"cannot read '{path}': its header and extensions take {offset} "
                            "bytes; the file is corrupt or not an image")
        with ImageOpener(path) as f:
            prefix = f.read(offset)
        raw = np.asarray(image.dataobj.get_unscaled())
    if len(prefix) != offset or raw.shape != shape:
        raise DataError(f"cannot read '{path}': the file is truncated; replace it")
    return _slices(raw), _MAGIC + prefix, dtype.itemsize * 8


def _slices(raw: np.ndarray) -> np.ndarray:
    """(X, Y, Z, T, ...) -> (S, X, Y) with s = t * Z + z, native byte order."""
    flat = raw.reshape(*raw.shape[:2], -1, order="F")  # Fortran order: z fastest, then t
    return np.ascontiguousarray(np.moveaxis(flat, 2, 0)).astype(raw.dtype.newbyteorder("="))


def parse_meta(meta: bytes) -> Nifti1Header:
    """Parse (untrusted) meta bytes into the NIfTI header they hold (extensions included)."""
    if not meta.startswith(_MAGIC):
        raise DataError("the NIfTI header data is not clearvae's (bad magic); the file is "
                        "corrupt or not a clearvae file")
    prefix = meta[len(_MAGIC) :]
    klass = _header_class(prefix)
    with _reading("(header)"):
        parsed = klass.from_fileobj(io.BytesIO(prefix), check=True)
    if int(parsed.get_data_offset()) not in (0, len(prefix)) or len(prefix) < klass.sizeof_hdr:
        raise DataError("the NIfTI header data is truncated; the file is corrupt")
    return parsed


def check(meta: bytes, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check meta against (S, H, W) values of ``dtype``; return the stored dtype's bits."""
    return _fitting(meta, shape, dtype)[1].itemsize * 8


def _fitting(meta: bytes, shape: tuple[int, ...], dtype: np.dtype) -> tuple[tuple[int, ...],
                                                                             np.dtype]:
    """The array shape and stored dtype of meta's header, checked against (S, H, W) values."""
    array_shape, stored = _layout("(header)", parse_meta(meta), None)
    expected = (math.prod(array_shape[2:]), *array_shape[:2])
    if tuple(shape) != expected or np.dtype(dtype).kind not in "iu":
        raise DataError(f"values of shape {tuple(shape)} do not fit the NIfTI header, which "
                        f"describes {expected} slices of {stored}")
    return array_shape, stored


def write(path: Path, meta: bytes, values: np.ndarray) -> list[Path]:
    """Write (S, H, W) raw values after the header bytes in ``meta``: .nii.gz or .nii by name."""
    if not is_nifti(path):
        raise DataError(f"cannot write '{path}': a NIfTI file's name must end in .nii or .nii.gz")
    array_shape, stored = _fitting(meta, values.shape, values.dtype)
    info = np.iinfo(stored)
    if values.size and (int(values.min()) < info.min or int(values.max()) > info.max):
        raise DataError(f"cannot write '{path}': values {values.min()}..{values.max()} do not "
                        f"fit the file's {stored.name}; clip them to its range")
    array = np.moveaxis(values, 0, 2).reshape(array_shape, order="F").astype(stored)
    data = meta[len(_MAGIC) :] + array.tobytes(order="F")
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return [atomic_write(path, data)]
