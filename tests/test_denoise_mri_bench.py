"""The MRI denoising benchmark (benchmarks/denoise_mri.py): a --quick run end to end."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from clearvae import checkpoint
from clearvae.data.medical import read_volume
from clearvae.models.denoiser import DenoisingVAE, DenoisingVAEConfig
from clearvae.noise import rician_mean
from tests.conftest import REPO, shared

pytest.importorskip("skimage", reason="needs the bench extras: pip install -e .[bench]")
sys.path.insert(0, str(REPO / "benchmarks"))  # for its `from machine import machine_info`
_spec = importlib.util.spec_from_file_location("denoise_mri", REPO / "benchmarks" /
                                               "denoise_mri.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

LEVEL = 5
QUICK_SLICES = {"emri": 10, "singles": 1}  # emri's 10 frames and msd_brain_3


def tiny_model_file(path) -> str:
    """An untrained 2.5-D Rician denoiser, as tests/test_mri_denoise.py::tiny() builds it."""
    torch.manual_seed(0)
    config = DenoisingVAEConfig.from_dict({
        "backbone": {"kind": "conditional", "image_channels": 1, "image_size": [16, 16],
                     "widths": [8, 16], "blocks": 1, "latent_channels": 2, "branch": 0.5,
                     "context_slices": 1},
        "noise": {"kind": "rician", "synthetic": [5, 30]}})
    model = DenoisingVAE(config).eval()
    checkpoint.save_file(path, "model", model.state_dict(), model.config.to_dict(), {})
    return str(path)


def run(out, *args: str) -> tuple[dict, str]:
    bench.main(["--data", str(shared("mri/test")), "--out", str(out), "--quick",
                "--levels", str(LEVEL), "--threads", "1", *args])
    return (json.loads((out / "denoise_mri.json").read_text()),
            (out / "denoise_mri.md").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    return run(out, "--methods", "noisy,nlm,ours", "--model",
               tiny_model_file(out / "tiny.safetensors"))


def cells(result: dict) -> dict[str, dict]:
    return {c["method"]: c for c in result["results"]}


def test_every_method_ran_at_the_level(quick) -> None:
    result, _ = quick
    assert result["levels"] == [LEVEL] and result["methods"] == ["noisy", "nlm", "ours"]
    got = cells(result)
    assert set(got) == {"noisy", "nlm", "nlm+unbias", "ours"}
    for c in got.values():
        assert c["level"] == LEVEL and c["skipped"] is None, c["skipped"]
        assert np.isfinite(c["psnr"]) and 0 < c["ssim"] <= 1 and c["seconds_per_slice"] >= 0


def test_counts_are_the_evaluated_slices(quick) -> None:
    result, _ = quick
    assert result["evaluated_slices"] == sum(QUICK_SLICES.values())
    for c in cells(result).values():
        assert c["count"] == len(c["slices"]) == sum(QUICK_SLICES.values())
        assert {g: v["count"] for g, v in c["groups"].items()} == QUICK_SLICES
        assert [v["volume"] for v in c["volumes"]] == ["emri", "msd_brain_3"]


def test_nlm_denoises_emri(quick) -> None:
    got = cells(quick[0])
    assert got["nlm"]["groups"]["emri"]["psnr"] > got["noisy"]["groups"]["emri"]["psnr"] + 1
    assert got["nlm"]["groups"]["emri"]["ssim"] > got["noisy"]["groups"]["emri"]["ssim"]


def test_noisy_psnr_is_what_the_rician_noise_gives(quick) -> None:
    """E[(x - s)^2] of Rician x around s is 2 s^2 + 2 sigma^2 - 2 s E[x] (sigma^2 on tissue,
    2 sigma^2 on air), plus 1/12 for rounding to integers."""
    data = shared("mri/test")
    clean = {"emri": read_volume(data / "dicom_single/emri_small.dcm").values,
             "msd_brain_3": read_volume(data / "png/msd_brain_3.png").values}
    for row in cells(quick[0])["noisy"]["slices"]:
        volume = clean[row["volume"]].astype(np.float64)
        peak, sigma, s = volume.max(), LEVEL / 100 * volume.max(), volume[row["slice"]]
        mse = np.mean(2 * s**2 + 2 * sigma**2 - 2 * s * rician_mean(s, sigma)) + 1 / 12
        assert row["psnr"] == pytest.approx(10 * np.log10(peak**2 / mse), abs=1.0), row


def test_ours_records_the_sigma_it_used(quick) -> None:
    for v in cells(quick[0])["ours"]["volumes"]:
        assert v["sigma_255"] > 0 and isinstance(v["sigma_given"], bool)


def test_markdown_has_a_row_per_method(quick) -> None:
    _, text = quick
    for method in ("noisy", "nlm", "nlm+unbias", "ours"):
        assert sum(line.startswith(f"| {method} | ") for line in text.splitlines()) == 2
    assert f"| method | {LEVEL} % PSNR / SSIM | s / slice |" in text


def test_a_missing_model_makes_ours_a_recorded_skip(tmp_path) -> None:
    result, text = run(tmp_path, "--methods", "noisy,ours", "--model",
                       str(tmp_path / "missing.safetensors"))
    got = cells(result)
    assert got["noisy"]["skipped"] is None and got["noisy"]["count"] == 11
    assert "no such model file" in got["ours"]["skipped"] and got["ours"]["count"] == 0
    assert "| ours | skipped |" in text and "missing.safetensors" in text


def test_noisy_stacks_hold_neighbours_within_each_volume() -> None:
    a = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)  # (S, H, W)
    data = bench.NoisyStacks([a, a[:1] + 1000], size=(4, 4))
    assert len(data) == 4
    first, last, single = data[0], data[2], data[(3, 7)]
    assert first.shape == (3, 4, 4) and first.dtype == torch.float32
    assert torch.equal(first[0], first[1])  # the volume's end repeats the slice
    assert torch.equal(first[2], torch.from_numpy(a[1, 2:6, 2:6]))  # centre crop
    assert torch.equal(last[1], last[2])
    assert single.min() >= 1000 and torch.equal(single[0], single[2])  # never volume a
