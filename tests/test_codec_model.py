"""Hyperprior codec: shapes, rate estimates, variable rate, entropy models, training signal."""

import math

import pytest
import torch
import torch.nn.functional as F

from clearvae.codec import (
    SCALES,
    FactorizedPrior,
    GaussianConditional,
    HyperpriorCodec,
    HyperpriorCodecConfig,
    estimated_bits,
    rd_loss,
    scale_from_index,
)
from clearvae.codec.model import _gain
from clearvae.codec.networks import GDN
from clearvae.errors import ConfigError, DataError

TINY = HyperpriorCodecConfig(channels_n=16, channels_m=24)


def _images(b: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (B, 3, H, W), a little like photographs."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(b, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                         mode="bilinear", align_corners=False)


@pytest.mark.parametrize("train", [True, False])
def test_odd_sizes_give_cropped_outputs_and_valid_likelihoods(train):
    torch.manual_seed(0)
    model = HyperpriorCodec(HyperpriorCodecConfig()).train(train)  # the default widths
    x = _images(2, 70, 45)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 7]))
    assert out.x_hat.shape == (2, 3, 70, 45)
    assert out.y_likelihoods.shape == (2, 192, 8, 4)  # 70x45 padded to 128x64
    assert out.z_likelihoods.shape == (2, 128, 2, 1)
    for lik in (out.y_likelihoods, out.z_likelihoods):
        assert (lik > 0).all() and (lik <= 1).all()
    assert (estimated_bits(out) > 0).all()
    if not train:
        assert out.x_hat.min() >= 0 and out.x_hat.max() <= 1


def test_bpp_counts_unpadded_pixels_and_metrics_are_complete():
    torch.manual_seed(0)
    model = HyperpriorCodec(TINY).eval()  # eval: no noise, so both passes agree exactly
    x = _images(3, 70, 45)
    with torch.no_grad():
        loss, metrics = rd_loss(model, x, torch.Generator().manual_seed(1))
        quality = torch.randint(8, (3,), generator=torch.Generator().manual_seed(1))
        bits = estimated_bits(model(x, quality))
    assert set(metrics) == {"loss", "rd", "bpp", "mse", "psnr", "aux"}
    assert metrics["rd"] + metrics["aux"] == pytest.approx(metrics["loss"], rel=1e-6)
    assert metrics["bpp"] == pytest.approx(bits.mean().item() / (70 * 45), rel=1e-5)
    assert metrics["bpp"] > 0 and math.isfinite(loss.item())


def test_weights_change_after_one_step():
    torch.manual_seed(0)
    model = HyperpriorCodec(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = rd_loss(model, _images(4), torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged


def test_loss_goes_down_on_a_tiny_batch():
    torch.manual_seed(0)
    model = HyperpriorCodec(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = _images(2)
    rd = []
    for _ in range(30):
        loss, m = rd_loss(model, x, torch.Generator().manual_seed(0))  # same qualities
        opt.zero_grad()
        loss.backward()
        opt.step()
        rd.append(m["rd"])
    assert sum(rd[-3:]) < 0.5 * sum(rd[:3])


def test_quality_index_sets_the_rate_and_images_are_independent():
    torch.manual_seed(0)
    model = HyperpriorCodec(TINY).eval()
    x = _images(1).expand(8, -1, -1, -1)
    with torch.no_grad():
        bits = estimated_bits(model(x, torch.arange(8)))
        # A mixed batch gives each image what it gets alone at its own quality.
        pair = model(_images(2), torch.tensor([1, 6]))
        alone = model(_images(2)[1:], torch.tensor([6]))
    assert (bits[1:] > bits[:-1]).all(), bits  # finer quantisation, more bits
    torch.testing.assert_close(pair.x_hat[1:], alone.x_hat)
    torch.testing.assert_close(pair.y_likelihoods[1:], alone.y_likelihoods)


def test_fractional_quality_interpolates_gains_geometrically():
    log_gains = torch.randn(8, 5)
    g = _gain(log_gains, torch.tensor([2.5, 7.0]))
    torch.testing.assert_close(g[0, :, 0, 0], (log_gains[2].exp() * log_gains[3].exp()).sqrt())
    torch.testing.assert_close(g[1], _gain(log_gains, torch.tensor([7]))[0])


@pytest.mark.parametrize("mean,scale", [(0.0, 0.11), (0.3, 1.0), (-2.7, 5.0), (10.2, 40.0),
                                        (0.0, 256.0)])
def test_gaussian_conditional_bins_sum_to_one(mean, scale):
    gc = GaussianConditional()
    y = torch.arange(-6000, 6001, dtype=torch.float64)  # bins centred on the integers
    p = gc.likelihood(y, torch.full_like(y, scale), torch.full_like(y, mean))
    assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
    y_hat, _ = gc(torch.tensor([mean + 2.4]), torch.tensor([scale]), torch.tensor([mean]),
                  training=False)
    assert y_hat.item() == pytest.approx(mean + 2.0)  # rounded around the mean


def test_factorized_prior_integrates_to_one_and_fits_its_quantiles():
    torch.manual_seed(0)
    prior = FactorizedPrior(4)
    with torch.no_grad():  # a density other than the initial one
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.arange(-2000, 2001, dtype=torch.float32).view(1, 1, 1, -1).repeat(1, 4, 1, 1)
    p = prior.likelihood(z)  # (1, 4, 1, L)
    torch.testing.assert_close(p.sum(-1).flatten(), torch.ones(4), atol=1e-4, rtol=0)
    prior.fit_quantiles()
    assert prior.aux_loss().item() < 1e-2
    q = prior.quantile_table()
    assert (q[:, 0] < q[:, 1]).all() and (q[:, 1] < q[:, 2]).all()
    z_hat, _ = prior(torch.full((1, 4, 1, 1), 0.3), training=False)
    torch.testing.assert_close(z_hat.flatten(), torch.round(0.3 - q[:, 1]) + q[:, 1])


def test_aux_loss_moves_only_the_quantiles():
    prior = FactorizedPrior(3)
    prior.aux_loss().backward()
    grads = {n for n, p in prior.named_parameters() if p.grad is not None and p.grad.any()}
    assert grads == {"quantiles"}


def test_scale_index_maps_onto_the_table_and_is_clamped():
    idx = torch.arange(64, dtype=torch.float64)
    torch.testing.assert_close(scale_from_index(idx), SCALES)
    assert scale_from_index(torch.tensor(-3.0)).item() == pytest.approx(0.11)
    assert scale_from_index(torch.tensor(99.0)).item() == pytest.approx(256.0)
    below = torch.tensor(-3.0, requires_grad=True)
    (-scale_from_index(below)).backward()  # wants a bigger scale: gradient gets back in range
    assert below.grad.item() < 0


def test_gdn_and_its_inverse_have_correct_gradients():
    gdn, igdn = GDN(4).double(), GDN(4, inverse=True).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gdn, (x,)) and torch.autograd.gradcheck(igdn, (x,))
    assert (gdn(x).abs() <= x.abs() + 1e-12).all()


def test_bad_configs_and_inputs_fail_loudly():
    with pytest.raises(ConfigError, match="valid keys are: kind, channels_n"):
        HyperpriorCodecConfig.from_dict({"channels": 64})
    with pytest.raises(ConfigError, match="increasing"):
        HyperpriorCodecConfig(lambdas=(0.01, 0.005))
    for slices in (1, 5, -2):  # one slice has no context; 5 does not divide 24 channels
        with pytest.raises(ConfigError, match="context_slices"):
            HyperpriorCodecConfig(channels_n=16, channels_m=24, context_slices=slices)
    with pytest.raises(ConfigError):
        HyperpriorCodecConfig.from_dict({"kind": "factorized"})
    model = HyperpriorCodec(TINY)
    with pytest.raises(DataError, match="shape"):
        model(torch.rand(1, 1, 64, 64), torch.tensor([0]))
    with pytest.raises(DataError, match="0..7"):
        model(torch.rand(1, 3, 64, 64), torch.tensor([8]))
    with pytest.raises(DataError, match="one index per image"):
        model(torch.rand(2, 3, 64, 64), torch.tensor([0]))


def test_mixed_precision_keeps_the_entropy_path_in_float32():
    """Under bfloat16 autocast (training with precision bf16-mixed) only g_a and g_s run in
    bfloat16; likelihoods and reconstructions come out float32 and close to a float32 pass."""
    torch.manual_seed(0)
    model = HyperpriorCodec(TINY).eval()
    x, quality = _images(2, 64, 64), torch.tensor([1, 6])
    with torch.no_grad():
        ref = model(x, quality)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, quality)
    for t in (mixed.x_hat, mixed.y_likelihoods, mixed.z_likelihoods):
        assert t.dtype == torch.float32
    torch.testing.assert_close(mixed.z_likelihoods, ref.z_likelihoods, rtol=0.05, atol=1e-3)
    ref_bits, mixed_bits = estimated_bits(ref), estimated_bits(mixed)
    # bfloat16 keeps 8 significant bits (0.4 %): a few latents may round the other way
    assert (mixed_bits - ref_bits).abs().max() < 0.01 * ref_bits.min()
    assert (mixed.x_hat - ref.x_hat).abs().max() < 0.01


def test_channel_context_starts_as_the_plain_model_and_then_learns():
    """A context model warm-started from a plain one codes exactly like it at first (its
    residual networks start at zero); one training step reaches every residual network."""
    torch.manual_seed(0)
    plain = HyperpriorCodec(TINY).eval()
    context = HyperpriorCodec(HyperpriorCodecConfig(channels_n=16, channels_m=24,
                                                    context_slices=3)).eval()
    missing, unexpected = context.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context.") for k in missing)
    x, quality = _images(2, 64, 64), torch.tensor([1, 6])
    with torch.no_grad():
        a, b = plain(x, quality), context(x, quality)
    for s, t in zip(a, b):
        assert torch.equal(s, t)
    context.train()
    loss, _ = rd_loss(context, x)
    loss.backward()
    for net in (*context.context.means, *context.context.scales):
        assert net[-1].weight.grad.abs().sum() > 0
