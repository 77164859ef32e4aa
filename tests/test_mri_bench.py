"""The MRI codec benchmark (benchmarks/mri_codec.py) on two tiny synthetic 12-bit slices."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

pytest.importorskip("imagecodecs", reason="the baselines need imagecodecs: pip install imagecodecs")
pytest.importorskip("skimage", reason="needs the bench extras: pip install -e .[bench]")
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/ is scripts, not a package
import mri_codec as bench  # noqa: E402

LOSSLESS = ("png", "jpeg-ls", "jpeg2000", "jpeg-xl", "gzip", "zstd")
SHAPE = (40, 48)
QUICK = ["--repeats", "1", "--j2k-psnr", "40,50,60", "--jxl-distances", "2,0.5,0.2"]


def _slices(folder: Path) -> Path:
    """Two 12-bit slices in 16-bit PNGs: a smooth blob on a floor, with noise; max 4095."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for i in range(2):
        blob = 3000 * np.exp(-((x - 20 - 4 * i) ** 2 + (y - 18) ** 2) / 200) + 300
        v = np.clip(blob + rng.normal(0, 20, SHAPE), 0, 4095).astype(np.uint16)
        v[0, 0] = 4095  # uses all 12 bits
        Image.fromarray(v).save(folder / f"slice_{i}.png")  # mode I;16: a 16-bit gray PNG
    return folder


def _need_every_baseline() -> None:
    reasons = {c: r for c in LOSSLESS if (r := bench.missing(c))}
    if reasons:
        pytest.skip(f"baselines not available here: {reasons}")


class _Quantizer:
    """A stand-in for clearvae's coder: uniform quantisation + zlib (lossless at step 1)."""

    def _code(self, values: np.ndarray, step: int) -> bytes:
        q = np.round(values / step).astype("<u2")
        return struct.pack("<3H", *values.shape, step) + zlib.compress(q.tobytes(), 9)

    def lossless(self, values: np.ndarray, bits: int) -> bytes:
        return self._code(values, 1)

    def near_lossless(self, values: np.ndarray, bits: int, k: int) -> bytes:
        return self._code(values, 2 * k + 1)  # |error| <= k

    def lossy(self, values: np.ndarray, bits: int, quality: float) -> bytes:
        return self._code(values, 2 ** (9 - int(quality)))

    def decode(self, data: bytes) -> np.ndarray:
        h, w, step = struct.unpack("<3H", data[:6])
        q = np.frombuffer(zlib.decompress(data[6:]), "<u2").reshape(h, w)
        return q.astype(np.int64) * step


def test_every_lossless_baseline_round_trips_and_reports_its_bpp(tmp_path: Path) -> None:
    _need_every_baseline()
    out = tmp_path / "out"
    bench.main(["--data", str(_slices(tmp_path / "png")), "--out", str(out), *QUICK])
    result = json.loads((out / "mri_codec.json").read_text())
    assert [i["bits"] for i in result["image_info"]] == [12, 12]
    lossless = {r["codec"]: r for r in result["lossless"]}
    assert set(lossless) == set(LOSSLESS)
    for r in lossless.values():
        assert r["bit_exact"] and [i["bit_exact"] for i in r["images"]] == [True, True]
        total = 8 * sum(i["bytes"] for i in r["images"])
        assert r["bpp"] == pytest.approx(total / (2 * SHAPE[0] * SHAPE[1]))
        assert 0 < r["bpp"] < 16 and r["encode_mpx_s"] > 0 and r["decode_mpx_s"] > 0
    near = [p for p in result["points"] if p["mode"] == "near-lossless"]
    assert [(p["codec"], p["setting"]) for p in near] == [("jpeg-ls", 1), ("jpeg-ls", 2),
                                                         ("jpeg-ls", 4)]
    assert all(p["max_error"] <= p["setting"] for p in near)
    assert [p["bpp"] for p in near] == sorted((p["bpp"] for p in near), reverse=True)
    lossy = {p["codec"] for p in result["points"] if p["mode"] == "lossy"}
    assert lossy == {"jpeg2000", "jpeg-xl"} and "targets" not in result
    assert "| jpeg-ls | " in (out / "mri_codec.md").read_text()
    assert (out / "rd_mri.png").stat().st_size > 0


def test_ours_is_measured_like_the_baselines_and_checked_against_the_targets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_every_baseline()
    monkeypatch.setattr(bench, "load_ours", lambda model: _Quantizer() if model else None)
    out = tmp_path / "out"
    bench.main(["--data", str(_slices(tmp_path / "png")), "--out", str(out), "--ours", "stub",
                "--qualities", "2,3,4,5", "--skip-lossy", *QUICK])
    result = json.loads((out / "mri_codec.json").read_text())
    assert {r["codec"]: r["bit_exact"] for r in result["lossless"]}["ours"]
    assert set(result["ratios"]) == {"ours / jpeg-ls", "ours / jpeg2000"}
    targets = {t["target"]: t["met"] for t in result["targets"]}
    assert len(targets) == 5  # two lossless, three near-lossless (lossy skipped)
    assert targets["lossless: within 5 % of JPEG-LS"] is False  # zlib is far behind JPEG-LS


def test_ours_lossy_curve_gets_bd_rates_against_both_anchors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_every_baseline()
    monkeypatch.setattr(bench, "load_ours", lambda model: _Quantizer() if model else None)
    out = tmp_path / "out"
    bench.main(["--data", str(_slices(tmp_path / "png")), "--out", str(out), "--ours", "stub",
                "--qualities", "2,3,4,5", "--near", "1", *QUICK])
    result = json.loads((out / "mri_codec.json").read_text())
    bd = {(e["codec"], e["anchor"]): e for e in result["bd"]}
    assert set(bd) == {("jpeg-xl", "jpeg2000"), ("ours", "jpeg2000"), ("ours", "jpeg-xl")}
    assert bd[("ours", "jpeg2000")]["bd_rate_percent"] is not None, bd[("ours", "jpeg2000")]
    lossy_target = [t for t in result["targets"] if t["target"].startswith("lossy")]
    assert len(lossy_target) == 1 and isinstance(lossy_target[0]["met"], bool)


def test_without_ours_there_is_no_coder_and_a_missing_model_is_named(tmp_path) -> None:
    assert bench.load_ours(None) is None
    with pytest.raises(SystemExit, match="missing.safetensors"):
        bench.load_ours(str(tmp_path / "missing.safetensors"))
