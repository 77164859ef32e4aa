"""MRI denoising: the Rician noise model, 2.5-D conditional denoisers, volumes in and out."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from clearvae import checkpoint
from clearvae.cli import main
from clearvae.data import open_dataset, write_image
from clearvae.data.medical import MedicalSlices
from clearvae.errors import ConfigError, DataError
from clearvae.models.denoiser import (
    DenoisingVAE,
    DenoisingVAEConfig,
    _single_slices,
    denoise_objective,
    recorrupt,
)
from clearvae.noise import (
    NoiseConfig,
    add_rician_noise,
    estimate_rician_sigma,
    fit_noise,
    noise_log_prob,
    rician_mean,
    rician_noise,
    rician_unbias,
    rician_variance,
)
from clearvae.restore.denoise import denoise, denoise_volume
from clearvae.restore.files import denoise_file, denoised_name, inpaint_file
from clearvae.restore.presets import preset
from clearvae.training import ObjectiveConfig
from tests.test_medical_io import make_series

BACKBONE = {"kind": "conditional", "image_channels": 1, "image_size": [16, 16],
            "widths": [8, 16], "blocks": 1, "latent_channels": 2, "branch": 0.5}


def tiny(context: int = 1, **noise) -> DenoisingVAE:
    torch.manual_seed(0)
    config = DenoisingVAEConfig.from_dict({
        "backbone": {**BACKBONE, "context_slices": context},
        "noise": noise or {"kind": "rician", "synthetic": [5, 30]}})
    return DenoisingVAE(config).eval()


def phantom(size: int = 96, sigma: float = 0.03, seed: int = 0) -> np.ndarray:
    """A bright textured disc on air, with Rician noise of ``sigma`` ([0, 1] scale)."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    clean = np.where(inside, 0.6 + 0.2 * np.sin(xx / 4.0), 0.0)
    return add_rician_noise(clean, sigma, seed)


# --- the Rician noise model ---------------------------------------------------------------

@pytest.mark.parametrize("snr", [0.0, 0.7, 2.0, 8.0])
def test_rician_noise_has_the_rician_mean_and_unbias_inverts_it(snr):
    x = add_rician_noise(np.full(400_000, snr), 1.0, seed=1)
    assert x.min() >= 0
    assert x.mean() == pytest.approx(rician_mean(np.array([snr]), 1.0)[0], abs=0.01)
    s = np.linspace(0, 30, 301)
    assert np.abs(rician_unbias(rician_mean(s, 0.5), 0.5) - s).max() < 2e-3
    assert rician_unbias(np.array([0.1, 1.2]), 1.0).tolist() == [0.0, 0.0]  # below pure noise


@pytest.mark.parametrize("snr", [0.0, 1.0, 2.0, 4.0, 20.0])
def test_rician_variance_is_that_of_rician_magnitudes_of_that_mean(snr):
    sigma = 0.05
    x = torch.from_numpy(add_rician_noise(np.full((1, 1, 400, 1000), snr * sigma), sigma,
                                          seed=2))
    got = rician_variance(torch.full((1, 1, 1, 1), float(x.mean())), torch.tensor([sigma]))
    assert float(got) == pytest.approx(float(x.var()), rel=0.02)


def test_rician_recorruption_pairs_are_uncorrelated_in_the_air_too():
    """Where the signal is 0 (air) Rician noise is Rayleigh, of variance 0.43 sigma^2: a pair
    made with D^2 = sigma^2 there has noises correlated by -0.57 sigma^2; made with the Rician
    variance at the local mean, hardly at all. In tissue the pair is as for Gaussian noise."""
    sigma = 0.05
    noise = NoiseConfig(kind="rician", sigma=sigma * 255)
    clean = torch.zeros(16, 1, 48, 48)
    clean[..., 24:] = 0.6  # left half air, right half tissue at SNR 12
    torch.manual_seed(3)
    y = rician_noise(clean, torch.full((16,), sigma))
    inp, target, _ = recorrupt(noise, y, (1.0, 1.0))
    m = torch.from_numpy(rician_mean(clean.numpy(), sigma))
    for half in (slice(0, 24), slice(24, 48)):
        a, b = ((t - m)[..., half].flatten() for t in (inp, target))
        cov = float(((a - a.mean()) * (b - b.mean())).mean())
        assert abs(cov) < 0.1 * sigma**2, cov / sigma**2


def test_rician_log_prob_is_a_density_over_magnitudes():
    noise = NoiseConfig(kind="rician", sigma=0.1 * 255)
    x = torch.linspace(1e-6, 2.0, 20001, dtype=torch.float64)
    for s in (0.0, 0.05, 0.3, 1.0):
        lp = noise_log_prob(noise, x.view(-1, 1, 1, 1), torch.full((x.numel(), 1, 1, 1), s,
                                                                  dtype=torch.float64))
        assert torch.trapezoid(lp.exp(), x).item() == pytest.approx(1.0, abs=1e-3)
    # far above the noise it is the Gaussian of the same sigma
    g = NoiseConfig(kind="gaussian", sigma=0.1 * 255)
    x, s = torch.tensor([[[[0.93]]]]), torch.tensor([[[[1.0]]]])
    assert noise_log_prob(noise, x, s).item() == pytest.approx(noise_log_prob(g, x, s).item(),
                                                              abs=0.05)


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.09])
def test_rician_sigma_comes_from_the_background(sigma):
    assert estimate_rician_sigma(phantom(sigma=sigma)) == pytest.approx(sigma, rel=0.05)
    volume = np.stack([phantom(sigma=sigma, seed=i) for i in range(3)])
    assert estimate_rician_sigma(volume) == pytest.approx(sigma, rel=0.05)


def test_no_background_is_said_and_asks_for_sigma():
    inside = phantom(sigma=0.03)[36:60, 36:60]  # all tissue
    with pytest.raises(DataError, match="no background.*--sigma"):
        estimate_rician_sigma(inside)
    with pytest.raises(DataError, match="all zero.*--sigma"):
        estimate_rician_sigma(np.zeros((40, 40)))
    model = tiny()
    with pytest.raises(DataError, match="--sigma"):
        denoise(inside, model)
    assert denoise(inside, model, sigma=0.03 * 255).mean.shape == inside.shape


def test_fit_noise_estimates_rician_sigma_from_images_with_background():
    images = [phantom(sigma=0.04, seed=i)[..., None] for i in range(3)]
    images.append(phantom(sigma=0.04)[36:60, 36:60, None])  # no background: left out
    fitted = fit_noise(NoiseConfig(kind="rician"), images)
    assert fitted.sigma == pytest.approx(0.04 * 255, rel=0.05)


@pytest.mark.parametrize("bad", [{"kind": "poisson_gaussian", "synthetic": [1, 2]},
                                 {"kind": "rician", "a": 0.1, "b": 0.1},
                                 {"kind": "poisson_gaussian", "a": 0.1, "b": 0.1, "sigma": 3}])
def test_bad_rician_configs_fail_clearly(bad):
    with pytest.raises(ConfigError):
        NoiseConfig.from_dict(bad)


def test_synthetic_rician_needs_a_conditional_backbone():
    hdn = {"kind": "hierarchical", "likelihood": "gaussian", "image_channels": 1,
           "image_size": [16, 16], "widths": [8, 16], "blocks_per_resolution": [1, 1],
           "latent_channels": 4}
    with pytest.raises(ConfigError, match="conditional"):
        DenoisingVAEConfig.from_dict({"backbone": hdn,
                                      "noise": {"kind": "rician", "synthetic": [5, 30]}})


# --- 2.5-D --------------------------------------------------------------------------------

def test_a_zero_context_stem_denoises_exactly_as_the_2d_model():
    flat, stacked = tiny(context=0), tiny(context=1)
    missing, unexpected = stacked.load_state_dict(flat.state_dict(), strict=False)
    assert missing == ["backbone.context_stem.weight"] and not unexpected
    y = torch.rand(2, 1, 16, 16)
    others = torch.rand(2, 1, 16, 16)
    stack = torch.cat([others, y, others.flip(0)], 1)
    assert torch.equal(flat.backbone.mean(y), stacked.backbone.mean(stack))
    with torch.no_grad():
        stacked.backbone.context_stem.weight.normal_()
    assert not torch.allclose(flat.backbone.mean(y), stacked.backbone.mean(stack))
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        stacked.backbone.mean(y)


def test_single_images_get_one_noise_for_the_whole_stack():
    model = tiny(context=1)
    x = torch.rand(6, 3, 16, 16)
    x[:3] = x[:3, 1:2]  # stacks of one repeated image
    single = _single_slices(x, 1, 1)
    assert single[:3].all()
    torch.manual_seed(3)
    loss, metrics = denoise_objective(model, x, ObjectiveConfig(), 0)
    assert math.isfinite(loss.item()) and metrics["elbo"] == metrics["elbo"]
    loss.backward()
    assert model.backbone.context_stem.weight.grad.abs().sum() > 0


def test_medical_slices_stack_neighbours_within_each_volume(tmp_path):
    a = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(8, 8, 4)  # (H, W, Z): 4 slices
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(a[..., :2] + 1000, np.eye(4)), tmp_path / "b.nii.gz")
    data = MedicalSlices(tmp_path, context=1)
    assert len(data) == 6
    first, last_of_a, first_of_b = data[0], data[3], data[4]
    assert first.shape == (3, 8, 8)
    top = float(2 ** int(a.max()).bit_length() - 1)
    assert torch.equal(first[0], first[1])  # the volume's end repeats the slice
    assert torch.allclose(first[2] * top, torch.from_numpy(a[..., 1].astype(np.float32)))
    assert torch.equal(last_of_a[1], last_of_a[2])
    assert torch.equal(first_of_b[0], first_of_b[1])  # never a neighbour from volume a


def test_other_images_come_as_stacks_of_one_image(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", np.random.default_rng(i).random((20, 20, 1)),
                    bit_depth=16)
    data = open_dataset(str(tmp_path), size=16, channels=1, value_range="used", context=1)
    x = data[(0, 5)]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_the_mri_preset_is_2_5d_rician_on_the_used_bits():
    config = preset("denoise-mri")
    model = DenoisingVAEConfig.from_dict({k: v for k, v in config["model"].items()
                                          if k != "kind"})
    assert model.context_slices == 1 and model.noise.kind == "rician"
    assert config["data"]["value_range"] == "used"


# --- volumes --------------------------------------------------------------------------------

def test_denoise_volume_sees_neighbours_and_reports_progress():
    model = tiny(context=1)
    with torch.no_grad():
        model.backbone.context_stem.weight.normal_(0, 0.3)
    volume = np.stack([phantom(48, seed=i) for i in range(4)]).astype(np.float32)
    calls = []
    out = denoise_volume(volume, model, samples=2, keep_samples=True,
                         progress=lambda d, n: calls.append((d, n)))
    assert out.mean.shape == out.std.shape == volume.shape
    assert out.samples.shape == (2, *volume.shape)
    assert calls[-1] == (4, 4) and len(calls) == 4
    assert out.sigma == pytest.approx(0.03 * 255, rel=0.1)  # from the whole volume
    changed = volume.copy()
    changed[3] = 0.5
    again = denoise_volume(changed, model, samples=0, sigma=out.sigma)
    assert np.array_equal(again.mean[0], out.mean[0])  # slice 0 does not see slice 3
    assert not np.array_equal(again.mean[2], out.mean[2])  # slice 2 does
    with pytest.raises(DataError, match=r"\(S, H, W\)"):
        denoise_volume(volume[0], model)


def test_noisy_only_rician_models_unbias_their_estimate():
    rician = tiny(context=0, kind="rician", sigma=10.0)
    gaussian = tiny(context=0, kind="gaussian", sigma=10.0)
    gaussian.load_state_dict(rician.state_dict())
    image = phantom(32)
    a = denoise(image, rician, samples=0, sigma=10.0).mean
    b = denoise(image, gaussian, samples=0, sigma=10.0).mean
    raw = gaussian.backbone.mean(torch.from_numpy(image)[None, None])[0, 0].numpy()
    expected = np.clip(rician_unbias(raw, 10 / 255), 0, 1)
    assert np.allclose(a, expected, atol=1e-5) and not np.allclose(a, b, atol=1e-3)


def _model_file(tmp_path: Path, model: DenoisingVAE) -> str:
    path = tmp_path / "mri.safetensors"
    checkpoint.save_file(path, "model", model.state_dict(), model.config.to_dict(), {})
    return str(path)


def test_a_nifti_volume_comes_back_as_nifti_with_its_header(tmp_path):
    clean = (np.stack([phantom(48, seed=i) for i in range(3)], -1) * 3000).astype(np.int16)
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    image = nib.Nifti1Image(clean, affine)
    image.header.set_slope_inter(0.5, 10)
    nib.save(image, tmp_path / "t1.nii.gz")
    written, result = denoise_file(tiny(), tmp_path / "t1.nii.gz", std_map=True, samples=2)
    assert written.target == tmp_path / "t1_denoised.nii.gz"
    assert [p.name for p in written.extras] == ["t1_denoised_std.nii.gz"]
    back, original = nib.load(written.target), nib.load(tmp_path / "t1.nii.gz")
    assert back.header.get_data_dtype() == np.int16
    assert np.array_equal(back.affine, original.affine)
    assert back.header.get_slope_inter() == original.header.get_slope_inter()
    assert bytes(back.header.binaryblock) == bytes(original.header.binaryblock)
    values = np.asanyarray(back.dataobj)
    assert values.shape == clean.shape and values.min() >= clean.min()
    assert values.max() <= clean.max() and not np.array_equal(values, clean)
    assert np.asanyarray(nib.load(written.extras[0]).dataobj).min() >= 0


def test_a_dicom_series_comes_back_as_a_new_derived_series(tmp_path):
    make_series(tmp_path / "t1", [0.0, 2.0, 4.0])
    written, _ = denoise_file(tiny(), tmp_path / "t1", sigma=20.0)
    assert written.target == tmp_path / "t1_denoised"
    before = [pydicom.dcmread(p) for p in sorted((tmp_path / "t1").iterdir())]
    after = [pydicom.dcmread(p) for p in sorted(written.target.iterdir())]
    assert len(after) == 3
    new_series = {ds.SeriesInstanceUID for ds in after}
    assert len(new_series) == 1 and new_series != {before[0].SeriesInstanceUID}
    changed = {"PixelData", "SOPInstanceUID", "SeriesInstanceUID", "ImageType",
               "DerivationDescription", "SeriesDescription"}
    for b, a in zip(before, after):
        assert a.ImageType[0] == "DERIVED" and "Denoised by clearvae" in a.DerivationDescription
        assert a.SOPInstanceUID != b.SOPInstanceUID
        for element in b:
            if element.keyword not in changed:
                assert a[element.tag] == element, element.keyword
        assert a.pixel_array.dtype == b.pixel_array.dtype
    with pytest.raises(DataError, match="exists"):
        denoise_file(tiny(), tmp_path / "t1", sigma=20.0)


def test_a_photo_denoiser_on_mri_is_warned_about(tmp_path):
    source = tmp_path / "slice.png"
    write_image(source, phantom(40)[..., None].clip(0, 1), bit_depth=16)
    photo = tiny(context=0, kind="gaussian", synthetic=[5, 30])
    with pytest.warns(UserWarning, match="Rician"):
        written, _ = denoise_file(photo, source)
    assert written.target == tmp_path / "slice_denoised.png"
    assert denoised_name(tmp_path / "x.nii.gz") == tmp_path / "x_denoised.nii.gz"


def test_cli_denoises_volumes_and_goes_on_after_a_bad_one(tmp_path, capsys):
    model = _model_file(tmp_path, tiny())
    volume = (np.stack([phantom(48, seed=i) for i in range(2)], -1) * 1000).astype(np.uint16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "good.nii")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    code = main(["denoise", str(tmp_path / "bad.nii.gz"), str(tmp_path / "good.nii"),
                 "--model", model])
    err = capsys.readouterr().err
    assert code == 2 and "bad.nii.gz" in err
    assert (tmp_path / "good_denoised.nii").exists()
    assert not (tmp_path / "bad_denoised.nii.gz").exists()


def test_deep_copy_keeps_the_context_stem():
    model = tiny()
    assert copy.deepcopy(model).backbone.context_stem is not None


def test_inpainting_a_16_bit_slice_keeps_every_known_value(tmp_path):
    clean = (phantom(48) * 3000).astype(np.uint16)
    source, mask = tmp_path / "slice.png", tmp_path / "mask.png"
    from clearvae.data.images import write_pixels

    write_pixels(source, clean[..., None])
    lines = np.zeros((48, 48, 1), np.uint8)
    lines[::6] = 255  # missing k-space lines show as missing rows
    write_pixels(mask, lines)
    model = tiny()
    written, result = inpaint_file(model, source, mask, samples=2, iterations=3)
    assert written.target == tmp_path / "slice_inpainted.png"
    from PIL import Image

    out = np.array(Image.open(written.target))
    assert out.dtype == np.uint16 and out.shape == clean.shape
    known = lines[..., 0] == 0
    assert np.array_equal(out[known], clean[known])
    assert not np.array_equal(out[~known], clean[~known])
    assert out[~known].max() <= clean.max() and result.samples.shape == (2, 1, 48, 48)


def test_train_denoise_noisy_on_volumes_learns_rician_2_5d_from_them_alone(tmp_path, capsys):
    data = tmp_path / "noisy"
    data.mkdir()
    for i in range(2):
        noisy = np.stack([phantom(64, sigma=0.04, seed=10 * i + z) for z in range(3)], -1)
        nib.save(nib.Nifti1Image((noisy * 2000).astype(np.uint16), np.eye(4)),
                 data / f"v{i}.nii.gz")
    main(["train", "--preset", "denoise-noisy", "--data", str(data), "--out",
          str(tmp_path / "run"), "--max-steps", "2", "--set", "batch_size=2",
          "--set", "ema_decay=0", "--set", "model.backbone.widths=[8,16]",
          "--set", "model.backbone.blocks=1"])
    out = capsys.readouterr().out
    assert "Rician" in out and "noise model estimated" in out
    loaded = checkpoint.load_file(tmp_path / "run" / "model.safetensors")
    noise = loaded.model_config["noise"]
    assert noise["kind"] == "rician" and loaded.model_config["backbone"]["context_slices"] == 1
    stored = max(int(np.asanyarray(nib.load(p).dataobj).max()) for p in data.iterdir())
    expected = 0.04 * 2000 / (2 ** stored.bit_length() - 1) * 255  # on the used bits' scale
    assert noise["sigma"] == pytest.approx(expected, rel=0.1)
