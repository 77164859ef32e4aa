"""DICOM files and series: the stored integers of every frame, and the headers to write them back.

A DICOM volume is one file (S = NumberOfFrames, 1 for a single image) or a folder holding one
series: the folder's own DICOM files, not its subfolders (S = the number of files). A series is
sorted by position along the slice normal, ImagePositionPatient · (row × column direction of
ImageOrientationPatient), or by InstanceNumber where a file has no position. A series whose
positions repeat (diffusion, fMRI: P positions × V volumes) is ordered (volume, position), the
V files at one position told apart by their InstanceNumber order.

The headers travel as ``meta``: each file as an Explicit VR Little Endian DICOM file without its
PixelData element (cut from the file where it is already so encoded, else re-encoded by pydicom),
length-prefixed and deflated. Messages name files, never the values of their elements: a header
holds patient names and IDs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from clearvae.errors import ClearvaeError, DataError
from clearvae.files import atomic_write

if TYPE_CHECKING:
    from clearvae.data.medical import Lossy

_MAGIC = b"CVDICOM1"
_FILE, _SERIES = b"F", b"S"  # the layout written back: one file, or a folder of files
_MAX_META = 1 << 28  # inflated meta larger than this is refused (deflate bombs)
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_SAME_POSITION = 0.01  # mm: slices closer than this along the normal share a position
_GAP = 1.5  # a step above 1.5x the median spacing means a missing slice
_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR): not an image
_IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate",
                "PatientAddress", "AccessionNumber", "StudyID", "InstitutionName",
                "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                "StudyDescription", "SeriesDescription")


def is_dicom_file(path: Path) -> bool:
    """True for a file ending in .dcm or carrying the DICOM preamble ("DICM" at byte 128)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"
    return False


def series_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (sorted; hidden files and DICOMDIR skipped)."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                      and p.name.upper() != "DICOMDIR" and is_dicom_file(p))
    except OSError as e:
        raise DataError(f"cannot list folder '{folder}': {e.strerror}") from None


@contextlib.contextmanager
def _reading(name: str, ds: Dataset | None = None) -> Iterator[None]:
    """Silence pydicom (its warnings quote element values) and turn its errors into DataError."""
    logger, level = logging.getLogger("pydicom"), logging.getLogger("pydicom").level
    try:
        logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ClearvaeError:
        raise
    except FileNotFoundError:
        raise DataError(f"cannot read DICOM file '{name}': no such file") from None
    except InvalidDicomError:
        raise DataError(f"cannot read '{name}': not a DICOM file (no 'DICM' at byte 128); "
                        "remove it or give a DICOM file") from None
    except Exception as e:  # pydicom and its plugins raise many types; `from None`: the
        # original message may quote element values, and a traceback would print it
        raise DataError(f"cannot read DICOM file '{name}': {_scrub(e, ds)}; the file may be "
                        "truncated or corrupt (replace it), or need another pixel-data "
                        "plugin") from None
    finally:
        logger.setLevel(level)


def _scrub(error: Exception, ds: Dataset | None) -> str:
    """An exception's message without quoted text or the dataset's text values (patient data)."""
    text = re.sub(r"b?'[^']*'|b?\"[^\"]*\"", "'…'", str(error))[:300] or type(error).__name__
    for keyword in _IDENTIFYING if ds is not None else ():
        try:  # top level only: never loads deferred values
            value = str(ds.get(keyword, "") or "")
        except Exception:  # a damaged element (an unknown VR, say) cannot be read: nor shown
            continue
        if len(value) >= 2:
            text = text.replace(value, "…")
    return text


def _int(ds: Dataset, keyword: str) -> int | None:
    """An integer element's value, or None where it is absent, empty or malformed."""
    value = ds.get(keyword)
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _frames(ds: Dataset) -> int:
    return _int(ds, "NumberOfFrames") or 1


def _dtype(ds: Dataset) -> np.dtype:
    """The numpy dtype of a dataset's stored values (BitsAllocated, PixelRepresentation)."""
    signed = _int(ds, "PixelRepresentation") == 1
    return np.dtype(f"{'i' if signed else 'u'}{(_int(ds, 'BitsAllocated') or 0) // 8}")


def _check_image(name: str, ds: Dataset) -> None:
    """Refuse what the codec cannot code: no pixels, floats, then ``_check_format``."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise DataError(f"cannot read '{name}': its pixels are floating-point (FloatPixelData); "
                        "the codec codes stored integers only")
    if "PixelData" not in ds:
        raise DataError(f"cannot read '{name}': it holds no pixel data (a report, presentation "
                        "state or directory?); give an image file")
    _check_format(name, ds)


def _check_format(name: str, ds: Dataset) -> None:
    """Refuse colour, odd bit containers and headers without a size."""
    samples = _int(ds, "SamplesPerPixel") or 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()[:16]
    if samples != 1 or photometric not in _GRAY:
        raise DataError(f"cannot read '{name}': it is a colour image (PhotometricInterpretation "
                        f"{photometric}, {samples} samples per pixel); the medical path codes "
                        "gray (MONOCHROME) images only")
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored") or 0
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        raise DataError(f"cannot read '{name}': BitsAllocated {allocated} / BitsStored {stored} "
                        "is not supported (8, 16 or 32 bits allocated)")
    if (_int(ds, "Rows") or 0) < 1 or (_int(ds, "Columns") or 0) < 1 or _frames(ds) < 1:
        raise DataError(f"cannot read '{name}': its Rows, Columns or NumberOfFrames is missing")


def _pixels(name: str, ds: Dataset) -> np.ndarray:
    """(F, H, W) stored values of a dataset, native byte order; PixelData dropped after."""
    with _reading(name, ds):  # a damaged file meta (a UID that is no syntax) included
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and syntax.is_compressed:
            try:
                decoder = get_decoder(syntax)
                missing = [] if decoder.is_available else decoder.missing_dependencies
            except NotImplementedError:
                missing = ["no pixel-data plugin decodes it"]
            if missing:
                raise DataError(f"cannot decode '{name}': its pixel data is {syntax.name}, "
                                f"and {'; '.join(missing)}; install a plugin, or convert the "
                                "file to an uncompressed transfer syntax")
        a = ds.pixel_array  # stored values: no rescale, no VOI LUT, no MONOCHROME1 inversion
    shape = (_frames(ds), ds.Rows, ds.Columns)
    if a.size != np.prod(shape) or a.dtype.itemsize != _dtype(ds).itemsize:
        raise DataError(f"cannot read '{name}': decoded {a.shape} {a.dtype}, the header says "
                        f"{shape}; the file is corrupt: replace it")
    for keyword in ("PixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]  # the offset tables describe the old encapsulated data
    return a.reshape(shape).astype(a.dtype.newbyteorder("="), copy=False)


def read(path: Path, max_pixels: int) -> tuple[np.ndarray, bytes, int]:
    """(S, H, W) stored values, meta and BitsStored of a DICOM file or a series folder."""
    series = path.is_dir()
    files = series_files(path) if series else [path]
    names = [f.name for f in files] if series else [str(path)]
    datasets = []
    for f, name in zip(files, names):
        with _reading(name):
            ds = pydicom.dcmread(f, defer_size=4096)  # pixel data stays on disk until decoded
            _parse_all(ds)  # a broken element is this file's error now, not the writer's later
        meta = getattr(ds, "file_meta", None)
        if not (series and meta is not None and meta.get("MediaStorageSOPClassUID") == _DIRECTORY):
            datasets.append((name, ds))
    if not datasets:
        raise DataError(f"folder '{path}' holds no DICOM files (files ending in .dcm or with "
                        "'DICM' at byte 128); give a folder holding one series")
    for name, ds in datasets:
        _check_image(name, ds)
    if series:
        _check_series(path, datasets)
        datasets = [datasets[i] for i in _order(path, datasets)]
    pixels = sum(ds.Rows * ds.Columns * _frames(ds) for _, ds in datasets)
    if pixels > max_pixels:  # from the headers, before decoding anything (bombs, lies)
        raise DataError(f"cannot read '{path}': {pixels} pixels is more than {max_pixels}; "
                        "split the series or raise max_pixels")
    cuts = [_cut(ds) for _, ds in datasets]  # before decoding: that loads the pixel data
    values = np.concatenate([_pixels(name, ds) for name, ds in datasets])
    meta = _pack(_SERIES if series else _FILE, datasets, cuts)
    return values, meta, _int(datasets[0][1], "BitsStored") or values.dtype.itemsize * 8


_PIXEL_DATA = 0x7FE00010


def _parse_all(ds: Dataset) -> None:
    """Convert every element of ``ds`` and its file meta (pydicom parses them lazily, on first
    use), into sequences, except the pixel data (decoded later, when needed)."""
    for tag in list(ds.keys()):
        if tag == _PIXEL_DATA:
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _parse_all(item)
    if getattr(ds, "file_meta", None) is not None:
        _parse_all(ds.file_meta)


def _listing(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_series(folder: Path, datasets: list[tuple[str, Dataset]]) -> None:
    """Refuse a folder of several series, of slices of different sizes, or of copies."""
    names = [name for name, _ in datasets]
    by_series = defaultdict(list)
    for name, ds in datasets:
        by_series[str(ds.get("SeriesInstanceUID", ""))].append((name, ds))
    if len(by_series) > 1:
        parts = [f"series number {_int(g[0][1], 'SeriesNumber')} ({len(g)} "
                 f"file{'s' * (len(g) > 1)}, e.g. {g[0][0]})" for g in by_series.values()]
        raise DataError(f"folder '{folder}' holds {len(by_series)} series: {'; '.join(parts)}; "
                        "put each series in a folder of its own and give one folder")
    formats = defaultdict(list)
    for name, ds in datasets:
        formats[(ds.Rows, ds.Columns, _dtype(ds).str, _frames(ds))].append(name)
    if len(formats) > 1:
        parts = [f"{r}x{c} {np.dtype(t).name}" + (f" {f} frames" if f > 1 else "")
                 + f" ({_listing(n, 2)})" for (r, c, t, f), n in formats.items()]
        raise DataError(f"the files of series '{folder}' differ in size or pixel format: "
                        f"{'; '.join(parts)}; a series must hold slices of one size")
    if _frames(datasets[0][1]) > 1:
        raise DataError(f"folder '{folder}' holds multi-frame files ({_listing(names, 2)}); "
                        "give each multi-frame file on its own")
    seen = defaultdict(list)
    for name, ds in datasets:
        seen[str(ds.get("SOPInstanceUID", name))].append(name)
    for group in seen.values():
        if len(group) > 1:
            raise DataError(f"series '{folder}' holds the same instance (SOPInstanceUID) "
                            f"{len(group)} times: {_listing(group)}; remove the copies")


def _order(folder: Path, datasets: list[tuple[str, Dataset]]) -> list[int]:
    """Indices of a series' files in (volume, position) order, after checking it is whole."""
    names = [name for name, _ in datasets]
    numbers = [_int(ds, "InstanceNumber") for _, ds in datasets]
    key = [(n is None, n or 0, name) for n, name in zip(numbers, names)]
    positions = _positions(folder, datasets)
    if positions is None:  # no geometry: InstanceNumber order
        order = sorted(range(len(datasets)), key=key.__getitem__)
        groups = [order]
    else:
        order = sorted(range(len(datasets)), key=lambda i: positions[i])
        groups = [[order[0]]]
        for prev, i in zip(order, order[1:]):
            if positions[i] - positions[prev] > _SAME_POSITION:
                groups.append([])
            groups[-1].append(i)
        groups = [sorted(g, key=key.__getitem__) for g in groups]
    for g in groups:
        for a, b in zip(g, g[1:]):
            if numbers[a] is not None and numbers[a] == numbers[b]:
                where = "" if positions is None else " at the same position"
                raise DataError(f"series '{folder}' holds two slices with InstanceNumber "
                                f"{numbers[a]}{where}: {names[a]}, {names[b]}; remove the copy")
    if positions is None:
        return order
    _check_whole(folder, groups, positions, names)
    return [g[v] for v in range(len(groups[0])) for g in groups]


def _positions(folder: Path, datasets: list[tuple[str, Dataset]]) -> np.ndarray | None:
    """Each slice's position along the first slice's normal, or None if one has no geometry."""
    try:
        ipp = np.array([[float(x) for x in ds.ImagePositionPatient] for _, ds in datasets])
        iop = np.array([[float(x) for x in ds.ImageOrientationPatient] for _, ds in datasets])
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (len(datasets), 3) or iop.shape != (len(datasets), 6):
        return None
    tilted = [name for (name, _), o in zip(datasets, iop) if not np.allclose(o, iop[0], atol=1e-3)]
    if tilted:
        raise DataError(f"series '{folder}' mixes slice orientations (ImageOrientationPatient "
                        f"of {_listing(tilted, 2)} differs from {datasets[0][0]}): a localizer? "
                        "give slices of one orientation")
    return ipp @ np.cross(iop[0, :3], iop[0, 3:])


def _check_whole(folder: Path, groups: list[list[int]], positions: np.ndarray,
                 names: list[str]) -> None:
    """Refuse a series with unequal slice counts per position or a gap in the positions."""
    counts = Counter(len(g) for g in groups)
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        odd = [g for g in groups if len(g) != usual]
        files = [names[i] for g in odd for i in g]
        raise DataError(f"series '{folder}' is not whole: most of its {len(groups)} positions "
                        f"hold {usual} slices, but {len(odd)} hold another number "
                        f"({_listing(files)}); a slice is missing or extra")
    centres = np.array([positions[g[0]] for g in groups])
    steps = np.diff(centres)
    if len(steps) >= 2:
        usual = float(np.median(steps))
        for k in np.flatnonzero(steps > _GAP * usual):
            raise DataError(f"series '{folder}' misses slices between {names[groups[k][0]]} and "
                            f"{names[groups[k + 1][0]]} ({steps[k]:.3g} mm apart, the usual "
                            f"spacing is {usual:.3g} mm); give the whole series")


def _encode(ds: Dataset) -> bytes:
    """A dataset as a DICOM file (Explicit VR Little Endian) in bytes."""
    buffer = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _cut(ds: Dataset) -> bytes | None:
    """The file's own bytes less its PixelData element where that is a plain cut (Explicit VR
    Little Endian, pixel data deferred, not read), else None. A fast path: pydicom takes some
    25 ms to re-encode a big header, a minute for a large series."""
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    if (getattr(ds, "file_meta", {}).get("TransferSyntaxUID") != ExplicitVRLittleEndian
            or 0x7FE00000 in ds or not isinstance(element, RawDataElement)
            or element.value is not None or not isinstance(ds.filename, str)):
        return None
    start, end = element.value_tell - 12, element.value_tell + element.length
    data = Path(ds.filename).read_bytes()
    return data[:start] + data[end:] if data[start : start + 4] == b"\xe0\x7f\x10\x00" else None


def _pack(layout: bytes, datasets: list[tuple[str, Dataset]], cuts: list[bytes | None]) -> bytes:
    """The meta bytes: magic, layout, then deflated length-prefixed headers."""
    parts = []
    for (name, ds), data in zip(datasets, cuts):
        if data is None:
            if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
                ds.file_meta = FileMetaDataset()
            with _reading(name, ds):
                data = _encode(ds)
        parts.append(struct.pack("<I", len(data)) + data)
    return _MAGIC + layout + zlib.compress(b"".join(parts), 9)


def parse_meta(meta: bytes) -> tuple[bool, list[Dataset]]:
    """Parse (untrusted) meta bytes: (is a series, the headers of its files in slice order)."""
    if not meta.startswith(_MAGIC) or meta[len(_MAGIC) : len(_MAGIC) + 1] not in (_FILE, _SERIES):
        raise DataError("the DICOM header data is not clearvae's (bad magic); the file is "
                        "corrupt or not a clearvae file")
    inflater = zlib.decompressobj()
    try:
        blob = inflater.decompress(meta[len(_MAGIC) + 1 :], _MAX_META)
    except zlib.error:
        raise DataError("the DICOM header data is corrupt (cannot inflate it)") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise DataError("the DICOM header data is truncated or larger than "
                        f"{_MAX_META} bytes; the file is corrupt")
    out, at = [], 0
    while at < len(blob):
        (size,) = struct.unpack_from("<I", blob, at) if at + 4 <= len(blob) else (-1,)
        chunk = blob[at + 4 : at + 4 + size]
        if size < 0 or len(chunk) != size:
            raise DataError("the DICOM header data is truncated; the file is corrupt")
        with _reading(f"(header {len(out) + 1})"):
            out.append(pydicom.dcmread(io.BytesIO(chunk)))
            _parse_all(out[-1])
        at += 4 + size
    if not out:
        raise DataError("the DICOM header data holds no header; the file is corrupt")
    return meta[len(_MAGIC)] == _SERIES[0], out


def check(meta: bytes, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check meta against (S, H, W) values of ``dtype``; return BitsStored."""
    return _check_headers(*parse_meta(meta), shape, dtype)


def _check_headers(series: bool, headers: list[Dataset], shape: tuple[int, ...],
                   dtype: np.dtype) -> int:
    """Check parsed headers against (S, H, W) values of ``dtype``; return BitsStored."""
    for i, ds in enumerate(headers):
        with _reading(f"(header {i + 1})", ds):
            _check_format(f"(header {i + 1})", ds)
    frames = len(headers) if series else _frames(headers[0])
    expected = (frames, headers[0].Rows, headers[0].Columns)
    sizes = {(ds.Rows, ds.Columns, _dtype(ds).str, _frames(ds)) for ds in headers}
    if len(sizes) > 1 or (_frames(headers[0]) != 1 if series else len(headers) != 1):
        raise DataError("the DICOM header data describes inconsistent slices; the file is corrupt")
    if tuple(shape) != expected or np.dtype(dtype).kind not in "iu":
        raise DataError(f"values of shape {tuple(shape)} do not fit the DICOM headers, which "
                        f"describe {expected}")
    return _int(headers[0], "BitsStored") or 0


def write(path: Path, meta: bytes, values: np.ndarray, lossy: Lossy | None,
          derived: str | None = None) -> list[Path]:
    """Write (S, H, W) stored values with the headers in ``meta``: one file, or a folder of
    IM00001.dcm, IM00002.dcm, ... for a series (never the original names: they may hold
    patient names). Each instance gets a new SOPInstanceUID; the rest of its header is kept.
    ``derived`` (a description, e.g. "Denoised by clearvae") marks new pixel values made from
    the original's: a new series (one new SeriesInstanceUID for all instances), Image Type
    DERIVED, and the description appended to Derivation Description."""
    series, headers = parse_meta(meta)
    _check_headers(series, headers, values.shape, values.dtype)
    values = _fit(path, headers[0], values)
    if derived is not None:
        uid = generate_uid()
        for ds in headers:
            _mark_derived(ds, derived, uid)
    if not series:
        return [atomic_write(path, _instance(headers[0], values, lossy))]
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError(f"cannot write the series to '{path}': it exists and is not an empty "
                        "folder; give a new folder")
    return [atomic_write(path / f"IM{i + 1:05d}.dcm", _instance(ds, values[i : i + 1], lossy))
            for i, ds in enumerate(headers)]


def _mark_derived(ds: Dataset, description: str, series_uid: str) -> None:
    """PS3.3 C.7.6.1.1.2: pixel values derived from another image's are Image Type DERIVED; a
    new series holds them (C.7.3.1: a series is one modality's images of one acquisition or
    derivation), so the original and the derived images can sit side by side in an archive."""
    ds.SeriesInstanceUID = series_uid
    image_type = [str(v) for v in _values(ds, "ImageType")]
    ds.ImageType = ["DERIVED", *image_type[1:]] if len(image_type) > 1 else ["DERIVED", "SECONDARY"]
    before = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = (f"{before}; {description}" if before else description)[-1024:]
    if "SeriesDescription" in ds:  # LO: 64 characters
        ds.SeriesDescription = f"{ds.SeriesDescription} {description.split()[0].lower()}"[:64]


def _fit(path: Path, ds: Dataset, values: np.ndarray) -> np.ndarray:
    """``values`` in the header's dtype, little-endian, after checking they fit BitsStored."""
    dtype, bits = _dtype(ds), _int(ds, "BitsStored") or 0
    signed = dtype.kind == "i"
    low, high = -(1 << (bits - 1)) if signed else 0, (1 << (bits - signed)) - 1
    if values.dtype.kind not in "iu":
        raise DataError(f"cannot write '{path}': DICOM values must be integers, got {values.dtype}")
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise DataError(f"cannot write '{path}': values {values.min()}..{values.max()} do not fit "
                        f"BitsStored {bits} ({low}..{high}); clip them to the stored range")
    return values.astype(dtype.newbyteorder("<"))


def _instance(ds: Dataset, frames: np.ndarray, lossy: Lossy | None) -> bytes:
    """One DICOM file: ``ds`` (changed in place) with ``frames`` as uncompressed PixelData and a
    new instance UID."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # PS3.10 7.1: the writer
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    data = frames.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # values have even length
    ds["PixelData"].VR = "OB" if frames.dtype.itemsize == 1 else "OW"
    if lossy is not None:
        _mark_lossy(ds, lossy)
    with _reading("(output)", ds):
        return _encode(ds)


def _values(ds: Dataset, keyword: str) -> list:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


def _mark_lossy(ds: Dataset, lossy: Lossy) -> None:
    """Record a lossy compression step as PS3.3 C.7.6.1.1.5 asks."""
    # C.7.6.1.1.5: Lossy Image Compression (0028,2110) is "01" once an image has been lossy
    # compressed and is never reset; "if an image is a compressed version of another image",
    # Image Type (0008,0008) value 1 shall be DERIVED and, the predecessor being DICOM, it gets a
    # new SOP Instance UID (done for every instance). Ratio (0028,2112) and Method (0028,2114)
    # are multi-valued after successive lossy steps, in corresponding order: ours is appended.
    # The ratio should also be given in Derivation Description (0008,2111), "for historical
    # reasons". The standard asks for no new Series Instance UID: the series is kept.
    ratio = f"{lossy.ratio:.6g}"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*_values(ds, "LossyImageCompressionRatio"), ratio]
    ds.LossyImageCompressionMethod = [*_values(ds, "LossyImageCompressionMethod"), lossy.method]
    image_type = [str(v) for v in _values(ds, "ImageType")]
    ds.ImageType = ["DERIVED", *image_type[1:]] if len(image_type) > 1 else ["DERIVED", "SECONDARY"]
    note = f"Lossy compression {lossy.method}, ratio {ratio}:1"
    before = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = (f"{before}; {note}" if before else note)[-1024:]  # ST: 1024
