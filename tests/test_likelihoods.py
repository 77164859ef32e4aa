"""Output likelihoods: normalisation, shapes and point estimates."""

import math

import pytest
import torch

from clearvae.likelihoods import make_likelihood

LEVELS = torch.arange(256, dtype=torch.float32) / 255


@pytest.mark.parametrize("mixtures", [1, 3])
def test_logistic_mixture_is_a_distribution_over_256_levels(mixtures):
    torch.manual_seed(0)
    lik = make_likelihood("logistic_mixture", 1, mixtures=mixtures)
    params = torch.randn(1, lik.param_channels, 1, 1) * 2
    x = LEVELS.view(256, 1, 1, 1)
    total = lik.log_prob(params.expand(256, -1, -1, -1), x).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_logistic_mixture_rgb_with_channel_coupling_sums_to_one():
    """p(r, g, b) = sum_k pi_k p_k(r) p_k(g | r) p_k(b | r, g) must sum to one over all
    256**3 colours, coupling coefficients included."""
    torch.manual_seed(1)
    lik = make_likelihood("logistic_mixture", 3, mixtures=2)
    assert lik.param_channels == 2 * (1 + 6 + 3)
    params = torch.randn(1, lik.param_channels, 1, 1)
    total = 0.0
    for r in LEVELS.split(16):  # 16 values of r at a time: 1M colours per call
        grid = torch.cartesian_prod(r, LEVELS, LEVELS).view(-1, 3, 1, 1)
        total += lik.log_prob(params.expand(len(grid), -1, -1, -1), grid).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-3)


def test_bernoulli_dynamic_binarization_and_bounds():
    lik = make_likelihood("bernoulli", 1)
    x = torch.full((2000, 1, 1, 1), 0.3)
    target = lik.target(x, torch.Generator().manual_seed(0))
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    assert target.mean().item() == pytest.approx(0.3, abs=0.03)
    logits = torch.zeros(1, 1, 2, 2)
    assert lik.log_prob(logits, torch.ones(1, 1, 2, 2)).item() == pytest.approx(4 * math.log(0.5))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "gaussian_learned", "logistic_mixture"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_of_every_likelihood(name, channels):
    lik = make_likelihood(name, channels)
    params = torch.randn(2, lik.param_channels, 5, 7)
    x = torch.rand(2, channels, 5, 7)
    assert lik.log_prob(params, x).shape == (2,)
    assert lik.mean(params).shape == (2, channels, 5, 7)
    sample = lik.sample(params, torch.Generator().manual_seed(0))
    assert sample.shape == (2, channels, 5, 7)
    assert 0 <= sample.min() and sample.max() <= 1


def test_gaussian_log_prob_matches_torch_normal():
    lik = make_likelihood("gaussian_learned", 1)
    params = torch.randn(3, 2, 4, 4)
    x = torch.rand(3, 1, 4, 4)
    mu, log_sigma = params.chunk(2, 1)
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, x), expected)


def test_logistic_mixture_point_estimate_hits_a_confident_mean():
    lik = make_likelihood("logistic_mixture", 1, mixtures=1)
    params = torch.tensor([0.0, 2 * (100 / 255) - 1, -6.0]).view(1, 3, 1, 1)
    assert lik.mean(params).item() == pytest.approx(100 / 255, abs=0.5 / 255)
