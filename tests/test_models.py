"""VAE families: shapes, gradients, bounds, and configs that refuse bad values."""

import pytest
import torch

from clearvae.errors import ConfigError
from clearvae.models import (
    ConvVAEConfig,
    DenseVAEConfig,
    HierarchicalVAEConfig,
    build_model,
    model_config_from_dict,
    vae_loss,
)
from tests.conftest import bar_patterns, fit

LIKELIHOODS = ["bernoulli", "gaussian", "gaussian_learned", "logistic_mixture"]
TINY_CONV = dict(widths=(8, 16), latent_channels=2, attention=True)


def _configs(channels, likelihood):
    return [
        DenseVAEConfig(image_channels=channels, image_size=(12, 12), hidden=(32,), latent_dim=4,
                       likelihood=likelihood),
        ConvVAEConfig(image_channels=channels, image_size=(12, 12), likelihood=likelihood,
                      **TINY_CONV),
    ]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_and_likelihood_has_the_right_shapes(likelihood, channels):
    torch.manual_seed(0)
    for config in _configs(channels, likelihood):
        model = build_model(config)
        x = torch.rand(3, channels, 12, 12)
        out = model(x, model.likelihood.target(x))
        assert out.distortion.shape == (3,)
        assert out.kl.ndim == 2 and out.kl.shape[0] == 3 and (out.kl >= 0).all()
        assert out.params.shape == (3, model.likelihood.param_channels, 12, 12)
        assert model.sample(2).shape == (2, channels, 12, 12)
        assert model.reconstruct(x).shape == x.shape
        assert model.interpolate(x[0], x[1], steps=4).shape == (4, channels, 12, 12)
        assert model.iw_log_likelihood(x, k=6, chunk=4).shape == (3,)


def test_conv_vae_takes_any_image_size():
    model = build_model(ConvVAEConfig(image_channels=3, **TINY_CONV))
    x = torch.rand(2, 3, 37, 23)  # not a multiple of 2**levels
    assert model(x).params.shape[-2:] == (37, 23)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(1, size=(19, 41)).shape == (1, 3, 19, 41)


def test_dense_vae_refuses_another_size_with_advice():
    model = build_model(DenseVAEConfig(image_size=(12, 12), hidden=(8,), latent_dim=2))
    with pytest.raises(ConfigError, match="convolutional VAE"):
        model(torch.rand(1, 1, 14, 14))


def test_wrong_channel_count_is_a_clear_error():
    model = build_model(ConvVAEConfig(image_channels=1, **TINY_CONV))
    with pytest.raises(ConfigError, match="gray"):
        model(torch.rand(1, 3, 16, 16))


def test_weights_change_after_one_step():
    """Step 1 moves every parameter with a gradient; residual bodies start at zero (their last
    conv is zero-initialised), so their inner layers get gradients from step 2 on."""
    torch.manual_seed(0)
    model = build_model(ConvVAEConfig(**TINY_CONV))
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 16, 16)
    for step in range(2):
        opt.zero_grad()
        vae_loss(model(x)).loss.backward()
        if step == 0:
            with_grad = {k for k, p in model.named_parameters() if p.grad.abs().sum() > 0}
            assert "encoder.0.weight" in with_grad and "decoder.0.weight" in with_grad
        opt.step()
        if step == 0:
            moved = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
            assert moved == with_grad
    still = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert still == []


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_loss_goes_down_on_a_tiny_set(kind):
    torch.manual_seed(0)
    config = _configs(1, "bernoulli")[0 if kind == "dense" else 1]
    losses, _ = fit(build_model(config), bar_patterns())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_free_bits_and_beta_change_the_loss_not_the_elbo():
    torch.manual_seed(0)
    model = build_model(ConvVAEConfig(**TINY_CONV))
    x = torch.rand(4, 1, 12, 12)
    torch.manual_seed(1)
    out = model(x)
    plain = vae_loss(out)
    held = vae_loss(out, beta=2.0, free_bits=100.0)
    assert held.elbo == plain.elbo
    groups = out.kl.shape[1]
    assert held.loss.item() == pytest.approx(out.distortion.mean().item() + 2 * 100 * groups)


def test_iw_bound_is_at_least_the_elbo_on_average():
    torch.manual_seed(0)
    model = build_model(_configs(1, "bernoulli")[0]).eval()
    x = (torch.rand(16, 1, 12, 12) > 0.5).float()
    elbo = torch.stack([model(x).elbo for _ in range(50)]).mean(0)
    iw = model.iw_log_likelihood(x, k=200, chunk=50)
    assert (iw >= elbo - 0.5).all()  # log-mean-exp of weights >= mean of weights, up to noise


def test_sampling_is_reproducible_with_a_generator_and_temperature_matters():
    model = build_model(ConvVAEConfig(**TINY_CONV)).eval()
    a = model.sample(2, generator=torch.Generator().manual_seed(3))
    b = model.sample(2, generator=torch.Generator().manual_seed(3))
    c = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(3))
    d = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(c, d)  # temperature 0 decodes the prior mean whatever the seed


def test_unknown_config_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="latent_dmi.*valid keys are:.*latent_dim"):
        DenseVAEConfig.from_dict({"latent_dmi": 3})


@pytest.mark.parametrize("bad, match", [
    ({"kind": "conv", "widths": "wide"}, "expected a list"),
    ({"kind": "conv", "likelihood": "poisson"}, "not one of"),
    ({"kind": "dense", "latent_dim": 2.5}, "expected an integer"),
    ({"kind": "dense", "image_channels": 2}, "1 or 3"),
    ({"kind": "mlp"}, "model.kind must be one of"),
])
def test_bad_config_values_fail_loudly(bad, match):
    with pytest.raises(ConfigError, match=match):
        model_config_from_dict(bad)


def test_config_round_trips_through_dict():
    config = ConvVAEConfig(widths=(4, 8, 8), likelihood="logistic_mixture", mixtures=3)
    assert model_config_from_dict(config.to_dict()) == config


def test_mixed_precision_keeps_kl_and_likelihood_in_float32():
    hierarchical = HierarchicalVAEConfig(image_size=(12, 12), widths=(8, 8), latent_channels=2,
                                         blocks_per_resolution=(1, 2),
                                         likelihood="gaussian_learned")
    for config in [*_configs(1, "gaussian_learned"), hierarchical]:
        torch.manual_seed(0)
        model = build_model(config)
        x = torch.rand(2, 1, 12, 12)
        torch.manual_seed(1)
        ref = model(x)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
        for t in (mixed.distortion, mixed.kl, mixed.params):
            assert t.dtype == torch.float32
        # bfloat16 keeps 8 significant bits: the terms agree to about a percent, not exactly
        torch.testing.assert_close(mixed.kl, ref.kl, rtol=0.05, atol=0.05)
        torch.testing.assert_close(mixed.distortion, ref.distortion, rtol=0.02, atol=0.5)
