"""Bjøntegaard delta rate / PSNR (benchmarks/bdrate.py) on synthetic and published curves."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.conftest import REPO, SHARED

sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/ is scripts, not a package
from bdrate import bd_psnr, bd_rate  # noqa: E402

RATE = [0.12, 0.21, 0.33, 0.48, 0.67, 0.94, 1.26, 1.66]
PSNR = [27.6, 29.2, 31.0, 32.8, 34.5, 36.7, 38.6, 40.6]
METHODS = ["pchip", "cubic"]


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method: str) -> None:
    assert bd_rate(RATE, PSNR, RATE, PSNR, method) == pytest.approx(0, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, PSNR, method) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_half_the_rate_is_minus_fifty_percent(method: str) -> None:
    half = [r / 2 for r in RATE]
    assert bd_rate(RATE, PSNR, half, PSNR, method) == pytest.approx(-50, abs=1e-6)
    assert bd_rate(half, PSNR, RATE, PSNR, method) == pytest.approx(100, abs=1e-6)
    # Same picture on the other axis: B reaches A's rate-doubled PSNR at A's rate.
    assert bd_psnr(RATE, PSNR, half, PSNR, method) > 0


@pytest.mark.parametrize("method", METHODS)
def test_swapping_anchor_and_test_inverts_the_ratio(method: str) -> None:
    gen = np.random.default_rng(0)
    rate_b = np.array(RATE) * np.exp(gen.uniform(-0.4, -0.1, len(RATE)))
    psnr_b = np.array(PSNR) + 0.3
    ab = bd_rate(RATE, PSNR, rate_b, psnr_b, method)
    ba = bd_rate(rate_b, psnr_b, RATE, PSNR, method)
    assert ab < 0 < ba
    assert (1 + ab / 100) * (1 + ba / 100) == pytest.approx(1, abs=1e-9)
    assert bd_psnr(rate_b, psnr_b, RATE, PSNR, method) == pytest.approx(
        -bd_psnr(RATE, PSNR, rate_b, psnr_b, method), abs=1e-9)


def test_point_order_does_not_matter() -> None:
    rev = bd_rate(RATE[::-1], PSNR[::-1], [r * 0.8 for r in RATE], PSNR)
    assert rev == pytest.approx(-20, abs=1e-6)


def test_disjoint_psnr_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="share no PSNR interval"):
        bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])
    with pytest.raises(ValueError, match="share no log10 rate interval"):
        bd_psnr(RATE, PSNR, [r * 100 for r in RATE], PSNR)


@pytest.mark.parametrize("rate, psnr, match", [
    ([0.1, 0.2, 0.3], [30.0, 29.0, 31.0], "not strictly monotone"),
    ([0.1, 0.0, 0.3], [29.0, 30.0, 31.0], "finite and positive"),
    ([0.1], [29.0], "at least 2 points"),
    ([0.1, 0.2], [29.0, 30.0, 31.0], "of one length"),
])
def test_bad_curves_are_refused(rate: list[float], psnr: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bd_rate(rate, psnr, RATE, PSNR)


def test_cubic_needs_four_points_and_unknown_method_fails() -> None:
    with pytest.raises(ValueError, match="at least 4 points"):
        bd_rate(RATE[:3], PSNR[:3], RATE, PSNR, "cubic")
    with pytest.raises(ValueError, match="method must be one of"):
        bd_rate(RATE, PSNR, RATE, PSNR, "akima")  # type: ignore[arg-type]


def test_published_hyperprior_beats_factorized() -> None:
    """CompressAI's Kodak points: the hyperprior needs clearly fewer bits than factorized."""
    path = SHARED.parent / "anchors" / "kodak_rd.json"
    if not path.exists():
        pytest.skip(f"published anchors '{path}' are absent (set CLEARVAE_DATA)")
    anchors = json.loads(path.read_text())
    fac = anchors["compressai-bmshj2018-factorized-mse"]
    hyp = anchors["compressai-bmshj2018-hyperprior-mse"]
    for method in METHODS:
        rate = bd_rate(fac["bpp"], fac["psnr"], hyp["bpp"], hyp["psnr"], method)
        assert -30 < rate < -5, (method, rate)
        assert 0.3 < bd_psnr(fac["bpp"], fac["psnr"], hyp["bpp"], hyp["psnr"], method) < 2.5
