"""Early stopping of denoisers from noisy images alone: a held-out share of the training
images, the recorruption validation error, and ``keep_best``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from clearvae import checkpoint
from clearvae.cli import main
from clearvae.data import write_image
from clearvae.data.registry import hold_out
from clearvae.data.synthetic import SyntheticDigits
from clearvae.errors import ConfigError
from clearvae.models import build_model, model_config_from_dict
from clearvae.models.denoiser import validation_error
from clearvae.training import BEST_NAME, TrainConfig, train

UNET = {"kind": "conditional", "image_channels": 1, "image_size": [16, 16], "widths": [8, 16],
        "blocks": 1, "latent_channels": 2}


def conditional(sigma: float = 25.0):
    return build_model(model_config_from_dict(
        {"kind": "denoiser", "backbone": UNET, "noise": {"kind": "gaussian", "sigma": sigma}}))


def test_hold_out_is_a_fixed_disjoint_split_that_keeps_the_keys():
    data = SyntheticDigits(20, size=16)
    train_set, val_set = hold_out(data, 0.25, seed=3)
    again, val_again = hold_out(data, 0.25, seed=3)
    assert len(val_set) == 5 and len(train_set) == 15
    assert val_set.indices == val_again.indices and train_set.indices == again.indices
    assert sorted(train_set.indices + val_set.indices) == list(range(20))
    assert hold_out(data, 0.25, seed=4)[1].indices != val_set.indices
    inner = val_set.indices[2]
    assert torch.equal(val_set[(2, 7)], data[(inner, 7)]) and torch.equal(val_set[2], data[inner])
    with pytest.raises(IndexError):
        val_set[5]
    with pytest.raises(ConfigError, match="leaving none to train on"):
        hold_out(SyntheticDigits(2, size=16), 0.9, seed=0)


def test_validation_error_is_the_error_against_clean_plus_a_constant(monkeypatch):
    """Gaussian recorruption: an oracle that returns the clean image scores the target's
    noise variance alone; copying the noisy input scores far more."""
    model = conditional(sigma=25.0)
    clean = torch.full((64, 1, 16, 16), 0.5)
    noisy = clean + 25 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))

    def errors(mean):
        monkeypatch.setattr(model.backbone, "mean", mean)
        torch.manual_seed(1)
        return validation_error(model, noisy).item()

    oracle = errors(lambda y: torch.full_like(y, 0.5))
    copy = errors(lambda y: y)
    d2 = (25 / 255) ** 2
    # alpha uniform in [0.5, 1]: E[1 + 1 / alpha^2] = 1 + 2 = 3, so the oracle's error is 3 D^2
    assert oracle == pytest.approx(3 * d2, rel=0.05)
    assert copy > oracle + 0.9 * d2  # the input's own noise (1 + alpha^2) D^2 on top


def test_val_share_and_keep_best_are_checked():
    base = {"model": {"kind": "denoiser", "backbone": UNET,
                      "noise": {"kind": "gaussian", "sigma": 25.0}}}
    with pytest.raises(ConfigError, match="VAE is validated on data.val"):
        TrainConfig.from_dict({"data": {"val_share": 0.2}})
    with pytest.raises(ConfigError, match="keep_best needs"):
        TrainConfig.from_dict({**base, "keep_best": True, "data": {"val_share": 0.2}})
    with pytest.raises(ConfigError, match="val_share"):
        TrainConfig.from_dict({**base, "data": {"val_share": 1.0}})
    TrainConfig.from_dict({**base, "keep_best": True, "eval_every": 2,
                           "data": {"val_share": 0.2}})


def _noisy_folder(path, n=8):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(path / f"{i}.png", np.clip(0.5 + rng.standard_normal((24, 24, 1)) * 0.1, 0, 1))
    return path


def _val_log(run) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f)
                if r["name"] == "val_mse"}


def test_keep_best_writes_the_weights_of_the_lowest_validation_error(tmp_path):
    data = _noisy_folder(tmp_path / "noisy")
    run = tmp_path / "run"
    args = ["train", "--preset", "denoise-noisy", "--data", str(data), "--out", str(run),
            "--max-steps", "8", "--batch-size", "2", "--no-progress",
            "--set", "data.size=[16, 16]", "--set", f"model.backbone={UNET}",
            "--set", "data.val_share=0.25", "--set", "eval_every=2", "--set", "keep_best=true",
            "--set", "lr=0.02", "--set", "ema_decay=0"]
    assert main(args) == 0
    logged = _val_log(run)
    assert sorted(logged) == [2, 4, 6, 8]
    model = checkpoint.load_file(run / "model.safetensors")
    best_step = min(logged, key=logged.get)
    assert model.info["best_step"] == best_step and model.info["val_images"] == 2
    assert model.info["best_val_mse"] == pytest.approx(logged[best_step])
    best = checkpoint.load_file(run / BEST_NAME)
    assert best.info["step"] == best_step
    assert all(torch.equal(model.tensors[k], v) for k, v in best.tensors.items())
    if best_step != 8:  # the last weights were not the best: the model file is not them
        last = checkpoint.load_file(run / "checkpoints" / "last.safetensors").section("ema")
        assert any(not torch.equal(model.tensors[k], v) for k, v in last.items())


def test_keep_best_survives_a_resume(tmp_path):
    data = _noisy_folder(tmp_path / "noisy")
    settings = {"model": {"kind": "denoiser", "backbone": UNET, "noise": {"kind": "gaussian"}},
                "data": {"train": str(data), "size": [16, 16], "channels": 1,
                         "val_share": 0.25},
                "batch_size": 2, "eval_every": 2, "keep_best": True, "ema_decay": 0.0,
                "lr": 0.02, "checkpoint_every": 2, "log_every": 2}
    whole = TrainConfig.from_dict({**settings, "out": str(tmp_path / "whole"), "max_steps": 8})
    train(whole, progress=False)
    part = {**settings, "out": str(tmp_path / "part")}
    train(TrainConfig.from_dict({**part, "max_steps": 4}), progress=False)
    train(TrainConfig.from_dict({**part, "max_steps": 8}), resume=True, progress=False)
    a = checkpoint.load_file(tmp_path / "whole" / "model.safetensors")
    b = checkpoint.load_file(tmp_path / "part" / "model.safetensors")
    assert a.info["best_step"] == b.info["best_step"]
    assert a.info["best_val_mse"] == pytest.approx(b.info["best_val_mse"], rel=1e-5)
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
