"""The hierarchical (top-down) VAE: shapes, per-group KL, sampling controls, bounds, training."""

import re

import pytest
import torch

from clearvae import checkpoint, training
from clearvae.errors import ConfigError
from clearvae.generate import load
from clearvae.models import (
    HierarchicalVAE,
    HierarchicalVAEConfig,
    build_model,
    model_config_from_dict,
    vae_loss,
)
from clearvae.models.hierarchical import Gaussian
from clearvae.training import TrainConfig, train
from tests.conftest import bar_patterns, fit

LIKELIHOODS = ["bernoulli", "gaussian", "gaussian_learned", "logistic_mixture"]
# Two resolutions (12 -> 6), one group at full and two at half resolution: G = 3.
TINY = dict(image_size=(12, 12), widths=(8, 8), blocks_per_resolution=(1, 2),
            latent_channels=2, attention=True)


def _model(seed=0, **changes):
    torch.manual_seed(seed)
    return build_model(HierarchicalVAEConfig(**{**TINY, **changes}))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_one_nonnegative_kl_column_per_group(likelihood, channels):
    model = _model(image_channels=channels, likelihood=likelihood)
    x = torch.rand(3, channels, 12, 12)
    out = model(x, model.likelihood.target(x))
    assert out.distortion.shape == (3,) and torch.isfinite(out.distortion).all()
    assert out.kl.shape == (3, model.config.groups) == (3, 3)
    assert (out.kl >= 0).all()
    assert out.params.shape == (3, model.likelihood.param_channels, 12, 12)
    assert model.sample(2).shape == (2, channels, 12, 12)
    assert model.reconstruct(x).shape == x.shape
    assert model.interpolate(x[0], x[1], steps=4).shape == (4, channels, 12, 12)
    assert model.resample_below(x, keep=1, n=2).shape == (3, 2, channels, 12, 12)
    assert model.iw_log_likelihood(x, k=6, chunk=4).shape == (3,)


def test_takes_any_image_size():
    model = _model(image_channels=3)
    x = torch.rand(2, 3, 37, 23)  # not a multiple of 2**levels
    assert model(x).params.shape[-2:] == (37, 23)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(1, size=(19, 41)).shape == (1, 3, 19, 41)


def test_gaussian_kl_and_log_prob_match_torch_distributions():
    def gaussian(mean, std):
        return Gaussian(torch.tensor(mean).view(1, 2, 1, 1), torch.tensor(std).view(1, 2, 1, 1))

    q, p = gaussian([0.3, -1.0], [0.5, 2.0]), gaussian([-0.2, 0.0], [1.3, 0.1])
    tq, tp = torch.distributions.Normal(*q), torch.distributions.Normal(*p)
    expected = torch.distributions.kl_divergence(tq, tp).sum()
    torch.testing.assert_close(q.kl(p), expected.view(1))
    z = torch.randn(1, 2, 1, 1)
    torch.testing.assert_close(q.log_prob(z), tq.log_prob(z).sum().view(1))
    assert q.kl(q).item() == 0.0  # exactly, not a rounding error below zero


def test_per_group_temperatures():
    model = _model().eval()
    same = model.sample(2, [1.0, 1.0, 1.0], generator=_gen(3))
    assert torch.equal(same, model.sample(2, 1.0, generator=_gen(3)))
    # Only the bottom group random: the seed matters, unlike with all temperatures at 0.
    a = model.sample(2, [0.0, 0.0, 1.0], generator=_gen(3))
    b = model.sample(2, [0.0, 0.0, 1.0], generator=_gen(4))
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="2 temperatures for a model with 3 latent groups"):
        model.sample(2, [1.0, 1.0])
    with pytest.raises(ConfigError, match=">= 0"):
        model.sample(2, -1.0)


def test_temperature_zero_is_deterministic():
    model = _model().eval()
    c = model.sample(2, temperature=0.0, generator=_gen(3))
    d = model.sample(2, temperature=[0.0, 0.0, 0.0], generator=_gen(4))
    assert torch.equal(c, d)  # prior means all the way down, whatever the seed
    assert not torch.equal(model.sample(2, generator=_gen(3)), model.sample(2, generator=_gen(4)))


def test_resample_below_keeps_the_top_and_redraws_the_rest():
    model = _model().eval()
    x = torch.rand(2, 1, 12, 12)
    groups = model.config.groups
    kept = model.resample_below(x, keep=groups, n=3, generator=_gen(1))
    for i in range(3):  # every group from the posterior: the reconstruction, n times
        torch.testing.assert_close(kept[:, i], model.reconstruct(x), atol=1e-6, rtol=0)
    free1 = model.resample_below(x[:1], keep=0, n=3, generator=_gen(1))
    free2 = model.resample_below(x[:1], keep=0, n=3, generator=_gen(2))
    assert not torch.allclose(free1, free2)
    # keep=0 ignores x: prior samples, drawn in the same order as sample() draws them.
    torch.testing.assert_close(free1[0], model.sample(3, generator=_gen(1)), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="between 0 and 3"):
        model.resample_below(x, keep=4, n=1)


def test_interpolation_ends_at_the_reconstructions():
    model = _model().eval()
    x = torch.rand(2, 1, 12, 12)
    path = model.interpolate(x[0], x[1], steps=5)
    recon = model.reconstruct(x)
    torch.testing.assert_close(path[0], recon[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(path[-1], recon[1], atol=1e-6, rtol=0)


def test_iw_bound_is_at_least_the_elbo_on_average():
    model = _model(blocks_per_resolution=(0, 2)).eval()
    x = (torch.rand(16, 1, 12, 12) > 0.5).float()
    elbo = torch.stack([model(x).elbo for _ in range(50)]).mean(0)
    iw = model.iw_log_likelihood(x, k=200, chunk=50)
    assert (iw >= elbo - 0.5).all()  # log-mean-exp of weights >= mean of weights, up to noise
    assert iw.mean() > elbo.mean()


def test_loss_goes_down_on_a_tiny_set():
    model = _model(widths=(16, 32), blocks_per_resolution=(0, 2), bottleneck=0.5)
    # Without normalisation layers and with small initial outputs, the model needs a larger
    # step than the conv VAE's test to get this far in 60 steps.
    losses, terms = fit(model, bar_patterns(), lr=1e-2)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert terms.kl > 1.0  # by using its latents, not only by learning the mean image


def test_weights_change_after_a_few_steps():
    """Step 1 moves every parameter with a gradient. The prior and posterior nets' last
    convolutions start at zero (q = p = N(0, I), no state change), so their inner layers and the
    bottom-up encoder, which feeds only the posterior nets, wait for step 2; so do the layers
    before the attention's zero-initialised output projection. The encoder's attention is behind
    two such layers (its own output and the posterior's), so its inner layers move at step 3."""
    model = _model()
    names = {k for k, _ in model.named_parameters()}
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 12, 12)
    for step in range(3):
        opt.zero_grad()
        vae_loss(model(x)).loss.backward()
        if step == 0:
            with_grad = {k for k, p in model.named_parameters() if p.grad.abs().sum() > 0}
            # body.1, .3, .5 are the inner convolutions, body.7 the last one.
            waiting = {k for k in names if re.match(r"(stem|enc_cells|down|enc_attention)\.", k)
                       or re.search(r"\.(prior|posterior)\.body\.[135]\.", k)
                       or re.match(r"dec_attention\.(norm|qkv)\.", k)}
            assert names - with_grad == waiting
            assert {"start", "head.1.weight", "blocks.0.0.posterior.body.7.weight",
                    "blocks.1.1.prior.body.7.bias", "blocks.1.1.cell.body.1.weight"} <= with_grad
        opt.step()
        if step == 0:
            moved = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
            assert moved == with_grad
    assert [k for k, p in model.named_parameters() if torch.equal(p, before[k])] == []


def test_too_many_levels_fails_at_construction_with_the_largest_allowed():
    with pytest.raises(ConfigError, match=r"28x28 image reaches 1x1 after 5 .*at most 6 widths"):
        HierarchicalVAEConfig(image_size=(28, 28), widths=(4,) * 7,
                              blocks_per_resolution=(0,) * 6 + (1,))
    with pytest.raises(ConfigError, match="at most 4 widths"):
        model_config_from_dict({"kind": "hierarchical", "image_size": [8, 12],
                                "widths": [4] * 5, "blocks_per_resolution": [0, 0, 0, 0, 1]})
    # The largest allowed works: 28 -> 14 -> 7 -> 4 -> 2 -> 1.
    model = build_model(HierarchicalVAEConfig(image_size=(28, 28), widths=(4,) * 6,
                                              blocks_per_resolution=(0,) * 5 + (1,),
                                              latent_channels=1))
    assert model(torch.rand(1, 1, 28, 28)).params.shape == (1, 1, 28, 28)


@pytest.mark.parametrize("bad, match", [
    ({"blocks_per_resolution": [1]}, "one count per resolution"),
    ({"blocks_per_resolution": [1, 0]}, "lowest resolution"),
    ({"blocks_per_resolution": [-1, 2]}, ">= 0"),
    ({"bottleneck": 0.0}, "bottleneck > 0"),
    ({"blocks_per_level": 2}, "valid keys are:.*blocks_per_resolution"),
])
def test_bad_config_values_fail_loudly(bad, match):
    with pytest.raises(ConfigError, match=match):
        model_config_from_dict({"kind": "hierarchical", "widths": [4, 4],
                                "blocks_per_resolution": [1, 1], **bad})


def test_config_round_trips_through_dict():
    config = HierarchicalVAEConfig(**{**TINY, "likelihood": "logistic_mixture", "mixtures": 3})
    assert model_config_from_dict(config.to_dict()) == config


def test_trains_through_the_trainer_and_loads_back(tmp_path):
    config = TrainConfig.from_dict({
        "model": {"kind": "hierarchical", "widths": [8, 8], "blocks_per_resolution": [1, 1],
                  "latent_channels": 2},
        "data": {"train": "synthetic-digits:64"},
        "objective": {"kl_warmup_steps": 10},
        "out": str(tmp_path), "max_steps": 3, "batch_size": 8, "checkpoint_every": 3,
        "log_every": 1, "lr_warmup_steps": 1, "skip_threshold": 1e6,
    })
    model_path = train(config)
    model = load(model_path)
    assert isinstance(model, HierarchicalVAE) and model.config == config.model
    saved = checkpoint.load_file(model_path).tensors
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert model.sample(2, generator=_gen(0)).shape == (2, 1, 28, 28)
    resumable = load(tmp_path / training.CHECKPOINT_NAME, weights="live")
    variations = resumable.resample_below(torch.rand(1, 1, 28, 28), keep=1, n=2)
    assert variations.shape == (1, 2, 1, 28, 28)
