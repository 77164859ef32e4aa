"""The denoising benchmark's protocol (benchmarks/denoise_bsds.py): noise, metrics, methods."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import REPO, shared

pytest.importorskip("skimage", reason="needs the bench extras: pip install -e .[bench]")
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/ is scripts, not a package
import denoise_bsds as bench  # noqa: E402


def _squares() -> np.ndarray:
    """(48, 48) float32: two gray squares on a dark background, inside [0, 1]."""
    x = np.full((48, 48), 0.2, np.float32)
    x[8:24, 8:24] = 0.8
    x[28:44, 20:40] = 0.5
    return x


def test_noise_is_fixed_per_image_and_sigma_and_not_clipped() -> None:
    x = np.zeros((64, 64), np.float32)
    a = bench.add_noise(x, 25, seed=0, index=3)
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, bench.add_noise(x, 25, seed=0, index=3))
    assert not np.array_equal(a, bench.add_noise(x, 25, seed=0, index=4))
    assert not np.array_equal(a, bench.add_noise(x, 25, seed=1, index=3))
    assert a.min() < 0  # unclipped: a black image gets negative values
    assert np.std(a) == pytest.approx(25 / 255, rel=0.05)


def test_psnr_of_a_known_error() -> None:
    ref = np.full((8, 8), 0.5, np.float32)
    assert bench.psnr(ref + 0.1, ref) == pytest.approx(20.0)
    assert bench.psnr(ref, ref) == float("inf")


@pytest.mark.parametrize("method", ["nlm", "tv", "wavelet", "bm3d"])
def test_every_classical_method_beats_the_noisy_input(method: str) -> None:
    if method == "bm3d":
        pytest.importorskip("bm3d", reason="pip install -e .[bench]")
    clean = _squares()
    noisy = bench.add_noise(clean, 25, seed=0, index=0)
    out = np.clip(np.asarray(bench.CLASSICAL[method](noisy, 25 / 255)).reshape(clean.shape), 0, 1)
    assert bench.psnr(out, clean) > bench.psnr(np.clip(noisy, 0, 1), clean) + 3


def test_markdown_lists_skipped_methods_with_the_reason() -> None:
    result = {"machine": bench.machine(), "sigmas": [25], "images": 1, "date": "2025-01-01",
              "command": "python benchmarks/denoise_bsds.py", "methods": ["tv", "ours"],
              "published": {"about": "x", "hdn": 28.7}}
    cells = [bench.Cell("tv", 25, psnr=26.0, ssim=0.7, seconds_per_image=0.01, count=1),
             bench.skip("ours", 25, "no bundled model")]
    text = bench.markdown(result, cells)
    assert "| tv | 26.00 / 0.7000 | 0.010 |" in text
    assert "| ours | skipped |  |" in text and "no bundled model" in text
    assert "Published, BSD68 (68-image subset), σ=25: hdn 28.70 dB" in text


def test_bsds_images_load_as_gray_floats() -> None:
    [(name, x)] = bench.load_bsds(shared("bsds500/val"), limit=1)
    assert x.ndim == 2 and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1 and name


def test_calibration_of_an_uncertainty_map() -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((64, 64))
    spread = np.where(np.arange(64) < 32, 0.01, 0.1)[None].repeat(64, 0)  # (64, 64)
    estimate = clean + spread * rng.standard_normal(clean.shape)
    right = bench.calibration(estimate, spread, clean)
    assert abs(right["std_ratio"] - 1) < 0.05 and right["std_corr"] > 0.5
    flat = bench.calibration(estimate, np.full_like(spread, 0.3), clean)
    assert flat["std_ratio"] > 3 and flat["std_corr"] == 0.0


def test_unsupervised_cell_keeps_its_training_record_and_calibration(tmp_path) -> None:
    backbone = "{kind: conditional, image_size: [16, 16], widths: [8, 16], blocks: 1}"
    args = bench.parse(["--out", str(tmp_path), "--samples", "2", "--unsupervised-minutes", "1",
                        "--unsupervised-set", "max_steps=2", "--unsupervised-set", "batch_size=2",
                        "--unsupervised-set", "data.size=[16, 16]",
                        "--unsupervised-set", f"model.backbone={backbone}"])
    clean = [(f"im{i}", np.roll(_squares(), 3 * i, axis=1)) for i in range(2)]
    noisy = [bench.add_noise(x, 25, 0, i) for i, (_, x) in enumerate(clean)]
    cell = bench.run_unsupervised(args, clean, noisy, 25)
    assert cell.skipped is None and cell.count == 2
    assert cell.extra["train_settings"] == args.unsupervised_set and cell.extra["train_images"] == 2
    assert cell.extra["std_ratio"] > 0  # measured on the same cell, not overwritten
