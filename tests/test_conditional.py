"""The conditional denoiser: a U-Net for the posterior mean, a latent branch for the draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clearvae import checkpoint
from clearvae.data import write_image
from clearvae.errors import ConfigError
from clearvae.models import build_model, model_config_from_dict
from clearvae.models.denoiser import DenoisingVAE, DenoisingVAEConfig, denoise_objective, recorrupt
from clearvae.noise import NoiseConfig
from clearvae.restore import denoise, inpaint
from clearvae.restore.presets import preset
from clearvae.training import ObjectiveConfig, TrainConfig
from clearvae.training import train as run_training
from tests.conftest import bar_patterns

BACKBONE = {"kind": "conditional", "image_channels": 1, "image_size": [16, 16],
            "widths": [8, 16, 16], "blocks": 1, "latent_channels": 2, "branch": 0.5}


def tiny(synthetic=(20, 30)) -> DenoisingVAE:
    torch.manual_seed(0)
    return DenoisingVAE(DenoisingVAEConfig.from_dict(
        {"backbone": BACKBONE, "noise": {"synthetic": list(synthetic)}}))


def train(model: DenoisingVAE, clean: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = denoise_objective(model, clean, ObjectiveConfig(), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / float(np.mean((np.clip(a, 0, 1) - b) ** 2)))


def test_the_backbone_kind_picks_the_config_class():
    config = model_config_from_dict({"kind": "denoiser", "backbone": BACKBONE,
                                     "noise": {"synthetic": [5, 50]}})
    assert config.conditional and config.backbone.widths == (8, 16, 16)
    hdn = preset("denoise-synthetic-hdn")["model"]
    assert not model_config_from_dict(hdn).conditional
    assert TrainConfig.from_dict(preset("denoise-synthetic")).model.conditional
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        model_config_from_dict({"kind": "denoiser", "backbone": {"kind": "nope"}})


@pytest.mark.parametrize("bad, match", [
    ({"backbone": BACKBONE, "recorruption": [0, 1]}, "recorruption"),
    ({"backbone": {**BACKBONE, "widths": [8]}}, "at least two"),
    ({"backbone": {**BACKBONE, "branch": 0}}, "branch"),
    ({"backbone": {**BACKBONE, "depth": 3}}, "unknown key"),
])
def test_bad_conditional_configs_fail_clearly(bad, match):
    with pytest.raises(ConfigError, match=match):
        DenoisingVAEConfig.from_dict({"noise": {"synthetic": [5, 50]}, **bad})


def test_the_mean_learns_from_its_mse_alone():
    """The branch's terms (draws' likelihood and KL) give no gradient to the U-Net."""
    model = tiny()
    train(model, bar_patterns()[:4], 5)  # the zero-initialised layers become nonzero
    y, x = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    sigma = torch.full((2,), 0.1)
    out = model(y, sigma, x)
    mse = 0.5 * (x - out.params).square().flatten(1).sum(1) / (25 / 255) ** 2
    branch = (out.distortion - mse + out.kl.sum(1)).sum()
    unet = [model.backbone.stem.weight, model.backbone.head[1].weight,
            model.backbone.enc[0][0].body[0].weight]
    grads = torch.autograd.grad(branch, unet, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)
    latent = [model.backbone.prior[0].body[1].weight, model.backbone.out[1].weight]
    assert all(g.abs().max() > 0 for g in torch.autograd.grad(branch, latent))


def test_training_on_noisy_bars_learns_to_denoise_and_draws_spread():
    model = tiny(synthetic=(25, 25))
    clean = torch.nn.functional.pad(bar_patterns(), (2, 2, 2, 2))  # (8, 1, 16, 16)
    torch.manual_seed(0)
    losses = train(model, clean, 200)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    gain = []
    for i in range(8):
        image = clean[i, 0].numpy()
        noisy = image + np.random.default_rng(i).standard_normal(image.shape) * 25 / 255
        result = denoise(noisy, model, samples=4, keep_samples=True, sigma=25.0)
        gain.append(psnr(result.mean, image) - psnr(noisy, image))
        # the estimate is the U-Net's mean, not the draws' average, and it is deterministic
        assert np.array_equal(result.mean, denoise(noisy, model, samples=1, seed=5).mean)
        assert result.std.max() > 0  # the draws differ
    assert np.mean(gain) > 3.0, gain  # noisy input: ~20 dB


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_recorruption_pairs_have_uncorrelated_noise_of_the_stated_variance(alpha):
    sigma = 25 / 255
    torch.manual_seed(0)
    y = 0.5 + sigma * torch.randn(64, 1, 32, 32)  # noisy images of a flat 0.5
    inp, target, target_var = recorrupt(NoiseConfig(sigma=25.0), y, (alpha, alpha))
    a, b = (inp - 0.5).flatten(), (target - 0.5).flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02
    assert float(a.var()) == pytest.approx((1 + alpha**2) * sigma**2, rel=0.03)
    assert float(b.var()) == pytest.approx((1 + 1 / alpha**2) * sigma**2, rel=0.03)
    assert torch.allclose(target_var, torch.full_like(y, (1 + 1 / alpha**2) * sigma**2))


def test_poisson_gaussian_recorruption_follows_the_signal_level():
    noise = NoiseConfig(kind="poisson_gaussian", a=0.01, b=1e-4)
    y = torch.cat([torch.full((8, 1, 16, 16), 0.1), torch.full((8, 1, 16, 16), 0.9)])
    _, _, target_var = recorrupt(noise, y, (1.0, 1.0))
    assert torch.allclose(target_var[:8], torch.full_like(target_var[:8], 2 * (0.01 * 0.1 + 1e-4)))
    assert torch.allclose(target_var[8:], torch.full_like(target_var[8:], 2 * (0.01 * 0.9 + 1e-4)))


def test_training_on_noisy_bars_alone_learns_to_denoise():
    """Recorruption: no clean image is seen, only fixed noisy copies of the bars."""
    torch.manual_seed(0)
    model = DenoisingVAE(DenoisingVAEConfig.from_dict({"backbone": BACKBONE,
                                                        "noise": {"sigma": 25}}))
    clean = torch.nn.functional.pad(bar_patterns(), (2, 2, 2, 2)).repeat(4, 1, 1, 1)  # (32, ...)
    noisy = clean + 25 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    losses = train(model, noisy, 300)
    assert np.mean(losses[-30:]) < np.mean(losses[:30])
    gain = []
    for i in range(8):  # new noise on the clean bars: not the training images
        image = clean[i, 0].numpy()
        y = image + np.random.default_rng(100 + i).standard_normal(image.shape) * 25 / 255
        gain.append(psnr(denoise(y, model, samples=1, sigma=25.0).mean, image) - psnr(y, image))
    assert np.mean(gain) > 3.0, gain


def test_conditional_denoise_tiles_rgb_and_inpaints():
    model = tiny()
    train(model, bar_patterns()[:4], 5)
    rgb = np.random.default_rng(0).uniform(0.2, 0.8, (37, 29, 3)).astype(np.float32)
    whole = denoise(rgb, model, samples=3, keep_samples=True, tile=64)
    tiles = denoise(rgb, model, samples=3, tile=24, overlap=8)
    assert whole.mean.shape == whole.std.shape == (37, 29, 3)
    assert whole.samples.shape == (3, 37, 29, 3)
    # the mean is deterministic, so tiling changes it only where tiles blend (border effects)
    assert np.abs(tiles.mean - whole.mean).mean() < 0.05
    mask = np.zeros((37, 29), bool)
    mask[10:20, 8:16] = True
    filled = inpaint(rgb, mask, model, samples=2, iterations=3)
    assert filled.samples.shape == (2, 37, 29, 3)
    assert np.array_equal(filled.samples[:, ~mask], np.broadcast_to(rgb[~mask],
                                                                    (2, *rgb[~mask].shape)))


@pytest.mark.parametrize("name", ["denoise-synthetic", "denoise-noisy"])
def test_training_loop_runs_the_conditional_presets(tmp_path, name):
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(data / f"{i}.png", rng.uniform(0, 1, (32, 32, 1)))
    cfg = preset(name)
    cfg["model"]["backbone"] = BACKBONE
    cfg.update(out=str(tmp_path / "run"), max_steps=2, batch_size=2, log_every=1)
    cfg["data"] = {**cfg["data"], "train": str(data), "size": [16, 16]}
    config = TrainConfig.from_dict(cfg)
    run_training(config, progress=False)
    model = build_model(config.model)
    assert isinstance(model, DenoisingVAE) and (tmp_path / "run" / "model.safetensors").exists()
    saved = checkpoint.load_file(tmp_path / "run" / "model.safetensors").model_config
    assert saved["backbone"]["kind"] == "conditional"
    if name == "denoise-noisy":  # from noisy images alone: the noise level is estimated first
        assert saved["noise"]["synthetic"] is None and saved["noise"]["sigma"] > 0
