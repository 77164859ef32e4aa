"""The training loop: outputs, resume equivalence, skipped updates, errors, DDP."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from clearvae import checkpoint, training
from clearvae.errors import ConfigError, DataError, TrainingError
from clearvae.generate import load
from clearvae.training import TrainConfig, train


def _config(out, **changes):
    base = {
        "model": {"kind": "conv", "widths": [8, 16], "latent_channels": 2, "attention": False},
        "data": {"train": "synthetic-digits:64"},
        "out": str(out), "max_steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 2,
        "lr_warmup_steps": 2,
    }
    for key, value in changes.items():
        base[key] = value
    return TrainConfig.from_dict(base)


def _weights(path):
    return checkpoint.load_file(path).tensors


def test_training_writes_model_checkpoint_and_logs(tmp_path):
    model_path = train(_config(tmp_path))
    assert model_path == tmp_path / "model.safetensors"
    info = checkpoint.load_file(model_path).info
    assert info["steps"] == 6 and info["data"] == "synthetic-digits:64"
    ckpt = checkpoint.load_file(tmp_path / training.CHECKPOINT_NAME, expect="checkpoint")
    assert ckpt.info["step"] == 6
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["step"] for r in rows} == {"2", "4", "6"}
    assert {"loss", "elbo", "kl", "steps_per_s", "grad_norm"} <= {r["name"] for r in rows}
    assert any((tmp_path / "tensorboard").iterdir())
    model = load(model_path)
    assert model.sample(2).shape == (2, 1, 28, 28)


def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path):
    straight = train(_config(tmp_path / "a", max_steps=8, checkpoint_every=8))
    again = train(_config(tmp_path / "b", max_steps=8, checkpoint_every=8))
    train(_config(tmp_path / "c", max_steps=5, checkpoint_every=5))  # "interrupted" at step 5
    with open(tmp_path / "c" / "metrics.csv", "a") as f:  # logged after the last checkpoint
        f.write("7,loss,123.0\n")
    resumed = train(_config(tmp_path / "c", max_steps=8, checkpoint_every=8), resume=True)
    a, b, c = _weights(straight), _weights(again), _weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], c[key]), key
    with open(tmp_path / "c" / "metrics.csv") as f:  # no step logged twice after resuming
        steps = [(r["step"], r["name"]) for r in csv.DictReader(f)]
    assert len(steps) == len(set(steps))
    ca = _weights(tmp_path / "a" / training.CHECKPOINT_NAME)
    cc = _weights(tmp_path / "c" / training.CHECKPOINT_NAME)
    assert ca.keys() == cc.keys()
    for key in ca:  # live weights and optimizer moments too
        assert torch.equal(ca[key], cc[key]), key


def test_a_non_finite_step_is_skipped_and_reported(tmp_path, monkeypatch, capsys):
    real = training.OBJECTIVES["conv"]
    seen = {}

    def objective(model, x, objective, step):
        loss, metrics = real(model, x, objective, step)
        if step == 2:
            seen["before"] = [p.detach().clone() for p in model.parameters()]
            return loss * float("nan"), metrics
        if step == 3:
            seen["after"] = [p.detach().clone() for p in model.parameters()]
        return loss, metrics

    monkeypatch.setitem(training.OBJECTIVES, "conv", objective)
    train(_config(tmp_path))
    assert "step 2: skipped the update" in capsys.readouterr().out
    for before, after in zip(seen["before"], seen["after"]):
        assert torch.equal(before, after)
        assert torch.isfinite(after).all()


def test_divergence_stops_with_advice(tmp_path, monkeypatch):
    real = training.OBJECTIVES["conv"]
    monkeypatch.setattr(training, "MAX_SKIPS_IN_A_ROW", 3)
    monkeypatch.setitem(training.OBJECTIVES, "conv",
                        lambda *a: (real(*a)[0] * float("inf"), real(*a)[1]))
    with pytest.raises(TrainingError, match="diverged.*Lower lr"):
        train(_config(tmp_path))


def test_resume_errors(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(_config(tmp_path), resume=True)
    train(_config(tmp_path, max_steps=3))
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(tmp_path))
    other = _config(tmp_path, model={"kind": "conv", "widths": [8, 8], "latent_channels": 2})
    with pytest.raises(TrainingError, match="different model config"):
        train(other, resume=True)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_replicas_identical(tmp_path):
    """Two gloo processes train; the loop checks at each checkpoint that the replicas' weights
    are identical (raising otherwise), and the file records the world size."""
    cmd = [sys.executable, "-m", "clearvae", "train", "--data", "synthetic-digits:64",
           "--out", str(tmp_path), "--max-steps", "4", "--batch-size", "8", "--devices", "2",
           "--strategy", "ddp", "--accelerator", "cpu", "--set", "checkpoint_every=2",
           "--set", "model.widths=[8,16]", "--set", "model.latent_channels=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = checkpoint.load_file(tmp_path / "model.safetensors").info
    assert info["world_size"] == 2 and info["steps"] == 4
    first, second = info["replica_fingerprints"]
    assert first == second


def test_init_from_starts_from_earlier_weights(tmp_path):
    first = train(_config(tmp_path / "a", max_steps=3))
    warm = _config(tmp_path / "b", max_steps=1, lr=1e-12, lr_warmup_steps=1, ema_decay=0.0,
                   init_from=str(first))
    second = train(warm)
    a, b = _weights(first), _weights(second)
    for key in a:  # a (near) zero learning rate keeps the loaded weights
        torch.testing.assert_close(a[key], b[key])
    other = _config(tmp_path / "c", init_from=str(first),
                    model={"kind": "conv", "widths": [8, 8], "latent_channels": 2})
    with pytest.raises(TrainingError, match="another config"):
        train(other)


def test_init_from_may_add_a_codec_context_but_not_drop_it(tmp_path):
    codec = {"kind": "hyperprior", "channels_n": 8, "channels_m": 8, "image_channels": 1}
    plain = train(_config(tmp_path / "a", max_steps=2, batch_size=2, model=codec))
    sliced = {**codec, "context_slices": 2}
    warm = train(_config(tmp_path / "b", max_steps=1, batch_size=2, lr=1e-12,
                         lr_warmup_steps=1, ema_decay=0.0, init_from=str(plain), model=sliced))
    a, b = _weights(plain), _weights(warm)
    assert {k for k in b if k not in a} and all(k.startswith("context.") for k in b if k not in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(TrainingError, match="do not fit"):  # the other way round
        train(_config(tmp_path / "c", init_from=str(warm), model=codec))
    with pytest.raises(TrainingError, match="differing only in context_slices"):
        train(_config(tmp_path / "d", init_from=str(plain), model={**codec, "channels_m": 16}))


def test_max_minutes_stops_at_a_log_interval_with_a_checkpoint(tmp_path):
    path = train(_config(tmp_path, max_steps=1000, max_minutes=1e-9, log_every=3))
    info = checkpoint.load_file(path).info
    assert info["steps"] == 3 and info["train_seconds"] >= 0
    assert checkpoint.load_file(tmp_path / training.CHECKPOINT_NAME).info["step"] == 3


def test_a_codec_trains_in_mixed_precision_and_codes_a_real_file(tmp_path):
    from clearvae.codec.storage import load_codec

    config = _config(tmp_path, precision="bf16-mixed", max_steps=4, batch_size=4,
                     model={"kind": "hyperprior", "channels_n": 8, "channels_m": 8,
                            "image_channels": 1, "context_slices": 2})
    path = train(config)  # its context_slices are latent slices: the data stays 2-D
    codec = load_codec(path)
    digit = (torch.rand(28, 28, 1) * 255).to(torch.uint8).numpy()
    assert codec.decompress(codec.compress(digit, quality=4)).shape == (28, 28, 1)
    with pytest.raises(DataError, match="gray images only"):  # a gray model, a colour image
        codec.compress(digit.repeat(3, axis=2))


@pytest.mark.skipif(not any(map(shutil.which, ("c++", "g++", "clang++"))),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_writes_the_same_parameter_names(tmp_path):
    eager = _weights(train(_config(tmp_path / "a", max_steps=2)))
    compiled = _weights(train(_config(tmp_path / "b", max_steps=2, compile=True)))
    assert eager.keys() == compiled.keys()
    for key in eager:  # the same run, up to the fused kernels' rounding
        torch.testing.assert_close(eager[key], compiled[key], rtol=1e-3, atol=1e-4)


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision must be one of"):
        _config("unused", precision="fp8")


def test_the_codec_prior_quantiles_stay_out_of_the_clipped_and_checked_gradient_norm(
        tmp_path, monkeypatch):
    """The aux loss moves only the quantiles; its gradient grew to ~3000 in real training,
    far above the rate-distortion one, and made skip_threshold skip every update."""
    from lightning_fabric import Fabric

    from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig

    config = _config(tmp_path, skip_threshold=1e4, grad_clip=None, model={
        "kind": "hyperprior", "channels_n": 8, "channels_m": 8, "image_channels": 1})
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    model = HyperpriorCodec(HyperpriorCodecConfig(channels_n=8, channels_m=8, image_channels=1))
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.0))
    x = torch.rand(2, 1, 64, 64)

    def step():
        torch.manual_seed(1)  # the same qualities and noise each time
        return training.train_step(fabric, model, optimizer, x, config, 0)

    plain = step()
    quantiles = model.z_prior.quantiles
    grads = [p.grad for p in model.parameters() if p is not quantiles and p.grad is not None]
    rd_norm = float(torch.cat([g.flatten() for g in grads]).norm())
    assert plain["grad_norm"] == pytest.approx(rd_norm, rel=1e-5)
    assert plain["aux_grad_norm"] == pytest.approx(float(quantiles.grad.norm()), rel=1e-5)
    assert 0 < plain["aux_grad_norm"] and plain["grad_norm"] < 1e4 and not plain["skipped"]

    aux_loss = model.z_prior.aux_loss
    monkeypatch.setattr(model.z_prior, "aux_loss", lambda: 1e6 * aux_loss())
    loud = step()
    assert loud["aux_grad_norm"] > 1e4  # would have tripped skip_threshold before
    assert loud["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert not loud["skipped"]
