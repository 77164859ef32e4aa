"""The conditional denoiser: a U-Net for the posterior mean, a latent branch for the draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clearvae.data import write_image
from clearvae.errors import ConfigError
from clearvae.models import build_model, model_config_from_dict
from clearvae.models.denoiser import DenoisingVAE, DenoisingVAEConfig, denoise_objective
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
    ({"backbone": BACKBONE, "noise": {"sigma": 25}}, "synthetic"),  # needs clean targets
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


def test_training_loop_runs_the_conditional_preset(tmp_path):
    data = tmp_path / "clean"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(data / f"{i}.png", rng.uniform(0, 1, (32, 32, 1)))
    cfg = preset("denoise-synthetic")
    cfg["model"]["backbone"] = BACKBONE
    cfg.update(out=str(tmp_path / "run"), max_steps=2, batch_size=2, log_every=1)
    cfg["data"] = {**cfg["data"], "train": str(data), "size": [16, 16]}
    config = TrainConfig.from_dict(cfg)
    run_training(config, progress=False)
    model = build_model(config.model)
    assert isinstance(model, DenoisingVAE) and (tmp_path / "run" / "model.safetensors").exists()
