"""Medical image I/O: DICOM files, multi-frame files and series, NIfTI, gray PNG/TIFF; exact
stored values in, the same format (and headers) out, and every refusal speaking without
patient data."""

from __future__ import annotations

import copy
import gzip
import io
import logging
import random
import struct
import time
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nibabel_data
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from clearvae.data import dicom
from clearvae.data.medical import (
    Lossy,
    Volume,
    is_medical,
    read_volume,
    volume_from_meta,
    write_volume,
)
from clearvae.errors import ConfigError, DataError
from tests.conftest import shared

NAME, PID = "Doe^Jane", "PID12345"
LOSSY_KEYWORDS = ("LossyImageCompression", "LossyImageCompressionRatio",
                  "LossyImageCompressionMethod", "ImageType", "DerivationDescription")


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


def mr(**changes) -> Dataset:
    """MR_small.dcm (64x64 int16 values 127..2145, axial) with ``changes`` applied."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def new_uids(ds: Dataset) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def make_series(folder: Path, positions: list[float], numbers: list[int] | None = None,
                names: list[str] | None = None, orientation=(1, 0, 0, 0, 1, 0),
                **changes) -> list[Path]:
    """A series from MR_small: slice i at ``positions[i]`` mm along the normal of
    ``orientation``, its values MR_small's + 7 i (so that slices can be told apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    base, series_uid = mr(**changes), generate_uid()
    pixels = base.pixel_array.copy()
    normal = np.cross(orientation[:3], orientation[3:])
    numbers = numbers or list(range(1, len(positions) + 1))
    names = names or [f"s{i:03d}.dcm" for i in range(len(positions))]
    paths = []
    for i, (z, n, name) in enumerate(zip(positions, numbers, names)):
        ds = copy.deepcopy(base)  # Dataset.copy() shares the elements
        new_uids(ds).SeriesInstanceUID = series_uid
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(v) for v in np.array([-80.0, -90.0, 0.0]) + z * normal]
        ds.InstanceNumber = n
        ds.PixelData = (pixels + 7 * i).astype(np.int16).tobytes()
        paths.append(save(ds, folder / name))
    return paths


def slice_index(volume: Volume) -> list[int]:
    """For each slice of a series made by ``make_series``, which file i it came from."""
    base = mr().pixel_array.astype(int)
    return [int(round((s.astype(int) - base).mean() / 7)) for s in volume.values]


def assert_same_header(before: Dataset, after: Dataset, lossy: bool = False) -> None:
    """Every element equal, bar PixelData, the instance UIDs (new, valid) and, when
    ``lossy``, the lossy attributes; file meta likewise (bar the writer's own UIDs)."""
    skip = {"PixelData", "SOPInstanceUID", *(LOSSY_KEYWORDS if lossy else ())}
    kept = [e.keyword or e.tag for e in before if e.keyword not in skip]
    assert kept == [e.keyword or e.tag for e in after if e.keyword not in skip]
    for key in kept:
        assert before[key] == after[key], key
    assert after.SOPInstanceUID != before.SOPInstanceUID and UID(after.SOPInstanceUID).is_valid
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    writer = {"MediaStorageSOPInstanceUID", "ImplementationClassUID", "ImplementationVersionName",
              "FileMetaInformationGroupLength", "TransferSyntaxUID"}
    for e in before.file_meta:
        if e.keyword not in writer:
            assert after.file_meta[e.tag] == e, e.keyword
    assert after.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


# ---------------------------------------------------------------- what is medical

def test_is_medical_by_content_not_only_name(tmp_path: Path) -> None:
    renamed = tmp_path / "scan.bin"
    renamed.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "a.png")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "x").write_bytes(renamed.read_bytes())
    (tmp_path / "empty").mkdir()
    assert is_medical(renamed) and is_medical(pydicom_file("MR_small.dcm"))
    assert is_medical(tmp_path / "series") and is_medical(Path(nibabel_data) / "example4d.nii.gz")
    for path in ["notes.txt", "a.png", "empty", "missing.dcm"]:
        assert not is_medical(tmp_path / path), path
    assert read_volume(renamed).values.shape == (1, 64, 64)  # any extension, by its preamble


# ---------------------------------------------------------------- DICOM files

def test_single_file_gives_stored_values_unscaled() -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    v = read_volume(pydicom_file("MR_small.dcm"))
    assert v.kind == "dicom" and v.values.shape == (1, 64, 64) and v.values.dtype == np.int16
    assert (v.values[0] == ds.pixel_array).all()
    assert (v.bits, v.offset, v.stored_bits) == (12, 0, 16)  # 127..2145
    assert (v.unsigned() == v.values).all() and v.unsigned().dtype == np.uint16


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_padded.dcm"])
def test_compressed_and_other_syntaxes_give_the_same_values(name: str) -> None:
    reference = read_volume(pydicom_file("MR_small.dcm"))
    v = read_volume(pydicom_file(name))
    assert v.values.dtype == np.dtype("int16") and v.values.dtype.isnative
    assert (v.values == reference.values).all() and v.bits == reference.bits


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_other_syntaxes_are_written_uncompressed_with_their_headers(name: str,
                                                                    tmp_path: Path) -> None:
    v = read_volume(pydicom_file(name))  # headers re-encoded by pydicom, not cut from the file
    [out] = write_volume(tmp_path / "out.dcm", v, v.values)
    assert_same_header(pydicom.dcmread(pydicom_file(name)), pydicom.dcmread(out))
    assert (read_volume(out).values == read_volume(pydicom_file("MR_small.dcm")).values).all()


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm"])
def test_compressed_multi_frame_gives_the_same_frames(name: str) -> None:
    reference = read_volume(pydicom_file("emri_small.dcm"))
    assert reference.values.shape == (10, 64, 64) and reference.stored_bits == 12
    assert (read_volume(pydicom_file(name)).values == reference.values).all()


def test_jpeg_baseline_gray_is_read_through_the_pillow_plugin(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    pixels = (mr().pixel_array // 16).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=90)
    ds = mr(BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    v = read_volume(save(ds, tmp_path / "jpeg.dcm"))
    expected = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())))
    assert v.values.dtype == np.uint8 and (v.values[0] == expected).all()
    back = pydicom.dcmread(write_volume(tmp_path / "out.dcm", v, v.values)[0])
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.BitsAllocated == 8 and (back.pixel_array == expected).all()


def test_missing_plugin_is_named() -> None:
    path = pydicom_file("JPEG-LL.dcm")  # JPEG Lossless, Process 14: needs pylibjpeg-libjpeg/gdcm
    from pydicom.pixels import get_decoder

    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG Lossless plugin is installed here")
    with pytest.raises(DataError, match="JPEG-LL.dcm.*JPEG Lossless.*install"):
        read_volume(path)


def test_single_file_round_trip_keeps_every_element(tmp_path: Path) -> None:
    before = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    v = read_volume(pydicom_file("MR_small.dcm"))
    written = write_volume(tmp_path / "out.dcm", v, v.values)
    assert written == [tmp_path / "out.dcm"]
    after = pydicom.dcmread(written[0])
    assert_same_header(before, after)
    assert "LossyImageCompressionRatio" not in after and "LossyImageCompression" not in after
    again = read_volume(written[0])
    assert (again.values == v.values).all() and again.values.dtype == v.values.dtype
    assert (again.bits, again.offset, again.stored_bits) == (v.bits, v.offset, v.stored_bits)


def test_multi_frame_round_trip_is_one_file(tmp_path: Path) -> None:
    before = pydicom.dcmread(pydicom_file("emri_small.dcm"))
    v = read_volume(pydicom_file("emri_small.dcm"))
    changed = v.values.copy()
    changed[3] = 4095 - changed[3]  # what a decoder might give: values of the same dtype
    [out] = write_volume(tmp_path / "emri.dcm", v, changed)
    after = pydicom.dcmread(out)
    assert_same_header(before, after)
    assert int(after.NumberOfFrames) == 10 and (after.pixel_array == changed).all()
    assert (read_volume(out).values == changed).all()


def test_lossy_attributes_follow_the_standard_and_append(tmp_path: Path) -> None:
    earlier = mr(LossyImageCompression="01", LossyImageCompressionRatio="5",
                 LossyImageCompressionMethod="ISO_10918_1",
                 ImageType=["ORIGINAL", "PRIMARY", "M"], DerivationDescription="JPEG 5:1")
    path = save(earlier, tmp_path / "in.dcm")
    v = read_volume(path)
    after = pydicom.dcmread(write_volume(tmp_path / "lossy.dcm", v, v.values,
                                         Lossy(12.5))[0])
    assert after.LossyImageCompression == "01"
    assert [float(r) for r in after.LossyImageCompressionRatio] == [5.0, 12.5]
    assert list(after.LossyImageCompressionMethod) == ["ISO_10918_1", "CLEARVAE"]
    assert list(after.ImageType) == ["DERIVED", "PRIMARY", "M"]
    assert "JPEG 5:1" in after.DerivationDescription and "12.5" in after.DerivationDescription
    assert_same_header(earlier, after, lossy=True)
    assert after.SeriesInstanceUID == earlier.SeriesInstanceUID
    plain = pydicom.dcmread(write_volume(tmp_path / "plain.dcm", v, v.values)[0])
    for keyword in LOSSY_KEYWORDS:  # no lossy step: the earlier record stays as it was
        assert plain[keyword] == earlier[keyword]
    first = pydicom.dcmread(write_volume(tmp_path / "first.dcm", read_volume(
        pydicom_file("MR_small.dcm")), v.values, Lossy(8, "MY_CODEC 2"))[0])
    assert first.LossyImageCompressionRatio == 8 and first.LossyImageCompressionMethod == \
        "MY_CODEC 2"
    for bad in [dict(ratio=0), dict(ratio=float("nan")), dict(ratio=2, method="lower"),
                dict(ratio=2, method="X" * 17)]:
        with pytest.raises(ConfigError):
            Lossy(**bad)


def test_signed_values_get_an_offset(tmp_path: Path) -> None:
    ds = mr()
    ds.PixelData = (ds.pixel_array.astype(np.int16) - 1000).tobytes()  # -873..1145
    v = read_volume(save(ds, tmp_path / "signed.dcm"))
    assert v.offset == int(v.values.min()) == -873 and v.bits == (1145 + 873).bit_length()
    assert v.unsigned().min() == 0 and (v.unsigned() == v.values.astype(int) + 873).all()
    [out] = write_volume(tmp_path / "out.dcm", v, v.values)
    assert (read_volume(out).values == v.values).all() and read_volume(out).offset == -873


def test_values_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    v = read_volume(pydicom_file("emri_small.dcm"))  # BitsStored 12
    too_big = v.values.astype(np.int64)
    too_big[0, 0, 0] = 4096
    for values, message in [(too_big, "BitsStored 12"), (v.values[:2], "shape"),
                            (v.values.astype(np.float32), "integers")]:
        with pytest.raises(DataError, match=message):
            write_volume(tmp_path / "x.dcm", v, values)
    assert not (tmp_path / "x.dcm").exists()
    [out] = write_volume(tmp_path / "ok.dcm", v, v.values.astype(np.int64))  # any integer dtype
    assert read_volume(out).values.dtype == np.uint16


# ---------------------------------------------------------------- DICOM series

def test_shuffled_series_comes_out_sorted_by_position(tmp_path: Path) -> None:
    positions = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    shuffled = [3, 0, 5, 1, 4, 2]  # file i sits at positions[shuffled[i]]
    names = [f"zz{random.Random(i).randint(0, 999):03d}_{i}.dcm" for i in range(6)]
    make_series(tmp_path / "s", [positions[k] for k in shuffled], numbers=[9, 8, 7, 6, 5, 4],
                names=names)
    (tmp_path / "s" / "README.txt").write_text("not DICOM")  # ignored
    v = read_volume(tmp_path / "s")
    assert v.values.shape == (6, 64, 64)
    assert [shuffled[i] for i in slice_index(v)] == list(range(6))  # by position, not number


def test_sagittal_series_sorts_along_its_own_normal(tmp_path: Path) -> None:
    # rows along +y, columns along -z: the normal is -x, so larger x comes first
    make_series(tmp_path / "s", [2.0, -4.0, 0.0], orientation=(0, 1, 0, 0, 0, -1))
    assert slice_index(read_volume(tmp_path / "s")) == [1, 2, 0]


def test_series_without_geometry_sorts_by_instance_number(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s", [0.0, 5.0, 10.0], numbers=[3, 1, 2])
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        save(ds, p)
    assert slice_index(read_volume(tmp_path / "s")) == [1, 2, 0]


@pytest.mark.parametrize("interleaved", [False, True])
def test_four_d_series_orders_volume_then_position(tmp_path: Path, interleaved: bool) -> None:
    # 3 positions x 2 volumes; InstanceNumber counts volume-major or position-major
    cells = [(t, p) for t in range(2) for p in range(3)]
    numbers = [1 + (p * 2 + t if interleaved else t * 3 + p) for t, p in cells]
    order = [4, 0, 5, 2, 1, 3]
    make_series(tmp_path / "s", [5.0 * cells[k][1] for k in order],
                numbers=[numbers[k] for k in order])
    v = read_volume(tmp_path / "s")
    assert [cells[order[i]] for i in slice_index(v)] == cells
    [_, headers] = dicom.parse_meta(v.meta)
    assert [int(h.InstanceNumber) for h in headers] == [numbers[k] for k in range(6)]


def test_series_round_trip_writes_numbered_files_with_their_headers(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s", [10.0, 0.0, 5.0], names=["c.dcm", "a.dcm", "b.dcm"])
    v = read_volume(tmp_path / "s")
    written = write_volume(tmp_path / "out", v, v.values, Lossy(20.0))
    assert [p.name for p in written] == ["IM00001.dcm", "IM00002.dcm", "IM00003.dcm"]
    sources = [paths[1], paths[2], paths[0]]  # by position
    uids = set()
    for source, out in zip(sources, written):
        before, after = pydicom.dcmread(source), pydicom.dcmread(out)
        assert_same_header(before, after, lossy=True)
        assert after.LossyImageCompression == "01" and after.ImageType[0] == "DERIVED"
        uids.add(after.SOPInstanceUID)
    assert len(uids) == 3
    again = read_volume(tmp_path / "out")
    assert (again.values == v.values).all() and again.meta != v.meta  # new UIDs
    with pytest.raises(DataError, match="not an empty folder"):
        write_volume(tmp_path / "out", v, v.values)
    (tmp_path / "empty").mkdir()
    assert len(write_volume(tmp_path / "empty", v, v.values)) == 3


def test_missing_slice_is_refused_naming_its_neighbours(tmp_path: Path) -> None:
    make_series(tmp_path / "s", [0.0, 5.0, 10.0, 20.0, 25.0])
    with pytest.raises(DataError, match=r"s002\.dcm and s003\.dcm") as e:
        read_volume(tmp_path / "s")
    assert "10 mm apart" in str(e.value)


def test_four_d_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s", [0.0, 5.0, 10.0] * 2, numbers=[1, 2, 3, 4, 5, 6])
    paths[4].unlink()  # position 5 mm now holds one slice, the others two
    with pytest.raises(DataError, match=r"not whole.*s001\.dcm"):
        read_volume(tmp_path / "s")


def test_duplicates_are_refused_naming_both_files(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "a", [0.0, 5.0, 10.0])
    (tmp_path / "a" / "copy.dcm").write_bytes(paths[1].read_bytes())
    with pytest.raises(DataError, match=r"SOPInstanceUID.*copy\.dcm, s001\.dcm"):
        read_volume(tmp_path / "a")
    paths = make_series(tmp_path / "b", [0.0, 5.0, 10.0, 5.0], numbers=[1, 2, 3, 2])
    with pytest.raises(DataError, match=r"InstanceNumber 2 at the same position: s001\.dcm, "
                                        r"s003\.dcm"):
        read_volume(tmp_path / "b")


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    make_series(tmp_path / "s", [0.0, 5.0], SeriesNumber=3)
    make_series(tmp_path / "s", [0.0, 5.0, 10.0], names=["t0.dcm", "t1.dcm", "t2.dcm"],
                SeriesNumber=7)
    with pytest.raises(DataError, match="2 series") as e:
        read_volume(tmp_path / "s")
    assert "series number 3 (2 files" in str(e.value)
    assert "series number 7 (3 files" in str(e.value) and "folder of its own" in str(e.value)


def test_slices_of_different_sizes_are_refused(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s", [0.0, 5.0, 10.0])
    ds = pydicom.dcmread(paths[2])
    ds.Rows = ds.Columns = 32
    ds.PixelData = ds.PixelData[: 32 * 32 * 2]
    save(ds, paths[2])
    with pytest.raises(DataError, match=r"64x64 int16 \(s000\.dcm, s001\.dcm\); 32x32"):
        read_volume(tmp_path / "s")


def test_mixed_orientations_and_empty_folders_are_refused(tmp_path: Path) -> None:
    make_series(tmp_path / "s", [0.0, 5.0])
    make_series(tmp_path / "s", [0.0], names=["loc.dcm"], orientation=(0, 1, 0, 0, 0, -1))
    ds = pydicom.dcmread(tmp_path / "s" / "loc.dcm")  # into the same series
    ds.SeriesInstanceUID = pydicom.dcmread(tmp_path / "s" / "s000.dcm").SeriesInstanceUID
    save(ds, tmp_path / "s" / "loc.dcm")
    with pytest.raises(DataError, match="orientations.*loc.dcm"):
        read_volume(tmp_path / "s")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="holds no DICOM files"):
        read_volume(tmp_path / "none")


# ---------------------------------------------------------------- DICOM refusals

@pytest.mark.parametrize("name, message", [
    ("SC_rgb.dcm", "colour image .*RGB"), ("US1_UNCR.dcm", "RGB"),
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL"), ("OBXXXX1A.dcm", "PALETTE COLOR"),
    ("MR_truncated.dcm", "MR_truncated.dcm.*truncated")])
def test_unusable_dicom_files_are_refused(name: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as e:
        read_volume(pydicom_file(name))
    assert name in str(e.value)


def test_header_sizes_are_checked_before_decoding(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 50000  # RLE would decode into 5 GB
    path = save(ds, tmp_path / "bomb.dcm")
    start = time.perf_counter()
    with pytest.raises(DataError, match="bomb.dcm.*more than"):
        read_volume(path)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(DataError, match="4096 pixels is more than 4000"):
        read_volume(pydicom_file("MR_small.dcm"), max_pixels=4000)


def patient_files(tmp_path: Path) -> dict[str, Path]:
    """A named patient's files, each broken in one way."""
    def patient(**changes) -> Dataset:
        return new_uids(mr(PatientName=NAME, PatientID=PID, OtherPatientIDs=PID,
                           InstitutionName=NAME, StudyDescription=NAME, **changes))

    out = {}
    data = save(patient(), tmp_path / "good.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[:-1000])  # inside the pixel data
    out["truncated"] = tmp_path / "truncated.dcm"
    (tmp_path / "garbage.dcm").write_bytes(data[:300] + bytes(range(256)) * 4)
    out["garbage"] = tmp_path / "garbage.dcm"
    out["colour"] = save(patient(PhotometricInterpretation="RGB", SamplesPerPixel=3),
                         tmp_path / "colour.dcm")
    empty = patient()
    del empty.PixelData
    out["no pixels"] = save(empty, tmp_path / "empty.dcm")
    floats = patient()
    del floats.PixelData
    floats.FloatPixelData = np.zeros(64 * 64, np.float32).tobytes()
    out["float"] = save(floats, tmp_path / "float.dcm")
    wide = patient(BitsAllocated=32, BitsStored=32, HighBit=31, PixelRepresentation=0)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        del wide[keyword]
    wide.PixelData = np.full(64 * 64, 1 << 20, np.uint32).tobytes()
    out["bits"] = save(wide, tmp_path / "wide.dcm")
    rle = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    rle.PatientName, rle.PatientID = NAME, PID
    rle.PixelData = rle.PixelData[:200] + b"\xff" * (len(rle.PixelData) - 200)
    out["corrupt RLE"] = save(rle, tmp_path / "rle.dcm")
    for kind, folder in [("duplicate", "dup"), ("mixed", "mixed"), ("gap", "gap")]:
        make_series(tmp_path / folder, [0.0, 5.0, 10.0, 25.0] if kind == "gap" else [0.0, 5.0],
                    PatientName=NAME, PatientID=PID, SeriesDescription=NAME)
        out[kind] = tmp_path / folder
    (tmp_path / "dup" / "again.dcm").write_bytes((tmp_path / "dup" / "s000.dcm").read_bytes())
    make_series(tmp_path / "mixed", [0.0], names=["other.dcm"], PatientName=NAME,
                PatientID=PID)
    return out


def test_refusals_never_show_patient_data(tmp_path: Path, capfd: pytest.CaptureFixture,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    files = patient_files(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind, path in files.items():
            with pytest.raises(DataError) as e:
                read_volume(path)
            message = str(e.value)
            assert path.name in message, (kind, message)
            for secret in (NAME, PID, "Doe", "Jane"):
                assert secret not in message, (kind, message)
            if e.value.__cause__ is not None or e.value.__context__ is not None:
                assert e.value.__suppress_context__, kind  # no chained pydicom text
    out, err = capfd.readouterr()
    shown = out + err + caplog.text + " ".join(str(w.message) for w in caught)
    assert NAME not in shown and PID not in shown


# ---------------------------------------------------------------- meta bytes

def test_volume_from_meta_rebuilds_every_kind(tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).save(png)
    for source, name in [(pydicom_file("emri_small.dcm"), "out.dcm"),
                         (Path(nibabel_data) / "example4d.nii.gz", "out.nii"), (png, "out.png")]:
        v = read_volume(source)
        rebuilt = volume_from_meta(v.kind, v.meta, v.values, v.offset, v.bits, v.stored_bits)
        assert (rebuilt.kind, rebuilt.meta, rebuilt.bits) == (v.kind, v.meta, v.bits)
        [out] = write_volume(tmp_path / name, rebuilt, v.values)
        assert (read_volume(out).values == v.values).all()
        if v.kind != "image":  # an image has no header to disagree with its shape
            with pytest.raises(DataError, match="do not fit"):
                volume_from_meta(v.kind, v.meta, v.values[:, :-1], v.offset, v.bits,
                                 v.stored_bits)
        with pytest.raises(DataError):
            volume_from_meta(v.kind, v.meta, v.values, v.offset, v.bits, v.stored_bits + 1)


def test_corrupt_meta_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    v = read_volume(pydicom_file("MR_small.dcm"))
    n = read_volume(Path(nibabel_data) / "example4d.nii.gz")
    flipped = bytearray(v.meta)
    flipped[len(flipped) // 2] ^= 0xFF
    magic = v.meta[:9]
    cases = [("dicom", v, b""), ("dicom", v, v.meta[:-10]), ("dicom", v, bytes(flipped)),
             ("dicom", v, b"XXXX" + v.meta[4:]), ("dicom", v, magic + zlib.compress(b"\1" * 9)),
             ("dicom", v, magic + zlib.compress(struct.pack("<I", 3) + b"abc")),
             ("nifti", n, n.meta[:100]), ("nifti", n, b"CVNIFTI1" + b"\0" * 400),
             ("nifti", n, v.meta), ("image", v, b"x"), ("other", v, v.meta)]
    for kind, volume, meta in cases:
        with pytest.raises(DataError):
            volume_from_meta(kind, meta, volume.values, volume.offset, volume.bits,
                             volume.stored_bits)
    monkeypatch.setattr(dicom, "_MAX_META", 1000)  # a deflate bomb stops at the limit
    with pytest.raises(DataError, match="larger than 1000"):
        volume_from_meta("dicom", magic + zlib.compress(b"\0" * 100_000), v.values, 0, 12, 16)


def test_meta_of_a_series_is_small(tmp_path: Path) -> None:
    make_series(tmp_path / "s", [5.0 * i for i in range(12)])
    v = read_volume(tmp_path / "s")
    one = len(pydicom.dcmread(tmp_path / "s" / "s000.dcm").PixelData)
    assert len(v.meta) < one  # twelve headers deflate to less than one slice's pixels
    assert "PixelData" not in dicom.parse_meta(v.meta)[1][0]


def test_unsigned_refuses_more_than_16_bits() -> None:
    values = np.array([[[0, 1 << 17]]], np.int32)
    with pytest.raises(DataError, match="18 bits"):
        Volume("image", values, 18, 0, b"", 32).unsigned()
    with pytest.raises(ConfigError):
        Volume("jpeg", values, 18, 0, b"", 32)  # type: ignore[arg-type]


# ---------------------------------------------------------------- NIfTI

def nifti_file(path: Path, data: np.ndarray, slope: float = 1.0, inter: float = 0.0,
               header_only: bool = False, shape: tuple[int, ...] | None = None) -> Path:
    """A single-file NIfTI-1 written byte by byte (nibabel would reset the scaling)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(shape or data.shape)
    affine = np.array([[0, 0, 2.5, -30], [-1.5, 0, 0, 40], [0, 1.5, 0, -20], [0, 0, 0, 1.0]])
    header.set_sform(affine, code=2)
    header.set_qform(affine, code=1)
    header.set_slope_inter(slope, inter)
    header["descrip"] = NAME.encode()
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + (b"" if header_only else data.tobytes(order="F"))
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def test_example4d_slices_and_byte_exact_round_trip(tmp_path: Path) -> None:
    source = Path(nibabel_data) / "example4d.nii.gz"
    image = nib.load(source)
    raw = np.asarray(image.dataobj.get_unscaled())  # (128, 96, 24, 2) int16
    v = read_volume(source)
    assert v.kind == "nifti" and v.values.shape == (48, 128, 96) and v.values.dtype == np.int16
    for s in (0, 5, 23, 24, 47):
        assert (v.values[s] == raw[:, :, s % 24, s // 24]).all()
    assert (v.bits, v.offset, v.stored_bits) == (int(raw.max()).bit_length(), 0, 16)
    original = gzip.decompress(source.read_bytes())
    for name in ("out.nii.gz", "out.nii"):
        [out] = write_volume(tmp_path / name, v, v.values)
        data = out.read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        assert data == original[: len(data)] and len(data) == image.dataobj.offset + raw.nbytes
        back = nib.load(out)
        assert back.header.binaryblock == image.header.binaryblock
        assert list(back.header.extensions) == list(image.header.extensions)
        assert np.array_equal(back.affine, image.affine)
        assert (np.asarray(back.dataobj.get_unscaled()) == raw).all()


def test_signed_nifti_keeps_scaling_and_raw_values(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(-900, 1200, (20, 16, 5), dtype=np.int16)
    source = nifti_file(tmp_path / "signed.nii.gz", data, slope=2.0, inter=-5.0)
    v = read_volume(source)
    assert v.values.shape == (5, 20, 16) and v.offset == int(data.min()) < 0
    assert v.bits == (int(data.max()) - int(data.min())).bit_length()
    changed = v.values.copy()
    changed[2] = 0
    [out] = write_volume(tmp_path / "decoded.nii.gz", v, changed)
    back, before = nib.load(out), nib.load(source)  # nibabel moves scl_* to the dataobj
    assert (back.dataobj.slope, back.dataobj.inter) == (2.0, -5.0)
    with gzip.open(out) as f:
        stored = nib.Nifti1Header.from_fileobj(f)
    assert (float(stored["scl_slope"]), float(stored["scl_inter"])) == (2.0, -5.0)
    assert back.get_data_dtype() == np.int16 and back.shape == (20, 16, 5)
    assert back.header.get_sform(coded=True)[1] == 2 and back.header.get_qform(coded=True)[1] == 1
    assert np.array_equal(back.affine, before.affine)
    expected = data.copy()
    expected[:, :, 2] = 0
    assert (np.asarray(back.dataobj.get_unscaled()) == expected).all()
    assert np.allclose(back.get_fdata(), expected * 2.0 - 5.0)


def test_nifti2_and_big_endian_are_read(tmp_path: Path) -> None:
    data = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 100).astype(">u2")
    header = nib.Nifti2Header(endianness=">")
    header.set_data_dtype(np.dtype(">u2"))
    header.set_data_shape(data.shape)
    header["vox_offset"] = 544
    path = tmp_path / "two.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    v = read_volume(path)
    assert v.values.dtype == np.uint16 and v.values.dtype.isnative
    assert (v.values[1] == data[:, :, 1]).all()
    [out] = write_volume(tmp_path / "back.nii", v, v.values)
    assert out.read_bytes() == path.read_bytes()


def test_bad_nifti_files_are_refused(tmp_path: Path) -> None:
    data = np.ones((8, 8, 4), np.int16)
    whole = gzip.compress(nifti_file(tmp_path / "whole.nii", data).read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    cases = [(tmp_path / "cut.nii.gz", "cut.nii.gz"),
             (nifti_file(tmp_path / "float.nii", data.astype(np.float32)), "floating-point"),
             (nifti_file(tmp_path / "huge.nii", data, header_only=True,
                         shape=(30000, 30000, 30000)), "more than"),
             (nifti_file(tmp_path / "short.nii", data[:, :, :1], shape=data.shape), "short.nii")]
    for path, message in cases:
        start = time.perf_counter()
        with pytest.raises(DataError, match=message) as e:
            read_volume(path)
        assert time.perf_counter() - start < 2.0 and path.name in str(e.value)
        assert NAME not in str(e.value)
    v = read_volume(tmp_path / "whole.nii")
    with pytest.raises(DataError, match=r"\.nii or \.nii\.gz"):
        write_volume(tmp_path / "out.img", v, v.values)
    with pytest.raises(DataError, match="int16"):
        write_volume(tmp_path / "out.nii", v, v.values.astype(np.int32) + 40000)


# ---------------------------------------------------------------- gray PNG / TIFF

@pytest.mark.parametrize("name, dtype", [("g16.png", np.uint16), ("g16.tif", np.uint16),
                                         ("g8.png", np.uint8)])
def test_gray_images_round_trip_exactly(tmp_path: Path, name: str, dtype: type) -> None:
    top = 3470 if dtype == np.uint16 else 200
    pixels = np.random.default_rng(1).integers(0, top + 1, (30, 20)).astype(dtype)
    Image.fromarray(pixels).save(tmp_path / name)
    v = read_volume(tmp_path / name)
    assert (v.kind, v.meta, v.values.shape, v.values.dtype) == ("image", b"", (1, 30, 20), dtype)
    assert v.stored_bits == 8 * np.dtype(dtype).itemsize and v.bits == int(top).bit_length()
    [out] = write_volume(tmp_path / f"out{Path(name).suffix}", v, v.values)
    assert np.array_equal(np.asarray(Image.open(out)), pixels)
    assert np.asarray(Image.open(out)).dtype == dtype


def test_colour_and_huge_images_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*gray"):
        read_volume(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((40, 40), np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="more than 100 pixels"):
        read_volume(tmp_path / "big.png", max_pixels=100)
    with pytest.raises(DataError, match="cannot tell"):
        (tmp_path / "x.raw").write_bytes(b"\0" * 200)
        read_volume(tmp_path / "x.raw")


# ---------------------------------------------------------------- shared MRI data

@pytest.mark.slow  # 680 files
def test_vanderbilt_series_matches_its_pngs() -> None:
    folder = shared("mri/test/dicom/vanderbilt_dti_ax")
    pngs = sorted(shared("mri/test/png").glob("vanderbilt_b0_*.png"))
    v = read_volume(folder)
    assert v.values.shape == (680, 80, 80) and v.stored_bits == 12 and v.bits <= 12
    _, headers = dicom.parse_meta(v.meta)
    numbers = [int(h.InstanceNumber) for h in headers]
    normal = np.cross(*np.reshape([float(x) for x in headers[0].ImageOrientationPatient], (2, 3)))
    z = np.array([np.dot([float(x) for x in h.ImagePositionPatient], normal) for h in headers])
    z = z.reshape(17, 40)  # 17 volumes of 40 positions
    assert (np.diff(z, axis=1) > 0).all() and np.allclose(z, z[0])
    assert (np.diff(np.reshape(numbers, (17, 40)), axis=0) > 0).all()
    assert pngs
    for png in pngs:
        s = numbers.index(int(png.stem.rsplit("_", 1)[1]))
        assert np.array_equal(v.values[s], np.asarray(Image.open(png))), png.name


@pytest.mark.parametrize("name, png", [("MR2_UNCR.dcm", "pydicom_mr2_shoulder.png"),
                                       ("MR-SIEMENS-DICOM-WithOverlays.dcm",
                                        "pydicom_siemens_abdomen.png")])
def test_shared_single_files_match_their_pngs(name: str, png: str, tmp_path: Path) -> None:
    v = read_volume(shared(f"mri/test/dicom_single/{name}"))
    assert np.array_equal(v.values[0], np.asarray(Image.open(shared(f"mri/test/png/{png}"))))
    [out] = write_volume(tmp_path / "out.dcm", v, v.values)
    assert_same_header(pydicom.dcmread(shared(f"mri/test/dicom_single/{name}")),
                       pydicom.dcmread(out))


def test_shared_multi_frame_matches_its_pngs() -> None:
    v = read_volume(shared("mri/test/dicom_single/emri_small.dcm"))
    for f in range(10):
        png = shared(f"mri/test/png/pydicom_emri_small_f{f:02d}.png")
        assert np.array_equal(v.values[f], np.asarray(Image.open(png)))


def test_a_broken_element_is_the_reader_s_clear_error_not_the_writer_s(tmp_path):
    """pydicom parses elements lazily: a damaged VR must fail the read, naming the file,
    not a later write with a traceback (found by the fuzz campaign)."""
    source = pydicom_file("MR_small.dcm")
    data = bytearray(source.read_bytes())
    at = data.index(b"\x02\x00\x12\x00UI")  # (0002,0012) ImplementationClassUID, VR UI
    data[at + 4 : at + 6] = b"UM"  # no such VR
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with pytest.raises(DataError, match="broken.dcm"):
        read_volume(broken)
