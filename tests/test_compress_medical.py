"""DICOM, NIfTI and 16-bit PNG through compress / decompress: the same format, bit depth and
metadata come back, lossless bit for bit, lossy and within ±K marked as the standard asks."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from clearvae import cli
from clearvae.codec.storage import save_codec
from clearvae.compress import Settings, compress_file, decompress_file
from clearvae.errors import DataError
from tests.test_codec_gray import codec  # noqa: F401  (the small gray codec fixture)
from tests.test_medical_io import assert_same_header, make_series, pydicom_file


def _nifti_example() -> Path:
    from nibabel.testing import data_path

    return Path(data_path) / "example4d.nii.gz"


@pytest.mark.parametrize("name", ["MR_small.dcm", "emri_small.dcm"])
def test_dicom_lossless_gives_the_same_values_and_header(codec, tmp_path, name):  # noqa: F811
    source = pydicom_file(name)
    r = compress_file(codec, source, tmp_path / "x.cvae", Settings(max_error=0))
    out = decompress_file(codec, r.target, tmp_path / "x.dcm")
    before, after = pydicom.dcmread(source), pydicom.dcmread(out.target)
    assert np.array_equal(before.pixel_array, after.pixel_array)
    assert_same_header(before, after)
    assert after.get("LossyImageCompression", "00") == before.get("LossyImageCompression", "00")
    assert r.compressed_bytes < before.pixel_array.nbytes


def test_dicom_lossy_and_bounded_error_are_marked_lossy(codec, tmp_path):  # noqa: F811
    source = pydicom_file("MR_small.dcm")
    values = pydicom.dcmread(source).pixel_array.astype(int)
    for name, settings in (("lossy", Settings(quality=3)), ("near", Settings(max_error=2))):
        r = compress_file(codec, source, tmp_path / f"{name}.cvae", settings)
        out = decompress_file(codec, r.target, tmp_path / f"{name}.dcm")
        ds = pydicom.dcmread(out.target)
        assert ds.LossyImageCompression == "01"
        methods = ds.LossyImageCompressionMethod
        assert "CLEARVAE" in ([methods] if isinstance(methods, str) else list(methods))
        ratio = ds.LossyImageCompressionRatio
        assert float(ratio if not isinstance(ratio, list) else ratio[-1]) > 1
        assert ds.ImageType[0] == "DERIVED"
        error = np.abs(ds.pixel_array.astype(int) - values)
        assert error.max() <= 2 if name == "near" else error.mean() > 0


def test_a_series_folder_is_one_file_and_comes_back_as_a_series(codec, tmp_path):  # noqa: F811
    make_series(tmp_path / "series", [0.0, 5.0, 10.0, 15.0])
    r = compress_file(codec, tmp_path / "series", None, Settings(max_error=0))
    assert r.target == tmp_path / "series.cvae"
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "series.cvae"
    r.target.rename(moved)
    out = decompress_file(codec, moved)
    files = sorted(out.target.iterdir())
    assert out.target == tmp_path / "moved" / "series" and len(files) == 4
    originals = sorted((tmp_path / "series").iterdir())
    for a, b in zip(originals, files):
        assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)


def test_nifti_comes_back_with_its_header_affine_and_raw_values(codec, tmp_path):  # noqa: F811
    source = _nifti_example()
    r = compress_file(codec, source, tmp_path / "x.cvae", Settings(max_error=0))
    out = decompress_file(codec, r.target, tmp_path / "x.nii.gz")
    a, b = nib.load(source), nib.load(out.target)
    raw = [np.asarray(image.dataobj.get_unscaled()) for image in (a, b)]
    assert np.array_equal(*raw)
    assert np.array_equal(a.affine, b.affine)
    assert a.header.binaryblock == b.header.binaryblock


def test_sixteen_bit_png_goes_to_the_gray_codec_and_back(codec, tmp_path):  # noqa: F811
    values = (np.add.outer(np.arange(48), np.arange(80)) * 37 % 4096).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "slice.png")
    r = compress_file(codec, tmp_path / "slice.png", None, Settings(max_error=1))
    out = decompress_file(codec, r.target, tmp_path / "back.png")
    back = np.asarray(Image.open(out.target)).astype(int)
    assert np.abs(back - values).max() <= 1 and back.max() > 255


def test_decoding_beside_the_original_never_replaces_it(codec, tmp_path):  # noqa: F811
    source = tmp_path / "scan.dcm"
    source.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    r = compress_file(codec, source, None, Settings(max_error=0))
    with pytest.raises(DataError, match="not replacing"):
        decompress_file(codec, r.target, overwrite=True)
    assert source.read_bytes() == pydicom_file("MR_small.dcm").read_bytes()


def test_eight_bit_images_refuse_max_error(codec, tmp_path):  # noqa: F811
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="8-bit"):
        compress_file(codec, tmp_path / "a.png", None, Settings(max_error=0))


def test_cli_lossless_dicom_round_trip(codec, tmp_path, capsys):  # noqa: F811
    model = save_codec(codec, tmp_path / "gray.safetensors")
    source = pydicom_file("MR_small.dcm")
    assert cli.main(["compress", str(source), "-o", str(tmp_path / "a.cvae"), "--lossless",
                     "--model", str(model)]) == 0
    assert cli.main(["decompress", str(tmp_path / "a.cvae"), "-o", str(tmp_path / "a.dcm"),
                     "--model", str(model)]) == 0
    assert np.array_equal(pydicom.dcmread(source).pixel_array,
                          pydicom.dcmread(tmp_path / "a.dcm").pixel_array)
    assert "a.dcm" in capsys.readouterr().out


def test_training_data_can_be_dicom_and_nifti_slices(tmp_path):
    from clearvae.data import open_dataset

    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.dcm").write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    (tmp_path / "data" / "sub" / "b.nii.gz").write_bytes(_nifti_example().read_bytes())
    data = open_dataset(str(tmp_path / "data"), size=(32, 32))
    assert len(data) == 1 + 24 * 2  # MR_small's slice and example4d's 24 x 2
    x = data[(0, 7)]
    assert x.shape == (1, 32, 32) and 0 <= x.min() and x.max() <= 1
    full = open_dataset(str(tmp_path / "data"), mode="full")
    assert full[0].max() > 0.5  # divided by its own 12 bits, not 16


def test_the_bundled_mri_codec_loads_and_codes_losslessly():
    from clearvae.codec.gray import GrayVolume, compress_gray, decompress_gray
    from clearvae.codec.storage import default_model_path, load_codec

    assert default_model_path(gray=True).exists(), "the bundled MRI codec is missing"
    mri = load_codec(gray=True)
    assert mri.model.config.image_channels == 1 and mri.tables.exact is not None
    values = pydicom.dcmread(pydicom_file("MR_small.dcm")).pixel_array.astype(np.uint16)
    gray = GrayVolume(values[None], 12)
    back, _ = decompress_gray(mri, compress_gray(mri, gray, max_error=0, quality=6))
    assert np.array_equal(back.values[0], values)


def test_cli_decodes_chosen_slices_alone(codec, tmp_path, capsys, monkeypatch):  # noqa: F811
    import nibabel as nib

    from clearvae.codec import gray

    model = save_codec(codec, tmp_path / "gray.safetensors")
    values = (np.arange(5)[:, None, None] * 300 + np.random.default_rng(0).integers(
        0, 200, (5, 24, 20))).astype(np.int16)  # (S, H, W)
    nib.save(nib.Nifti1Image(np.moveaxis(values, 0, -1), np.eye(4)), tmp_path / "v.nii.gz")
    assert cli.main(["compress", str(tmp_path / "v.nii.gz"), "--lossless", "--model",
                     str(model)]) == 0
    decoded = []
    real = gray.decompress_gray

    def counting(*args, **kwargs):
        decoded.append(kwargs.get("which"))
        return real(*args, **kwargs)

    monkeypatch.setattr("clearvae.compress.decompress_gray", counting)
    out = tmp_path / "slices"
    assert cli.main(["decompress", str(tmp_path / "v.cvae"), "--model", str(model),
                     "--slices", "1,3-4", "-o", str(out)]) == 0
    assert decoded == [[1, 3, 4]]  # only those were decoded
    assert sorted(p.name for p in out.iterdir()) == ["v_s0001.png", "v_s0003.png",
                                                     "v_s0004.png"]
    for i in (1, 3, 4):
        assert np.array_equal(np.array(Image.open(out / f"v_s{i:04d}.png")), values[i])
    assert cli.main(["decompress", str(tmp_path / "v.cvae"), "--model", str(model),
                     "--slices", "7"]) == 2
    assert "slices 0..4" in capsys.readouterr().err
    assert cli.main(["decompress", str(tmp_path / "v.cvae"), "--model", str(model),
                     "--slices", "x"]) == 2
