"""MRI at its own bit depth: lossless, near-lossless and lossy coding, standard codecs and ours.

    python benchmarks/mri_codec.py --out runs/mri-bench
    ... --images 4 --skip-lossy                          # a quick check
    ... --ours default --qualities 1,2,4,8               # with clearvae's MRI coder (to come)

Every codec codes the same slices, and every number is measured here:

    values (H, W) uint16: the stored integers of the 16-bit PNGs in --data (12-bit MRI mostly)
    bits   = max(value).bit_length() (clearvae.data.images.used_bits): the image's own range.
             Codecs that take a bit depth are given it (JPEG 2000, JPEG XL: bitspersample); the
             PSNR peak and the SSIM data_range are 2^bits - 1. DICOM BitsStored (12 here), read
             from the data's manifest.csv where it has one, is recorded beside it, with
             psnr_stored on peak 2^BitsStored - 1: a per-image shift that moves every curve
             alike, so BD-rates do not depend on the choice.
    bpp    = 8 len(bytes) / (H W) of the real output; over the images: total bits / pixels
    PSNR, SSIM: means over the images at each setting (skimage SSIM, 7x7 window)
    MP/s   = pixels / seconds, the median of up to --repeats calls per image (fewer once they
             take 1 s), after one untimed warm-up per codec; --threads for every codec

    lossless       PNG (Pillow, 16-bit gray, zlib 9, optimize), JPEG-LS (CharLS via pyjpegls,
                   NEAR=0, decoded by imagecodecs' CharLS), JPEG 2000 (OpenJPEG, reversible 5/3),
                   JPEG XL (libjxl, lossless, --jxl-effort), gzip -9 and zstd -19 of the raw
                   little-endian uint16 values. Each is decoded and checked bit-identical: a
                   baseline that is not is a bug in this script, and stops it.
    near-lossless  JPEG-LS at NEAR = K (--near), checked max |error| <= K
    lossy          JPEG 2000, irreversible 9/7 at target PSNRs (--j2k-psnr, OpenJPEG's
                   fixed-quality mode, peak 2^bits - 1); JPEG XL at distances (--jxl-distances)

JPEG-LS is encoded with pyjpegls because imagecodecs' jpegls_encode declares every uint16 image
16-bit (MAXVAL 65535, no way to pass the bit depth): that costs 4 % on these slices and 25 % on
the 80x80 ones, a handicap no DICOM encoder has. Streams are counted as a DICOM file holds
them: JPEG 2000 as a bare J2K codestream, JPEG-LS and JPEG XL as bare codestreams; gzip / zstd
hold no shape (a DICOM header would). Ours: its whole output (``OursCoder``), header included.
With --ours the same measurements are made for clearvae's coder, with BD-rates against JPEG
2000 and JPEG XL, bpp ratios against JPEG-LS and JPEG 2000 and the issue's targets, printed as
met / not met. Writes OUT/mri_codec.json (every per-image number), OUT/mri_codec.md (for
docs/benchmarks.md) and OUT/rd_mri.png. Run it from the repo root as a script.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import io
import json
import os
import re
import shlex
import sys
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
from bdrate import bd_psnr, bd_rate
from machine import machine_info
from PIL import Image, features
from skimage.metrics import structural_similarity

from clearvae.data.images import used_bits
from clearvae.files import atomic_write

try:
    import imagecodecs as ic
except ImportError:  # main() says what to install; the module stays importable for the tests
    ic = None
try:
    import jpeg_ls  # pyjpegls: CharLS at a given bit depth
except ImportError:
    jpeg_ls = None

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
TIME_BUDGET_S = 1.0  # timing repeats of one call stop once they add up to this
J2K_PSNR = [35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0]
JXL_DISTANCES = [4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
LOSSLESS_TARGET_VS_JPEGLS = 1.05  # ours at most 5 % above JPEG-LS
LOSSY_TARGET_BD_J2K = -20.0  # ours' BD-rate against JPEG 2000, percent

Encode = Callable[[np.ndarray, int], bytes]  # (H, W) uint16 values, bits -> bytes
EncodeAt = Callable[[np.ndarray, int, float], bytes]  # values, bits, setting -> bytes
Decode = Callable[[bytes, tuple[int, int]], np.ndarray]  # bytes, (H, W) -> (H, W) integers


class OursCoder(Protocol):
    """clearvae's 12/16-bit coder as this benchmark calls it: bytes are its whole output."""

    def lossless(self, values: np.ndarray, bits: int) -> bytes: ...  # (H, W) uint16

    def near_lossless(self, values: np.ndarray, bits: int, k: int) -> bytes: ...  # |err| <= k

    def lossy(self, values: np.ndarray, bits: int, quality: float) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...  # -> (H, W) integers


def load_ours(model: str | None) -> OursCoder | None:
    """clearvae's MRI coder for ``--ours MODEL`` ("default": the bundled one); None without it."""
    if model is None:
        return None
    from clearvae.codec.gray import GrayVolume, compress_gray, decompress_gray
    from clearvae.codec.storage import load_codec
    from clearvae.errors import ClearvaeError

    try:
        codec = load_codec(None if model == "default" else model, gray=True)
    except ClearvaeError as exc:
        raise SystemExit(f"error: --ours {model}: {exc}") from None

    class Ours:
        def lossless(self, values: np.ndarray, bits: int) -> bytes:
            return compress_gray(codec, GrayVolume(values[None], bits), max_error=0)

        def near_lossless(self, values: np.ndarray, bits: int, k: int) -> bytes:
            return compress_gray(codec, GrayVolume(values[None], bits), max_error=k)

        def lossy(self, values: np.ndarray, bits: int, quality: float) -> bytes:
            return compress_gray(codec, GrayVolume(values[None], bits), quality=quality)

        def decode(self, data: bytes) -> np.ndarray:
            return decompress_gray(codec, data)[0].values[0]

    return Ours()


@dataclasses.dataclass
class Slice:
    """One test image: its stored values and bit depths."""

    name: str
    values: np.ndarray  # (H, W) uint16
    bits: int  # used: max(value).bit_length()
    bits_stored: int | None  # DICOM BitsStored, where the manifest gives it

    @property
    def pixels(self) -> int:
        return self.values.size

    @property
    def group(self) -> str:  # "vanderbilt_b0_0016" -> "vanderbilt_b0"
        return re.sub(r"_f?\d+$", "", self.name)


@dataclasses.dataclass
class Lossless:
    """One codec coding every image losslessly (``images``: per image)."""

    codec: str
    bpp: float  # total bits / total pixels
    mean_image_bpp: float  # mean of the per-image bpp: every slice weighs the same
    bit_exact: bool
    encode_mpx_s: float
    decode_mpx_s: float
    images: list[dict]


@dataclasses.dataclass
class Point:
    """One codec at one setting over the images: a near-lossless K or a lossy quality."""

    codec: str
    mode: str  # "near-lossless" or "lossy"
    setting: float  # K; JPEG 2000: target PSNR (dB); JPEG XL: distance; ours: quality
    bpp: float
    psnr: float
    ssim: float
    max_error: int
    encode_s: float
    decode_s: float
    images: list[dict]


def stored_bits(folder: Path) -> dict[str, int]:
    """DICOM BitsStored by image name, from the nearest manifest.csv above ``folder``."""
    folder = folder.resolve()
    for root in [folder, *folder.parents][:4]:
        if (root / "manifest.csv").is_file():
            with (root / "manifest.csv").open(newline="") as f:
                return {Path(r["file"]).stem: int(r["bits_stored"]) for r in csv.DictReader(f)
                        if (r.get("bits_stored") or "").isdigit()
                        and (root / r.get("file", "")).parent == folder}
    return {}


def load_slices(folder: Path, n: int | None) -> list[Slice]:
    """The first ``n`` PNGs of a folder in name order, as stored integer values."""
    paths = sorted(folder.glob("*.png"))[:n]
    if not paths or (n and len(paths) < n):
        raise SystemExit(f"error: {folder} has {len(paths)} PNG images, {n or 'some'} needed: "
                         "pass --data with a folder of 16-bit gray PNGs (or fewer --images)")
    stored = stored_bits(folder)
    slices = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im)
        if a.ndim != 2 or a.dtype.kind not in "ui" or a.min() < 0 or a.max() > 65535:
            raise SystemExit(f"error: {p} is not a single-channel 8- or 16-bit PNG (got "
                             f"{a.dtype} {a.shape}): this benchmark codes gray integer slices")
        v = np.ascontiguousarray(a, dtype=np.uint16)
        slices.append(Slice(p.stem, v, used_bits(v), stored.get(p.stem)))
    return slices


def _jpegls(v: np.ndarray, bits: int, k: float = 0) -> bytes:
    """JPEG-LS at the image's bit depth, NEAR = k (a bare ISO 14495-1 stream, no SPIFF)."""
    return bytes(jpeg_ls.encode_buffer(v.astype("<u2").tobytes(), v.shape[0], v.shape[1], 1,
                                       max(bits, 2), int(k), 0))


def _raw(compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]
         ) -> tuple[Encode, Decode]:
    def encode(v: np.ndarray, bits: int) -> bytes:
        return compress(v.astype("<u2").tobytes())

    def decode(data: bytes, shape: tuple[int, int]) -> np.ndarray:
        return np.frombuffer(decompress(data), "<u2").reshape(shape)

    return encode, decode


def _png() -> tuple[Encode, Decode]:
    def encode(v: np.ndarray, bits: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(v).save(buf, format="PNG", optimize=True)  # I;16, zlib level 9
        return buf.getvalue()

    return encode, lambda data, shape: np.asarray(Image.open(io.BytesIO(data)))


def _jxl_bits(bits: int) -> int:
    return max(bits, 9)  # imagecodecs' JPEG XL refuses uint16 declared at 8 bits or fewer


def baselines(threads: int, effort: int) -> dict[str, dict[str, Callable]]:
    """Per codec: its lossless (encode, decode) and, where it has them, near / lossy encoders."""
    j2k_dec: Decode = lambda d, s: ic.jpeg2k_decode(d, numthreads=threads)  # noqa: E731
    jxl_dec: Decode = lambda d, s: ic.jpegxl_decode(d, numthreads=threads)  # noqa: E731
    jls_dec: Decode = lambda d, s: ic.jpegls_decode(d)  # noqa: E731
    j2k = dict(codecformat="J2K", numthreads=threads)
    return {
        "png": {"lossless": _png()},
        "jpeg-ls": {"lossless": (_jpegls, jls_dec), "near-lossless": (_jpegls, jls_dec)},
        "jpeg2000": {"lossless": (lambda v, b: ic.jpeg2k_encode(
                        v, level=0, reversible=True, bitspersample=b, **j2k), j2k_dec),
                     "lossy": (lambda v, b, q: ic.jpeg2k_encode(
                        v, level=q, reversible=False, bitspersample=b, **j2k), j2k_dec)},
        "jpeg-xl": {"lossless": (lambda v, b: ic.jpegxl_encode(
                        v, lossless=True, effort=effort, bitspersample=_jxl_bits(b),
                        numthreads=threads), jxl_dec),
                    "lossy": (lambda v, b, q: ic.jpegxl_encode(
                        v, distance=q, effort=effort, bitspersample=_jxl_bits(b),
                        numthreads=threads), jxl_dec)},
        "gzip": {"lossless": _raw(lambda b: gzip.compress(b, 9, mtime=0), gzip.decompress)},
        "zstd": {"lossless": _raw(lambda b: ic.zstd_encode(b, level=19), ic.zstd_decode)},
    }


def missing(codec: str) -> str | None:
    """Why a baseline cannot run here, or None."""
    flag = {"jpeg-ls": "JPEGLS", "jpeg2000": "JPEG2K", "jpeg-xl": "JPEGXL", "zstd": "ZSTD"}
    if codec in flag and not getattr(ic, flag[codec]).available:
        return f"this imagecodecs has no {flag[codec]} codec"
    if codec == "jpeg-ls" and jpeg_ls is None:
        return ("needs pyjpegls (pip install pyjpegls): imagecodecs' encoder codes uint16 as "
                "16-bit samples")
    return None


def ours_codecs(ours: OursCoder) -> dict[str, Callable]:
    decode: Decode = lambda d, s: ours.decode(d)  # noqa: E731
    return {"lossless": (ours.lossless, decode),
            "near-lossless": (lambda v, b, k: ours.near_lossless(v, b, int(k)), decode),
            "lossy": (ours.lossy, decode)}


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    """fn()'s result and the median seconds of up to ``repeats`` calls (fewer past 1 s)."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < TIME_BUDGET_S:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def measure_lossless(name: str, encode: Encode, decode: Decode, slices: list[Slice],
                     repeats: int, must_be_exact: bool = True) -> Lossless:
    """Code every image losslessly: bytes, bit-exactness and median seconds per image."""
    first = slices[0]
    decode(encode(first.values, first.bits), first.values.shape)  # warm-up: lazy init, caches
    rows = []
    for s in slices:
        data, enc = timed(lambda s=s: bytes(encode(s.values, s.bits)), repeats)
        out, dec = timed(lambda d=data, s=s: decode(d, s.values.shape), repeats)
        exact = bool(np.shape(out) == s.values.shape and np.array_equal(out, s.values))
        if must_be_exact and not exact:
            raise RuntimeError(f"{name} is not lossless on {s.name}: a bug in this benchmark's "
                               "settings of that codec, or in the codec; report it")
        rows.append({"image": s.name, "bytes": len(data), "bpp": 8 * len(data) / s.pixels,
                     "bit_exact": exact, "encode_s": enc, "decode_s": dec})
    pixels = sum(s.pixels for s in slices)
    result = Lossless(name, 8 * sum(r["bytes"] for r in rows) / pixels,
                      float(np.mean([r["bpp"] for r in rows])), all(r["bit_exact"] for r in rows),
                      pixels / 1e6 / sum(r["encode_s"] for r in rows),
                      pixels / 1e6 / sum(r["decode_s"] for r in rows), rows)
    print(f"{name:>9} lossless {result.bpp:7.4f} bpp  "
          f"{'bit-exact' if result.bit_exact else 'NOT bit-exact'}  encode "
          f"{result.encode_mpx_s:7.2f} MP/s  decode {result.decode_mpx_s:7.2f} MP/s", flush=True)
    return result


def psnr(x: np.ndarray, y: np.ndarray, peak: int) -> float:
    """PSNR in dB of y against x on a peak value; inf when they are equal."""
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(peak**2 / mse))


def measure(name: str, mode: str, encode: EncodeAt, decode: Decode, slices: list[Slice],
            setting: float) -> Point:
    """Code every image at one setting: bytes, PSNR, SSIM, max |error| and seconds."""
    rows = []
    for s in slices:
        t0 = time.perf_counter()
        data = bytes(encode(s.values, s.bits, setting))
        t1 = time.perf_counter()
        out = np.asarray(decode(data, s.values.shape))
        t2 = time.perf_counter()
        if out.shape != s.values.shape:
            raise RuntimeError(f"{name} {mode} {setting:g} decoded {s.name} to shape "
                               f"{out.shape}, expected {s.values.shape}")
        peak = 2**s.bits - 1
        ssim = (structural_similarity(s.values.astype(np.float64), out.astype(np.float64),
                                      data_range=peak) if min(out.shape) >= 7 else float("nan"))
        rows.append({"image": s.name, "bytes": len(data), "bpp": 8 * len(data) / s.pixels,
                     "psnr": psnr(s.values, out, peak), "ssim": float(ssim),
                     "psnr_stored": (psnr(s.values, out, 2**s.bits_stored - 1)
                                     if s.bits_stored else None),
                     "max_error": int(np.abs(s.values.astype(np.int64) - out).max()),
                     "encode_s": t1 - t0, "decode_s": t2 - t1})
    point = Point(name, mode, setting, 8 * sum(r["bytes"] for r in rows) /
                  sum(s.pixels for s in slices),
                  float(np.mean([r["psnr"] for r in rows])),
                  float(np.mean([r["ssim"] for r in rows])),
                  max(r["max_error"] for r in rows),
                  float(np.sum([r["encode_s"] for r in rows])),
                  float(np.sum([r["decode_s"] for r in rows])), rows)
    print(f"{name:>9} {mode} {setting:<5g} {point.bpp:7.4f} bpp  {point.psnr:6.2f} dB  SSIM "
          f"{point.ssim:.4f}  max |err| {point.max_error}", flush=True)
    return point


def curve(points: list[Point], codec: str) -> tuple[list[float], list[float]]:
    """(bpp, PSNR) of one codec's lossy points with a finite PSNR, by rate."""
    pts = sorted((p.bpp, p.psnr) for p in points
                 if p.codec == codec and p.mode == "lossy" and np.isfinite(p.psnr))
    return [b for b, _ in pts], [q for _, q in pts]


def bd_entry(points: list[Point], codec: str, anchor: str) -> dict:
    """BD-rate / BD-PSNR of one codec's lossy curve against another's; why, where undefined."""
    a = (*curve(points, anchor), *curve(points, codec))
    entry = {"codec": codec, "anchor": anchor}
    try:
        return entry | {"bd_rate_percent": bd_rate(*a), "bd_psnr_db": bd_psnr(*a)}
    except ValueError as exc:
        return entry | {"bd_rate_percent": None, "bd_psnr_db": None,
                        "error": f"{exc} (curve A: {anchor}, curve B: {codec})"}


def targets(lossless: dict[str, Lossless], near: list[Point], bd: list[dict]) -> list[dict]:
    """The issue's targets for ours, each with its number and met / not met."""
    out = []
    ours, jls, j2k = (lossless.get(c) for c in ("ours", "jpeg-ls", "jpeg2000"))
    if ours and j2k:
        out.append({"target": "lossless: smaller than JPEG 2000 lossless",
                    "value": f"{ours.bpp:.4f} vs {j2k.bpp:.4f} bpp",
                    "met": ours.bit_exact and ours.bpp < j2k.bpp})
    if ours and jls:
        out.append({"target": "lossless: within 5 % of JPEG-LS",
                    "value": f"{ours.bpp / jls.bpp:.3f} x JPEG-LS",
                    "met": ours.bit_exact and ours.bpp <= LOSSLESS_TARGET_VS_JPEGLS * jls.bpp})
    e = next((e for e in bd if e["codec"] == "ours" and e["anchor"] == "jpeg2000"), None)
    if e:
        value = e["bd_rate_percent"]
        out.append({"target": f"lossy: BD-rate <= {LOSSY_TARGET_BD_J2K:g} % against JPEG 2000",
                    "value": "n/a" if value is None else f"{value:+.1f} %",
                    "met": value is not None and value <= LOSSY_TARGET_BD_J2K})
    near = [p for p in near if p.mode == "near-lossless"]
    for p in (p for p in near if p.codec == "ours"):
        ref = next((q for q in near if q.codec == "jpeg-ls" and q.setting == p.setting), None)
        if ref:
            out.append({"target": f"near-lossless K={p.setting:g}: smaller than JPEG-LS, "
                                  f"max abs. error <= K",  # no "|": the text goes in tables
                        "value": f"{p.bpp:.4f} vs {ref.bpp:.4f} bpp, max abs. error "
                                 f"{p.max_error}",
                        "met": p.bpp < ref.bpp and p.max_error <= p.setting})
    return out


def machine(threads: int) -> dict:
    lib = {} if ic is None else {
        name: getattr(ic, f"{name}_version")() for name in ("jpegls", "jpeg2k", "jpegxl", "zstd")}
    return machine_info(("pillow", "imagecodecs", "pyjpegls", "scikit-image"),
                        codec_threads=threads, zlib=zlib.ZLIB_RUNTIME_VERSION,
                        pillow_zlib=features.version("zlib"), **lib)


def markdown(result: dict, lossless: dict[str, Lossless], points: list[Point]) -> str:
    m = result["machine"]
    bits = sorted({i["bits"] for i in result["image_info"]})
    span = f"{bits[0]}" if len(bits) == 1 else f"{bits[0]}..{bits[-1]}"
    lines = [f"### {result['dataset']}, {len(result['image_info'])} slices "
             f"({result['date'][:10]})", "",
             f"Machine: {m['cpu_model'] or m['processor'] or 'unknown CPU'} ({m['platform']}), "
             f"{m['cpu_count']} CPUs, {result['settings']['threads']} codec thread(s); "
             f"imagecodecs {m['imagecodecs']} ({m.get('jpeg2k')}, {m.get('jpegxl')}, "
             f"{m.get('zstd')}; JPEG-LS decoder {m.get('jpegls')}), pyjpegls {m['pyjpegls']} "
             f"(JPEG-LS encoder), Pillow {m['pillow']} (zlib {m['pillow_zlib']}).", "",
             f"Command: `{result['command']}`", "",
             f"Bits used per slice: {span} (PSNR peak 2^bits − 1); bpp = total bits / total "
             f"pixels; JPEG XL effort {result['settings']['jxl_effort']}. Lossless:", "",
             "| codec | lossless bpp | × JPEG-LS | mean bpp per slice | encode (MP/s) | "
             "decode (MP/s) | bit-exact |", "|---|---:|---:|---:|---:|---:|---|"]
    jls = lossless.get("jpeg-ls")
    for r in lossless.values():
        ratio = f"{r.bpp / jls.bpp:.3f}" if jls else "n/a"
        lines.append(f"| {r.codec} | {r.bpp:.4f} | {ratio} | {r.mean_image_bpp:.4f} | "
                     f"{r.encode_mpx_s:.2f} | {r.decode_mpx_s:.2f} | "
                     f"{'yes' if r.bit_exact else 'NO'} |")
    group = {i["image"]: i["group"] for i in result["image_info"]}
    groups = sorted(set(group.values()))
    lines += ["", "Lossless bpp per group of slices:", "",
              "| codec | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    pixels = {i["image"]: i["pixels"] for i in result["image_info"]}
    for r in lossless.values():
        cells = []
        for g in groups:
            rows = [x for x in r.images if group[x["image"]] == g]
            total = 8 * sum(x["bytes"] for x in rows)
            cells.append(f"{total / sum(pixels[x['image']] for x in rows):.3f}")
        lines.append(f"| {r.codec} | " + " | ".join(cells) + " |")
    near = [p for p in points if p.mode == "near-lossless"]
    if near:
        lines += ["", "Near-lossless (max abs. error K):", "",
                  "| codec | K | bpp | PSNR (dB) | max abs. error |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {p.codec} | {p.setting:g} | {p.bpp:.4f} | {p.psnr:.2f} | {p.max_error} |"
                  for p in near]
    lossy = [p for p in points if p.mode == "lossy"]
    if lossy:
        lines += ["", "Lossy (PSNR and SSIM: means over the slices):", "",
                  "| codec | setting | bpp | PSNR (dB) | SSIM |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {p.codec} | {p.setting:g} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ssim:.4f} |"
                  for p in lossy]
        lines += ["", "Settings: JPEG 2000 target PSNR (dB), JPEG XL distance, ours quality.",
                  "", "| codec | against | BD-rate (%) | BD-PSNR (dB) |", "|---|---|---:|---:|"]
        for e in result["bd"]:
            rate = "n/a" if e["bd_rate_percent"] is None else f"{e['bd_rate_percent']:+.1f}"
            dpsnr = "n/a" if e["bd_psnr_db"] is None else f"{e['bd_psnr_db']:+.2f}"
            lines.append(f"| {e['codec']} | {e['anchor']} | {rate} | {dpsnr} |")
        lines += [f"- n/a for {e['codec']} against {e['anchor']}: {e['error']}"
                  for e in result["bd"] if e["bd_rate_percent"] is None]
    if result.get("targets"):
        lines += ["", "| target | ours | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |"
                  for t in result["targets"]]
    lines += [f"- skipped {k}: {v}" for k, v in result["skipped"].items()]
    return "\n".join(lines + [""])


def plot(points: list[Point], lossless: dict[str, Lossless], path: Path, title: str) -> None:
    import matplotlib  # benchmark-only dependency: pip install -e ".[bench]"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"jpeg2000": dict(color="C0", marker="s", ms=4),
              "jpeg-xl": dict(color="C2", marker="^", ms=4),
              "ours": dict(color="C3", lw=2.2, marker="o", zorder=5)}
    for name, style in styles.items():
        rate, quality = curve(points, name)
        if rate:
            ax.plot(rate, quality, label=f"{name} (lossy)", **style)
    for name, color in (("jpeg-ls", "C1"), ("ours", "C3")):
        near = sorted((p.bpp, p.psnr) for p in points
                      if p.codec == name and p.mode == "near-lossless")
        if near:
            ax.plot(*zip(*near), ls=":", marker="x", color=color, label=f"{name} near-lossless")
        if name in lossless:
            ax.axvline(lossless[name].bpp, ls="--", lw=0.8, color=color,
                       label=f"{name} lossless ({lossless[name].bpp:.2f} bpp)")
    ax.set_xlabel("bits per pixel (real stream size)")
    ax.set_ylabel("PSNR (dB, peak 2^bits − 1, mean over slices)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED / "mri" / "test" / "png",
                   help="folder of 16-bit gray PNGs (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder for the json, md and png")
    p.add_argument("--images", type=int, help="first N images of the folder (default: all)")
    p.add_argument("--ours", metavar="MODEL", help="also benchmark clearvae's MRI coder "
                   "(a model file, or 'default' for the bundled one)")
    p.add_argument("--qualities", type=_numbers, default=[1, 2, 3, 4, 5, 6, 7, 8],
                   help="our lossy qualities (default 1,..,8)")
    p.add_argument("--near", type=_numbers, default=[1, 2, 4],
                   help="near-lossless max errors K (default 1,2,4)")
    p.add_argument("--j2k-psnr", type=_numbers, default=J2K_PSNR,
                   help="JPEG 2000 target PSNRs in dB (default 35,40,..,70)")
    p.add_argument("--jxl-distances", type=_numbers, default=JXL_DISTANCES,
                   help="JPEG XL distances (default 4,2,1,0.5,0.3,0.2,0.1,0.05)")
    p.add_argument("--jxl-effort", type=int, default=7, help="JPEG XL effort 1..10 (default 7, "
                   "libjxl's)")
    p.add_argument("--skip-lossy", action="store_true", help="lossless and near-lossless only")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per image and codec, lossless (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="JPEG 2000 / JPEG XL threads (default 1, as the other codecs)")
    args = p.parse_args(argv)
    for name in ("images", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.jxl_effort <= 10:
        p.error(f"--jxl-effort must be 1..10, got {args.jxl_effort}")
    if any(k != int(k) or not 1 <= k <= 255 for k in args.near):  # ISO 14495-1: NEAR <= 255
        p.error(f"--near must be integers 1..255 (JPEG-LS NEAR), got {args.near}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if ic is None:
        raise SystemExit("error: the baselines need imagecodecs: pip install imagecodecs")
    slices = load_slices(args.data, args.images)
    ours = load_ours(args.ours)
    command = shlex.join(["python", "benchmarks/mri_codec.py",
                          *(sys.argv[1:] if argv is None else argv)])
    result: dict = {
        "dataset": "/".join(args.data.parts[-3:]), "data": str(args.data), "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(args.threads), "ours": args.ours, "skipped": {}, "bd": [],
        "settings": {"threads": args.threads, "jxl_effort": args.jxl_effort,
                     "repeats": args.repeats, "j2k_psnr": args.j2k_psnr,
                     "jxl_distances": args.jxl_distances, "near": args.near,
                     "qualities": args.qualities if ours else None, "psnr_peak": "2^bits - 1, "
                     "bits = max(value).bit_length(); psnr_stored: 2^BitsStored - 1"},
        "image_info": [{"image": s.name, "group": s.group, "shape": list(s.values.shape),
                        "pixels": s.pixels,
                        "bits": s.bits, "bits_stored": s.bits_stored,
                        "max": int(s.values.max())} for s in slices]}
    codecs = baselines(args.threads, args.jxl_effort)
    for name in list(codecs):
        if reason := missing(name):
            result["skipped"][name] = reason
            print(f"skipping {name}: {reason}", file=sys.stderr)
            del codecs[name]
    if ours:
        codecs["ours"] = ours_codecs(ours)
    lossless: dict[str, Lossless] = {}
    points: list[Point] = []

    def save() -> None:  # after every part: a long run keeps what it measured
        result["lossless"] = [dataclasses.asdict(r) for r in lossless.values()]
        result["points"] = [dataclasses.asdict(p) for p in points]
        atomic_write(args.out / "mri_codec.json", json.dumps(result, indent=1).encode())
        atomic_write(args.out / "mri_codec.md", markdown(result, lossless, points).encode())

    for name, parts in codecs.items():
        lossless[name] = measure_lossless(name, *parts["lossless"], slices, args.repeats,
                                          must_be_exact=name != "ours")
    save()
    for name, parts in codecs.items():
        if "near-lossless" in parts:
            for k in args.near:
                p = measure(name, "near-lossless", *parts["near-lossless"], slices, k)
                if name != "ours" and p.max_error > k:
                    raise RuntimeError(f"{name} at K={k:g} made an error of {p.max_error}: a "
                                       "bug in this benchmark or the codec; report it")
                points.append(p)
    save()
    if not args.skip_lossy:
        settings = {"jpeg2000": args.j2k_psnr, "jpeg-xl": args.jxl_distances,
                    "ours": args.qualities}
        for name, parts in codecs.items():
            if "lossy" in parts:
                points += [measure(name, "lossy", *parts["lossy"], slices, q)
                           for q in settings[name]]
        pairs = [("jpeg-xl", "jpeg2000")] + [("ours", a) for a in ("jpeg2000", "jpeg-xl")
                                             if ours]
        result["bd"] = [bd_entry(points, c, a) for c, a in pairs
                        if c in codecs and a in codecs]
        for e in result["bd"]:
            value = ("n/a: " + e["error"] if e["bd_rate_percent"] is None
                     else f"{e['bd_rate_percent']:+.1f} % ({e['bd_psnr_db']:+.2f} dB)")
            print(f"BD-rate of {e['codec']} against {e['anchor']}: {value}", flush=True)
    if ours:
        result["ratios"] = {f"ours / {c}": lossless["ours"].bpp / lossless[c].bpp
                            for c in ("jpeg-ls", "jpeg2000") if c in lossless}
        result["targets"] = targets(lossless, points, result["bd"])
        for t in result["targets"]:
            print(f"target {t['target']}: {t['value']}: {'met' if t['met'] else 'NOT met'}")
    save()
    plot(points, lossless, args.out / "rd_mri.png", f"{result['dataset']}, {len(slices)} slices")
    print(f"wrote {args.out}/mri_codec.json, mri_codec.md, rd_mri.png")


if __name__ == "__main__":
    main()
