"""Restoration: noise models and their estimation, the denoising VAE, tiling, denoise and
inpaint (library, files and CLI), and their bad-input paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clearvae import checkpoint
from clearvae.cli import main
from clearvae.data import read_image, write_image
from clearvae.errors import ConfigError, DataError, ModelFileError
from clearvae.models import build_model, model_config_from_dict
from clearvae.models.denoiser import DenoisingVAE, DenoisingVAEConfig, denoise_objective
from clearvae.noise import (
    NoiseConfig,
    estimate_poisson_gaussian,
    estimate_sigma,
    fit_noise,
    noise_log_prob,
)
from clearvae.restore import denoise, fit_unsupervised, inpaint
from clearvae.restore.files import denoise_file
from clearvae.restore.inpaint import noise_schedule, smooth_fill
from clearvae.restore.tiles import starts, tiled
from clearvae.training import ObjectiveConfig
from tests.conftest import bar_patterns

BACKBONE = {"kind": "hierarchical", "likelihood": "gaussian", "image_channels": 1,
            "image_size": [16, 16], "widths": [8, 16], "blocks_per_resolution": [1, 1],
            "latent_channels": 4, "bottleneck": 0.5}


def tiny_denoiser(**noise) -> DenoisingVAE:
    torch.manual_seed(0)
    config = DenoisingVAEConfig.from_dict({"backbone": BACKBONE,
                                           "noise": noise or {"synthetic": [20, 30]}})
    return DenoisingVAE(config)


def save(model: DenoisingVAE, path) -> str:
    checkpoint.save_file(path, "model", model.state_dict(), model.config.to_dict(), {})
    return str(path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / float(np.mean((np.clip(a, 0, 1) - b) ** 2)))


# --- noise models --------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [5.0, 20.0, 50.0])
def test_sigma_estimate_on_a_smooth_image(sigma):
    yy, xx = np.mgrid[0:256, 0:256] / 256
    clean = 0.3 + 0.4 * np.sin(3 * xx) * np.cos(2 * yy)
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * sigma / 255
    assert estimate_sigma(noisy) == pytest.approx(sigma, rel=0.05)
    assert estimate_sigma(np.stack([noisy] * 3, -1)) == pytest.approx(sigma, rel=0.05)


def test_poisson_gaussian_parameters_are_recovered():
    rng = np.random.default_rng(1)
    a, b = 0.01, 0.0004
    ramp = np.tile(np.linspace(0.05, 0.95, 512), (256, 1))
    noisy = ramp + rng.standard_normal(ramp.shape) * np.sqrt(a * ramp + b)
    a_hat, b_hat = estimate_poisson_gaussian([noisy])
    assert a_hat == pytest.approx(a, rel=0.15)
    assert b_hat == pytest.approx(b, abs=0.0003)
    fitted = fit_noise(NoiseConfig(kind="poisson_gaussian"), [noisy])
    assert fitted.a == pytest.approx(a_hat) and fitted.known


def test_noise_log_prob_is_the_gaussian_density():
    x, s = torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    lp = noise_log_prob(NoiseConfig(sigma=25.5), x, s)
    ref = torch.distributions.Normal(s, 0.1).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(lp, ref, atol=1e-4)
    pg = NoiseConfig(kind="poisson_gaussian", a=0.02, b=0.001)
    ref = torch.distributions.Normal(s, (0.02 * s + 0.001).sqrt()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(noise_log_prob(pg, x, s), ref, atol=1e-4)


@pytest.mark.parametrize("bad", [{"kind": "poisson_gaussian", "synthetic": [5, 50]},
                                 {"a": 0.1}, {"synthetic": [30, 10]}, {"sigma": -1},
                                 {"kind": "gaussian", "a": 0.1, "b": 0.1}, {"sigmaa": 3}])
def test_bad_noise_configs_fail_clearly(bad):
    with pytest.raises(ConfigError):
        NoiseConfig.from_dict(bad)


def test_backbone_must_output_the_image():
    with pytest.raises(ConfigError, match="likelihood gaussian"):
        DenoisingVAEConfig.from_dict({"backbone": {**BACKBONE, "likelihood": "bernoulli"}})


# --- tiling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(20, 20), (64, 100), (97, 33)])
def test_tiles_cover_the_image_and_blend_to_the_identity(size):
    image = torch.rand(2, 1, *size)
    seen = torch.zeros(size)

    def fn(y0, y1, x0, x1):
        seen[y0:y1, x0:x1] = 1
        assert y1 - y0 <= 24 and x1 - x0 <= 24
        return image[..., y0:y1, x0:x1]

    out = tiled(fn, *size, tile=24, overlap=6)
    assert seen.all()
    assert torch.allclose(out, image, atol=1e-6)
    s = starts(size[1], 24, 6)
    assert all(b - a <= 24 - 6 for a, b in zip(s, s[1:]))


# --- the model, denoise and inpaint ------------------------------------------------------------

def test_training_on_noisy_bars_learns_to_denoise():
    model = tiny_denoiser(synthetic=[25, 25])
    clean = torch.nn.functional.pad(bar_patterns(), (2, 2, 2, 2))  # (8, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = ObjectiveConfig()
    torch.manual_seed(0)
    for step in range(250):
        loss, _ = denoise_objective(model, clean, objective, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gain = []
    for i in range(8):
        image = clean[i, 0].numpy()
        noisy = image + np.random.default_rng(i).standard_normal(image.shape) * 25 / 255
        result = denoise(noisy, model, samples=8, sigma=25.0)
        gain.append(psnr(result.mean, image) - psnr(noisy, image))
    assert np.mean(gain) > 3.0, gain  # noisy input: ~20 dB


def test_denoise_shapes_dtypes_and_determinism():
    model = tiny_denoiser()
    rgb = np.random.default_rng(0).integers(100, 120, (40, 30, 3), dtype=np.uint8)
    r = denoise(rgb, model, samples=3, keep_samples=True, tile=16, seed=1)
    assert r.mean.shape == r.std.shape == (40, 30, 3) and r.samples.shape == (3, 40, 30, 3)
    assert r.mean.dtype == np.float32 and (r.std >= 0).all() and 0 <= r.mean.min()
    inside = ((r.samples > 0) & (r.samples < 1)).all(0)  # where no sample was clipped
    assert inside.any() and np.allclose(r.mean[inside], r.samples.mean(0)[inside], atol=1e-5)
    again = denoise(rgb, model, samples=3, tile=16, seed=1)
    assert np.array_equal(again.mean, r.mean)
    gray = denoise(rgb[..., 0], model, samples=2, sigma=20.0)
    assert gray.mean.shape == (40, 30) and gray.samples is None and gray.sigma == 20.0


def test_opponent_planes_invert_exactly_and_keep_white_noise_white():
    from clearvae.restore.denoise import from_opponent, to_opponent

    rgb = torch.rand(2, 3, 1, 8, 9, dtype=torch.float64)
    opp = to_opponent(rgb)
    assert opp.min() >= 0 and opp.max() <= 1  # each plane of a [0, 1] image stays in [0, 1]
    assert torch.allclose(from_opponent(opp), rgb, atol=1e-12)
    noise = torch.randn(3, 1, 400, 400, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    planes = (to_opponent(noise) - to_opponent(torch.zeros_like(noise))).flatten(1)
    assert torch.allclose(planes.std(1), torch.tensor([3 ** -0.5, 2 ** -0.5, 6 ** 0.5 / 4],
                                                      dtype=torch.float64), rtol=0.01)
    corr = torch.corrcoef(planes)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.01


def test_rgb_goes_through_opponent_planes_only_for_a_blind_gray_model():
    from clearvae.restore.denoise import uses_opponent_planes

    rgb, gray = np.zeros((8, 8, 3)), np.zeros((8, 8, 1))
    assert uses_opponent_planes(tiny_denoiser(), rgb)
    assert not uses_opponent_planes(tiny_denoiser(), gray)
    assert not uses_opponent_planes(tiny_denoiser(sigma=25.0), rgb)  # one known sigma
    # the std map is the spread of the RGB draws themselves (one tile: nothing blended)
    image = np.random.default_rng(1).uniform(0.3, 0.7, (20, 24, 3)).astype(np.float32)
    r = denoise(image, tiny_denoiser(), samples=5, keep_samples=True, tile=32)
    inside = ((r.samples > 0) & (r.samples < 1)).all(0)
    assert inside.sum() > 100  # (an untrained model: many of its draws leave [0, 1])
    assert np.allclose(r.std[inside], r.samples.std(0)[inside], atol=1e-4)


def test_a_denoiser_denoises_in_its_own_tile_unless_told_otherwise(tmp_path):
    """``DenoisingVAEConfig.tile`` (the size its U-Net works best at) is the default tile of
    denoise and travels with the model file; a bad value is a config error."""
    from clearvae.restore import load_denoiser

    torch.manual_seed(0)
    config = DenoisingVAEConfig.from_dict({"backbone": BACKBONE, "noise": {"synthetic": [20, 30]},
                                           "tile": 16})
    path = save(DenoisingVAE(config), tmp_path / "tiled.safetensors")
    model = load_denoiser(path)
    assert model.config.tile == 16 and DenoisingVAEConfig().tile == 256
    noisy = np.random.default_rng(0).uniform(0.3, 0.7, (40, 40)).astype(np.float32)
    own = denoise(noisy, model, samples=1, sigma=25.0).mean
    assert np.array_equal(own, denoise(noisy, model, samples=1, sigma=25.0, tile=16).mean)
    assert not np.array_equal(own, denoise(noisy, model, samples=1, sigma=25.0, tile=40).mean)
    with pytest.raises(ConfigError, match="tile"):
        DenoisingVAEConfig.from_dict({"backbone": BACKBONE, "tile": 8})


def test_the_self_ensemble_averages_the_eight_flips_and_turns():
    """``ensemble=True`` is the mean over the 8 flips and quarter turns of the image of the
    plain estimate of each, turned back (here one tile, so no blending in between); a
    non-square image checks that the turns come back the right way round."""
    from clearvae.restore import load_denoiser
    from clearvae.restore.denoise import _dihedral

    t = torch.arange(12.0).view(1, 3, 4)
    assert len({tuple(_dihedral(t, k).flatten().tolist()) for k in range(8)}) == 8
    assert all(torch.equal(_dihedral(_dihedral(t, k), k, inverse=True), t) for k in range(8))
    model = load_denoiser(medical=True)
    rng = np.random.default_rng(0)
    noisy = (np.linspace(0.2, 0.6, 48)[None] + rng.normal(0, 0.03, (40, 48))).astype(np.float32)
    one = denoise(noisy, model, samples=0, sigma=8.0, force=True)
    both = denoise(noisy, model, samples=0, sigma=8.0, force=True, ensemble=True)
    turned = [_dihedral(torch.from_numpy(noisy), k).numpy() for k in range(8)]
    each = [_dihedral(torch.from_numpy(denoise(np.ascontiguousarray(x), model, samples=0,
                                               sigma=8.0, force=True).mean), k,
                      inverse=True).numpy() for k, x in enumerate(turned)]
    assert np.allclose(both.mean, np.mean(each, 0), atol=1e-5)
    assert np.abs(both.mean - one.mean).max() > 1e-4  # the turned runs do differ


def test_the_bundled_denoiser_loads_and_denoises():
    from clearvae.restore import default_denoiser_path, load_denoiser

    assert default_denoiser_path().exists(), "the bundled denoiser is missing from the package"
    model = load_denoiser()
    assert model.config.noise.synthetic == (5.0, 50.0) and model.config.image_channels == 1
    yy, xx = np.mgrid[0:48, 0:40] / 48
    clean = (0.3 + 0.4 * (xx > 0.5) + 0.1 * yy).astype(np.float32)
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32) * 0.1
    two = denoise(noisy, samples=2)
    assert psnr(two.mean, clean) > psnr(noisy, clean) + 3
    none = denoise(noisy, samples=0)  # the estimate needs no draws: none are computed
    assert np.array_equal(none.mean, two.mean) and not none.std.any() and two.std.any()
    with pytest.raises(DataError, match="keep_samples"):
        denoise(noisy, samples=0, keep_samples=True)


def test_denoise_refuses_far_noisier_images_unless_forced():
    model = tiny_denoiser(synthetic=[5, 20])
    noisy = 0.5 + np.random.default_rng(0).standard_normal((64, 64)) * 80 / 255
    with pytest.raises(DataError, match="far above"):
        denoise(noisy, model, samples=1)
    assert denoise(noisy, model, samples=1, force=True).mean.shape == (64, 64)


def test_denoise_bad_inputs(tmp_path):
    model = tiny_denoiser()
    with pytest.raises(DataError, match="shape"):
        denoise(np.zeros((4, 5, 6, 7)), model)
    with pytest.raises(DataError, match="NaN"):
        denoise(np.full((16, 16), np.nan), model)
    with pytest.raises(DataError, match="samples"):
        denoise(np.zeros((16, 16)), model, samples=0)
    rgb_model = DenoisingVAE(DenoisingVAEConfig.from_dict(
        {"backbone": {**BACKBONE, "image_channels": 3}, "noise": {"sigma": 10}}))
    with pytest.raises(DataError, match="3-channel"):
        denoise(np.zeros((16, 16)), rgb_model)
    vae = build_model(model_config_from_dict({"kind": "dense", "image_size": [16, 16]}))
    path = tmp_path / "vae.safetensors"
    checkpoint.save_file(path, "model", vae.state_dict(), vae.config.to_dict(), {})
    with pytest.raises(ModelFileError, match="not a denoiser"):
        denoise(np.zeros((16, 16)), path)
    with pytest.raises(ModelFileError, match="no such"):
        denoise(np.zeros((16, 16)), tmp_path / "missing.safetensors")


def test_inpaint_keeps_known_pixels_and_fills_the_holes():
    model = tiny_denoiser()
    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    mask = np.zeros((20, 24), bool)
    mask[5:12, 6:15] = True
    calls = []
    out = inpaint(image, mask, model, samples=2, iterations=3, tile=16,
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 12) for k in range(1, 13)]  # 2 x 2 tiles of 16, 3 iterations each
    assert out.samples.shape == (2, 20, 24)
    assert np.array_equal(out.samples[:, ~mask], np.stack([image[~mask]] * 2))
    assert not np.allclose(out.samples[0][mask], out.samples[1][mask])  # two fillings
    with pytest.raises(DataError, match="must match"):
        inpaint(image, mask[:, :10], model)
    with pytest.raises(DataError, match="every pixel"):
        inpaint(image, np.ones_like(mask), model)


def test_smooth_fill_continues_the_surroundings_into_a_hole():
    h, w = 40, 50
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ramp = (0.3 * yy / h + 0.6 * xx / w)[None, None].float()  # (1, 1, H, W), range 0..0.9
    holes = torch.zeros(h, w, dtype=torch.bool)
    holes[10:30, 12:40] = True
    out = smooth_fill(torch.where(holes, 0.0, ramp), holes)
    assert torch.equal(out[..., ~holes], ramp[..., ~holes])
    error = (out - ramp)[..., holes].abs()
    mean_fill_error = (ramp[..., ~holes].mean() - ramp[..., holes]).abs()
    assert error.mean() < 0.25 * mean_fill_error.mean() and error.max() < 0.05
    flat = torch.full((2, 3, 16, 16), 0.7)  # a constant stays constant, every channel
    assert torch.allclose(smooth_fill(flat, holes[:16, :16]), flat)


def test_inpaint_anneals_a_blind_denoiser_and_keeps_rgb_pixels_exactly():
    sigmas = noise_schedule(tiny_denoiser(), 5) * 255  # trained on sigma 20-30
    assert sigmas[0] == pytest.approx(30) and sigmas[-1] == pytest.approx(20)
    assert (sigmas.diff() < 0).all()
    assert noise_schedule(tiny_denoiser(kind="gaussian", sigma=25.0), 5) is None
    image = (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)
    mask = np.zeros((20, 24), bool)
    mask[4:14, 5:17] = True
    out = inpaint(image, mask, tiny_denoiser(), samples=2, iterations=3, tile=16)
    assert out.samples.shape == (2, 20, 24, 3) and out.mean.shape == (20, 24, 3)
    assert np.array_equal(out.samples[:, ~mask], np.stack([image[~mask] / np.float32(255)] * 2))
    assert not np.allclose(out.samples[0][mask], out.samples[1][mask])


# --- training, files and the CLI -----------------------------------------------------------------

def test_fit_unsupervised_estimates_the_noise_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    noisy = [0.5 + rng.standard_normal((32, 32)) * 30 / 255 for _ in range(4)]
    overrides = {"max_steps": 4, "log_every": 2, "checkpoint_every": 2, "batch_size": 2,
                 "data.size": [16, 16], "model.backbone": BACKBONE}
    path = fit_unsupervised(noisy, tmp_path / "run", overrides=overrides, progress=False)
    sigma = checkpoint.load_file(path).model_config["noise"]["sigma"]
    assert sigma == pytest.approx(30, rel=0.1)
    fit_unsupervised(noisy, tmp_path / "run", progress=False, resume=True,
                     overrides={**overrides, "max_steps": 6})  # same estimate: resumable
    assert checkpoint.load_file(path).info["steps"] == 6


def test_denoise_file_keeps_16_bits_and_never_overwrites_the_input(tmp_path):
    model = tiny_denoiser()
    source = tmp_path / "deep.png"
    write_image(source, 0.4 + 0.1 * np.random.default_rng(0).random((24, 20, 1)), bit_depth=16)
    written, _ = denoise_file(model, source, samples=2, save_samples=2, std_map=True)
    assert written.target.name == "deep_denoised.png"
    assert [p.name for p in written.extras] == ["deep_denoised_std.png",
                                                "deep_denoised_sample0.png",
                                                "deep_denoised_sample1.png"]
    from PIL import Image

    with Image.open(written.target) as im:
        assert im.mode.startswith("I") and im.size == (20, 24)
    before = source.read_bytes()
    with pytest.raises(DataError, match="overwrite the input"):
        denoise_file(model, source, source)
    with pytest.raises(DataError, match="exists"):
        denoise_file(model, source)
    assert source.read_bytes() == before


def test_cli_denoise_and_inpaint(tmp_path, capsys):
    model = save(tiny_denoiser(), tmp_path / "den.safetensors")
    image = tmp_path / "a.png"
    write_image(image, 0.4 + 0.1 * np.random.default_rng(0).random((24, 20, 3)))
    assert main(["denoise", str(image), "--model", model, "-k", "2", "--std"]) == 0
    assert (tmp_path / "a_denoised.png").exists() and (tmp_path / "a_denoised_std.png").exists()
    assert "estimated" in capsys.readouterr().out
    ens = tmp_path / "ens.png"
    assert main(["denoise", str(image), "--model", model, "-k", "2", "--ensemble",
                 "-o", str(ens)]) == 0
    assert not np.array_equal(read_image(ens), read_image(tmp_path / "a_denoised.png"))
    mask = tmp_path / "mask.png"
    holes = np.zeros((24, 20, 1))
    holes[4:10, 4:10] = 1
    write_image(mask, holes)
    out = tmp_path / "filled.png"
    assert main(["inpaint", str(image), "--mask", str(mask), "-o", str(out), "--model", model,
                 "--iterations", "2", "-n", "2"]) == 0
    filled, original = read_image(out), read_image(image)
    assert np.array_equal(filled[holes[..., 0] == 0], original[holes[..., 0] == 0])
    assert (tmp_path / "filled_sample1.png").exists()
    small = tmp_path / "small.png"
    write_image(small, holes[:10])
    assert main(["inpaint", str(image), "--mask", str(small), "--model", model]) == 2
    assert "must match" in capsys.readouterr().err
    codec_like = tmp_path / "vae.safetensors"
    vae = build_model(model_config_from_dict({"kind": "dense", "image_size": [16, 16]}))
    checkpoint.save_file(codec_like, "model", vae.state_dict(), vae.config.to_dict(), {})
    assert main(["denoise", str(image), "--model", str(codec_like), "--force"]) == 2
    assert "not a denoiser" in capsys.readouterr().err


def test_generative_commands_refuse_a_denoiser(tmp_path, capsys):
    model = save(tiny_denoiser(), tmp_path / "den.safetensors")
    assert main(["sample", model, "-o", str(tmp_path / "s.png")]) == 2
    assert "is a denoiser" in capsys.readouterr().err


def test_cli_train_preset(tmp_path):
    data = tmp_path / "noisy"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(data / f"{i}.png", np.clip(0.5 + rng.standard_normal((32, 32, 1)) * 0.1,
                                               0, 1))
    args = ["train", "--preset", "denoise-noisy", "--data", str(data), "--out",
            str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--no-progress",
            "--set", "data.size=[16, 16]", "--set", f"model.backbone={BACKBONE}"]
    assert main(args) == 0
    config = checkpoint.load_file(tmp_path / "run" / "model.safetensors").model_config
    assert config["kind"] == "denoiser" and config["noise"]["sigma"] > 0
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
