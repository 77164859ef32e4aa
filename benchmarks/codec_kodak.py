"""Kodak rate-distortion and speed: our codec against JPEG, WebP and AVIF, in one run.

    python benchmarks/codec_kodak.py --model runs/codec.safetensors --out runs/bench
    ... --images 2 --qualities 1,4,8 --pillow-qualities 10,50,90    # a quick check

Every codec codes the same images, and every number is measured here:

    image (H, W, 3) uint8 --encode--> bytes --decode--> (H, W, 3) uint8 (ours: rounded to 8 bits)
    bpp     = 8 len(bytes) / (H W)            (ours: the whole .cvae file, header included)
    PSNR    = over RGB on the 8-bit images, averaged per image (as CompressAI reports)
    MS-SSIM = on the same 8-bit images
    seconds = time.perf_counter around encode and decode, after one untimed warm-up

BD-rates (``bdrate.py``, PCHIP) compare our curve with each Pillow codec and with the
published CompressAI curves (``--anchors``, measured by CompressAI on all 24 images). Writes
OUT/codec_kodak.json, OUT/codec_kodak.md (for docs/benchmarks.md) and OUT/rd_kodak.png.
Run it from the repo root as a script; threads: ``--threads`` (default: torch's).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from bdrate import bd_psnr, bd_rate
from machine import machine_info
from PIL import AvifImagePlugin, Image, features

from clearvae.codec.storage import load_codec
from clearvae.errors import ClearvaeError
from clearvae.files import atomic_write
from clearvae.metrics import ms_ssim, psnr

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
SPEED_TARGET_S = 1.0  # encode + decode of one 768x512 image
PUBLISHED = {"bmshj2018-hyperprior": "compressai-bmshj2018-hyperprior-mse",
             "bmshj2018-factorized": "compressai-bmshj2018-factorized-mse"}
# Pillow settings: quality is swept, everything else is the library default unless listed.
PILLOW = {"jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 6}), "avif": ("AVIF", {})}

Encode = Callable[[np.ndarray, int], bytes]  # (H, W, 3) uint8, quality -> bytes
Decode = Callable[[bytes], np.ndarray]  # bytes -> (H, W, 3) uint8


@dataclasses.dataclass
class Point:
    """One codec at one quality, averaged over the images (``images``: per image)."""

    codec: str
    quality: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    images: list[dict]


def load_kodak(folder: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` of kodim01.png .. kodim24.png as (name, (H, W, 3) uint8)."""
    paths = [folder / f"kodim{i:02d}.png" for i in range(1, n + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"error: {folder} lacks {', '.join(missing)}: pass --kodak with the "
                         "folder of the 24 Kodak PNGs (or fewer --images)")
    return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def pillow_coder(fmt: str, options: dict) -> tuple[Encode, Decode]:
    def encode(image: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=fmt, quality=quality, **options)
        return buf.getvalue()

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return encode, decode


def our_coder(model: str | None) -> tuple[Encode, Decode, dict]:
    codec = load_codec(model)

    def decode(data: bytes) -> np.ndarray:
        return np.round(codec.decompress(data) * 255).astype(np.uint8)  # as a PNG would hold it

    info = {"path": str(model) if model else "bundled default", "model_id": codec.id.hex(),
            "qualities": codec.qualities}
    return (lambda image, q: codec.compress(image, quality=q)), decode, info


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)


def measure(name: str, encode: Encode, decode: Decode, images: list[tuple[str, np.ndarray]],
            quality: int) -> Point:
    """Code every image at ``quality``; bytes, quality and time per image, then means."""
    rows, enc, dec = [], [], []
    for image_name, image in images:
        t0 = time.perf_counter()
        data = encode(image, quality)
        t1 = time.perf_counter()
        out = decode(data)
        t2 = time.perf_counter()
        if out.shape != image.shape:
            raise RuntimeError(f"{name} q={quality} decoded {image_name} to shape {out.shape}, "
                               f"expected {image.shape}")
        x, x_hat = _tensor(image), _tensor(out)
        rows.append({"image": image_name, "bytes": len(data),
                     "bpp": 8 * len(data) / (image.shape[0] * image.shape[1]),
                     "psnr": float(psnr(x_hat, x)[0]), "ms_ssim": float(ms_ssim(x_hat, x)[0])})
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bpp", "psnr", "ms_ssim")}
    point = Point(name, quality, **mean, encode_s=float(np.mean(enc)),
                  decode_s=float(np.mean(dec)), images=rows)
    print(f"{name:>5} q={quality:<3} {point.bpp:7.4f} bpp  {point.psnr:6.2f} dB  MS-SSIM "
          f"{point.ms_ssim:.4f}  encode {point.encode_s:6.3f} s  decode {point.decode_s:6.3f} s",
          flush=True)
    return point


def sweep(name: str, encode: Encode, decode: Decode, images: list[tuple[str, np.ndarray]],
          qualities: list[int]) -> list[Point]:
    decode(encode(images[0][1], qualities[0]))  # warm-up: lazy init, caches, allocator
    return [measure(name, encode, decode, images, q) for q in qualities]


def bd_entry(ours: list[Point], rate: list[float], quality: list[float], label: str) -> dict:
    """BD-rate / BD-PSNR of ours against one anchor curve; the reason where it is undefined."""
    a = (rate, quality, [p.bpp for p in ours], [p.psnr for p in ours])
    try:
        return {"anchor": label, "bd_rate_percent": bd_rate(*a), "bd_psnr_db": bd_psnr(*a)}
    except ValueError as exc:
        return {"anchor": label, "bd_rate_percent": None, "bd_psnr_db": None,
                "error": f"{exc} (curve A: {label}, curve B: ours)"}


def machine(threads: int) -> dict:
    return machine_info(("pillow",), torch_threads=threads,
                        libjpeg_turbo=features.version("libjpeg_turbo"),
                        libwebp=features.version("webp"), libavif=features.version("avif"))


def speed_line(ours: list[Point], threads: int) -> str:
    """Slowest quality's mean encode + decode of one Kodak image against the 1 s target."""
    slow = max(ours, key=lambda p: p.encode_s + p.decode_s)
    total = slow.encode_s + slow.decode_s
    verdict = "meets" if total <= SPEED_TARGET_S else "misses"
    return (f"Speed: encode + decode of one 768×512 image takes {total:.2f} s "
            f"({slow.encode_s:.2f} + {slow.decode_s:.2f} s, slowest quality q={slow.quality}, "
            f"mean of {len(slow.images)} images, {threads} torch thread(s)): {verdict} the "
            f"{SPEED_TARGET_S:g} s target.")


def markdown(result: dict, points: list[Point]) -> str:
    m = result["machine"]
    lines = [f"### Kodak, {result['images']} images ({result['date'][:10]})", "",
             f"Machine: {m['cpu_model'] or m['processor'] or 'unknown CPU'} ({m['platform']}), "
             f"{m['cpu_count']} CPUs, "
             f"{m['torch_threads']} torch thread(s); torch {m['torch']}, Pillow {m['pillow']} "
             f"(libjpeg-turbo {m['libjpeg_turbo']}, libwebp {m['libwebp']}, libavif "
             f"{m['libavif']}). Model {result['model']['model_id']}.", "",
             f"Command: `{result['command']}`", "",
             "| codec | quality | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p.codec} | {p.quality} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ms_ssim:.4f} | "
              f"{p.encode_s:.3f} | {p.decode_s:.3f} |" for p in points]
    lines += ["", "| ours against | BD-rate (%) | BD-PSNR (dB) |", "|---|---:|---:|"]
    notes: list[str] = []
    for e in result["bd"]:
        if e["bd_rate_percent"] is None:
            lines.append(f"| {e['anchor']} | n/a | n/a |")
            notes.append(f"- n/a against {e['anchor']}: {e['error']}")
        else:
            lines.append(f"| {e['anchor']} | {e['bd_rate_percent']:+.1f} | "
                         f"{e['bd_psnr_db']:+.2f} |")
    lines += ["", "BD-rate: PCHIP over the shared PSNR range (negative: ours needs fewer bits). "
              "Published curves were measured by CompressAI on all 24 images" +
              ("" if result["images"] == 24 else f"; ours here on {result['images']} only") + ".",
              *([""] + notes if notes else []), "", result["speed"], ""]
    return "\n".join(lines)


def plot(points: list[Point], published: dict[str, dict], path: Path, n_images: int) -> None:
    import matplotlib  # benchmark-only dependency: pip install -e ".[bench]"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"ours": dict(color="C3", lw=2.2, marker="o", zorder=5),
              "jpeg": dict(color="C0", marker="s", ms=4),
              "webp": dict(color="C2", marker="^", ms=4),
              "avif": dict(color="C1", marker="D", ms=4)}
    for name, style in styles.items():
        curve = sorted((p.bpp, p.psnr) for p in points if p.codec == name)
        if curve:
            ax.plot(*zip(*curve), label=name if name != "ours" else "ours (clearvae)", **style)
    for i, (label, anchor) in enumerate(published.items()):
        ax.plot(anchor["bpp"], anchor["psnr"], ls="--", color=f"C{4 + i}", marker=".",
                label=f"{label} (published, CompressAI, 24 images)")
    ours_max = max(p.bpp for p in points if p.codec == "ours")
    ax.set_xlim(0, max(2.0, 1.1 * ours_max))
    ax.set_xlabel("bits per pixel (real file size)")
    ax.set_ylabel("PSNR RGB (dB, 8-bit)")
    ax.set_title(f"Kodak, {n_images} image{'s' * (n_images > 1)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one quality")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="codec model file (default: the bundled model)")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak",
                   help="folder of kodim01.png .. kodim24.png (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder for the json, md and png")
    p.add_argument("--images", type=int, default=24, help="first N Kodak images (default 24)")
    p.add_argument("--qualities", type=_ints, help="our qualities (default: all of the model)")
    p.add_argument("--pillow-qualities", type=_ints, default=list(range(5, 100, 10)),
                   help="JPEG / WebP / AVIF quality sweep (default 5,15,..,95)")
    p.add_argument("--anchors", type=Path, default=SHARED.parent / "anchors" / "kodak_rd.json",
                   help="published CompressAI points (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch and AVIF threads (default: torch's)")
    args = p.parse_args(argv)
    if not 1 <= args.images <= 24:
        p.error(f"--images must be 1..24, got {args.images}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if any(not 0 <= q <= 100 for q in args.pillow_qualities):
        p.error(f"--pillow-qualities must be 0..100, got {args.pillow_qualities}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    AvifImagePlugin.DEFAULT_MAX_THREADS = threads  # libavif would use every core otherwise
    images = load_kodak(args.kodak, args.images)
    try:
        encode, decode, model_info = our_coder(args.model)
    except ClearvaeError as exc:
        raise SystemExit(f"error: {exc}") from None
    qualities = args.qualities or list(range(1, model_info["qualities"] + 1))
    if any(not 1 <= q <= model_info["qualities"] for q in qualities):
        raise SystemExit(f"error: --qualities must be in 1..{model_info['qualities']} for this "
                         f"model, got {qualities}")

    points = sweep("ours", encode, decode, images, qualities)
    ours = list(points)
    bd: list[dict] = []
    skipped: dict[str, str] = {}
    for name, (fmt, options) in PILLOW.items():
        if not features.check(name if name != "jpeg" else "jpg"):
            skipped[name] = f"this Pillow has no {fmt} support"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
            continue
        anchor = sweep(name, *pillow_coder(fmt, options), images, args.pillow_qualities)
        points += anchor
        bd.append(bd_entry(ours, [p.bpp for p in anchor], [p.psnr for p in anchor], name))

    published: dict[str, dict] = {}
    if args.anchors.exists():
        table = json.loads(args.anchors.read_text())
        published = {label: table[key] for label, key in PUBLISHED.items()}
        bd += [bd_entry(ours, a["bpp"], a["psnr"], f"{label} (published)")
               for label, a in published.items()]
    else:
        skipped["published"] = f"no anchors file at {args.anchors}"
        print(f"skipping published curves: {skipped['published']}", file=sys.stderr)
    for e in bd:
        value = ("n/a: " + e["error"] if e["bd_rate_percent"] is None
                 else f"{e['bd_rate_percent']:+.1f} % ({e['bd_psnr_db']:+.2f} dB)")
        print(f"BD-rate of ours against {e['anchor']}: {value}")

    result = {"images": len(images), "model": model_info,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "benchmarks/codec_kodak.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine(threads), "bd_method": "pchip", "bd": bd,
              "pillow_options": {k: v[1] for k, v in PILLOW.items()}, "skipped": skipped,
              "speed": speed_line(ours, threads), "speed_target_s": SPEED_TARGET_S,
              "points": [dataclasses.asdict(p) for p in points]}
    print(result["speed"])
    atomic_write(args.out / "codec_kodak.json", json.dumps(result, indent=1).encode())
    atomic_write(args.out / "codec_kodak.md", markdown(result, points).encode())
    plot(points, published, args.out / "rd_kodak.png", len(images))
    print(f"wrote {args.out}/codec_kodak.json, codec_kodak.md, rd_kodak.png")


if __name__ == "__main__":
    main()
