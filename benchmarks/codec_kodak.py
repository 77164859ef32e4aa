"""Kodak rate-distortion and speed: our codec at each effort against JPEG, WebP and AVIF.

    python benchmarks/codec_kodak.py --out runs/bench --efforts 0,1,2
    ... --images 2 --qualities 1,4,8 --pillow-qualities 10,50,90    # a quick check
    ... --data ../shared/data/photos/test_mcmaster --out runs/bench-mcmaster   # another set

Each effort level is its own curve ("ours-e0", "ours-e1", ...; efforts above 0 at
``--effort-qualities``), with BD-rates against every anchor and encode / decode seconds.
``--rate-targets`` also measures rate control: ``target_bpp`` at each rate (mean and worst
relative error over the images) and ``max_bytes`` at the same sizes (never exceeded?).

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

from clearvae.codec.codec import Codec
from clearvae.codec.storage import load_codec
from clearvae.errors import ClearvaeError
from clearvae.files import atomic_write
from clearvae.metrics import ms_ssim, psnr

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
SPEED_TARGET_S = 1.0  # encode + decode of one 768x512 (Kodak) image
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
    quality: float
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    images: list[dict]


def load_images(folder: Path, n: int | None) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` PNGs of a folder in name order (Kodak: kodim01 .. kodim24) as
    (name, (H, W, 3) uint8)."""
    paths = sorted(folder.glob("*.png"))[:n]
    if not paths or (n and len(paths) < n):
        raise SystemExit(f"error: {folder} has {len(paths)} PNG images, {n or 'some'} needed: "
                         "pass --data with a folder of test images (or fewer --images)")
    return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def pillow_coder(fmt: str, options: dict) -> tuple[Encode, Decode]:
    def encode(image: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=fmt, quality=quality, **options)
        return buf.getvalue()

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return encode, decode


def our_coder(model: str | None) -> tuple[Codec, Decode, dict]:
    codec = load_codec(model)

    def decode(data: bytes) -> np.ndarray:
        return np.round(codec.decompress(data) * 255).astype(np.uint8)  # as a PNG would hold it

    info = {"path": str(model) if model else "bundled default", "model_id": codec.id.hex(),
            "qualities": codec.qualities}
    return codec, decode, info


def rate_control(codec: Codec, images: list[tuple[str, np.ndarray]],
                 rates: list[float]) -> list[dict]:
    """target_bpp's relative error and max_bytes's worst excess at each rate (effort 0)."""
    out = []
    for rate in rates:
        errors, excess, seconds, unreachable = [], [], [], 0
        for _, image in images:
            pixels = image.shape[0] * image.shape[1]
            t0 = time.perf_counter()
            try:
                data = codec.compress(image, target_bpp=rate)
                errors.append(8 * len(data) / pixels / rate - 1)
            except ClearvaeError:  # beyond the range of qualities: refused, with the range
                unreachable += 1
            seconds.append(time.perf_counter() - t0)
            limit = int(rate * pixels / 8)
            try:
                excess.append(len(codec.compress(image, max_bytes=limit)) - limit)
            except ClearvaeError:  # below the smallest file: refusing is what it must do
                excess.append(None)
        errors = errors or [float("nan")]
        row = {"target_bpp": rate, "mean_abs_error": float(np.mean(np.abs(errors))),
               "worst_abs_error": float(np.max(np.abs(errors))),
               "mean_error": float(np.mean(errors)), "out_of_reach": unreachable,
               "max_bytes_worst_excess": max((e for e in excess if e is not None), default=None),
               "max_bytes_refused": sum(e is None for e in excess),
               "search_s": float(np.median(seconds))}
        print(f"target_bpp {rate}: mean |error| {100 * row['mean_abs_error']:.2f} %, worst "
              f"{100 * row['worst_abs_error']:.2f} % ({unreachable} images out of reach); "
              f"max_bytes worst excess "
              f"{row['max_bytes_worst_excess']} bytes (<= 0: never larger); search "
              f"{row['search_s']:.2f} s per image (median)", flush=True)
        out.append(row)
    return out


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)


class ImageLog:
    """Every image's result, appended to OUT/images.jsonl as soon as it is measured, so that a
    long run that is stopped loses at most one image: ``--resume`` takes the logged ones."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path, self.done = path, {}
        if path is not None and resume and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.done[(row["codec"], row["quality"], row["image"])] = row

    def get(self, codec: str, quality: float, image: str) -> dict | None:
        return self.done.get((codec, quality, image))

    def add(self, row: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


LOG = ImageLog(None, False)


def measure(name: str, encode: Encode, decode: Decode, images: list[tuple[str, np.ndarray]],
            quality: float) -> Point:
    """Code every image at ``quality``; bytes, quality and time per image, then means."""
    rows, enc, dec = [], [], []
    for image_name, image in images:
        if (logged := LOG.get(name, quality, image_name)) is not None:
            rows.append({k: logged[k] for k in ("image", "bytes", "shape", "bpp", "psnr",
                                                "ms_ssim")})
            enc.append(logged["encode_s"])
            dec.append(logged["decode_s"])
            continue
        t0 = time.perf_counter()
        data = encode(image, quality)
        t1 = time.perf_counter()
        out = decode(data)
        t2 = time.perf_counter()
        if out.shape != image.shape:
            raise RuntimeError(f"{name} q={quality} decoded {image_name} to shape {out.shape}, "
                               f"expected {image.shape}")
        x, x_hat = _tensor(image), _tensor(out)
        rows.append({"image": image_name, "bytes": len(data), "shape": image.shape[:2],
                     "bpp": 8 * len(data) / (image.shape[0] * image.shape[1]),
                     "psnr": float(psnr(x_hat, x)[0]), "ms_ssim": float(ms_ssim(x_hat, x)[0])})
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        LOG.add({"codec": name, "quality": quality, **rows[-1], "encode_s": enc[-1],
                 "decode_s": dec[-1]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bpp", "psnr", "ms_ssim")}
    point = Point(name, quality, **mean, encode_s=float(np.mean(enc)),
                  decode_s=float(np.mean(dec)), images=rows)
    print(f"{name:>7} q={quality:<4g} {point.bpp:7.4f} bpp  {point.psnr:6.2f} dB  MS-SSIM "
          f"{point.ms_ssim:.4f}  encode {point.encode_s:6.3f} s  decode {point.decode_s:6.3f} s",
          flush=True)
    return point


def sweep(name: str, encode: Encode, decode: Decode, images: list[tuple[str, np.ndarray]],
          qualities: list[float]) -> list[Point]:
    if any(LOG.get(name, q, n) is None for q in qualities for n, _ in images):
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
    """Effort 0's slowest quality: mean encode + decode of one image against the 1 s target."""
    slow = max((p for p in ours if p.codec == "ours-e0"), key=lambda p: p.encode_s + p.decode_s)
    total = slow.encode_s + slow.decode_s
    verdict = "meets" if total <= SPEED_TARGET_S else "misses"
    h, w = slow.images[0].get("shape", ("?", "?")) if slow.images else ("?", "?")
    return (f"Speed: encode + decode of one {w}×{h} image takes {total:.2f} s "
            f"({slow.encode_s:.2f} + {slow.decode_s:.2f} s, slowest quality q={slow.quality}, "
            f"mean of {len(slow.images)} images, {threads} torch thread(s)): {verdict} the "
            f"{SPEED_TARGET_S:g} s target.")


def markdown(result: dict, points: list[Point]) -> str:
    m = result["machine"]
    lines = [f"### {result['dataset']}, {result['images']} images ({result['date'][:10]})", "",
             f"Machine: {m['cpu_model'] or m['processor'] or 'unknown CPU'} ({m['platform']}), "
             f"{m['cpu_count']} CPUs, "
             f"{m['torch_threads']} torch thread(s); torch {m['torch']}, Pillow {m['pillow']} "
             f"(libjpeg-turbo {m['libjpeg_turbo']}, libwebp {m['libwebp']}, libavif "
             f"{m['libavif']}). Model {result['model']['model_id']}.", "",
             f"Command: `{result['command']}`", "",
             "| codec | quality | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p.codec} | {p.quality:g} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ms_ssim:.4f} | "
              f"{p.encode_s:.3f} | {p.decode_s:.3f} |" for p in points]
    lines += ["", "| ours | against | BD-rate (%) | BD-PSNR (dB) |", "|---|---|---:|---:|"]
    notes: list[str] = []
    for e in result["bd"]:
        if e["bd_rate_percent"] is None:
            lines.append(f"| {e['ours']} | {e['anchor']} | n/a | n/a |")
            notes.append(f"- n/a for {e['ours']} against {e['anchor']}: {e['error']}")
        else:
            lines.append(f"| {e['ours']} | {e['anchor']} | {e['bd_rate_percent']:+.1f} | "
                         f"{e['bd_psnr_db']:+.2f} |")
    if result.get("tradeoff"):
        lines += ["", "| effort | encode (s / image, mean over qualities) | decode (s) | "
                  "BD-rate vs WebP (%) |", "|---:|---:|---:|---:|"]
        lines += [f"| {t['effort']} | {t['encode_s']:.2f} | {t['decode_s']:.2f} | "
                  f"{'n/a' if t['bd_webp'] is None else format(t['bd_webp'], '+.1f')} |"
                  for t in result["tradeoff"]]
    if result.get("rate_control"):
        lines += ["", "| target bpp | mean abs. error (%) | worst abs. error (%) | out of reach | "
                  "max_bytes: worst excess (bytes) | refused | search (s, median) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['target_bpp']:g} | {100 * r['mean_abs_error']:.2f} | "
                  f"{100 * r['worst_abs_error']:.2f} | {r.get('out_of_reach', 0)} | "
                  f"{r['max_bytes_worst_excess']} | "
                  f"{r['max_bytes_refused']} | {r['search_s']:.2f} |"
                  for r in result["rate_control"]]
    lines += ["", "BD-rate: PCHIP over the shared PSNR range (negative: ours needs fewer bits). "
              "Published curves were measured by CompressAI on all 24 Kodak images" +
              ("" if result["images"] == 24 else f"; ours here on {result['images']} only") + ".",
              *([""] + notes if notes else []), "", result["speed"], ""]
    return "\n".join(lines)


def plot(points: list[Point], published: dict[str, dict], path: Path, n_images: int,
         dataset: str) -> None:
    import matplotlib  # benchmark-only dependency: pip install -e ".[bench]"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {f"ours-e{e}": dict(color=c, lw=2.2, marker="o", zorder=5)
              for e, c in zip(range(4), ("C3", "C5", "C6", "C9"))}
    styles |= {"jpeg": dict(color="C0", marker="s", ms=4),
              "webp": dict(color="C2", marker="^", ms=4),
              "avif": dict(color="C1", marker="D", ms=4)}
    for name, style in styles.items():
        curve = sorted((p.bpp, p.psnr) for p in points if p.codec == name)
        if curve:
            label = f"clearvae, effort {name[-1]}" if name.startswith("ours") else name
            ax.plot(*zip(*curve), label=label, **style)
    for i, (label, anchor) in enumerate(published.items()):
        ax.plot(anchor["bpp"], anchor["psnr"], ls="--", color=f"C{4 + i}", marker=".",
                label=f"{label} (published, CompressAI, 24 images)")
    ours_max = max(p.bpp for p in points if p.codec.startswith("ours"))
    ax.set_xlim(0, max(2.0, 1.1 * ours_max))
    ax.set_xlabel("bits per pixel (real file size)")
    ax.set_ylabel("PSNR RGB (dB, 8-bit)")
    ax.set_title(f"{dataset}, {n_images} image{'s' * (n_images > 1)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _ints(text: str) -> list[int]:
    values = _numbers(text)
    if any(v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one quality")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="codec model file (default: the bundled model)")
    p.add_argument("--data", type=Path, default=SHARED / "kodak",
                   help="folder of test PNGs (default: Kodak, %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder for the json, md and png")
    p.add_argument("--images", type=int, help="first N images of the folder (default: all)")
    p.add_argument("--qualities", type=_numbers,
                   help="our qualities at effort 0 (default: every trained quality)")
    p.add_argument("--efforts", type=_ints, default=[0], help="effort levels (default 0)")
    p.add_argument("--effort-qualities", type=_numbers, default=[1, 2, 3, 4, 6, 8],
                   help="our qualities at efforts above 0 (default 1,2,3,4,6,8)")
    p.add_argument("--rate-targets", type=_numbers, default=[],
                   help="measure target_bpp / max_bytes at these rates (e.g. 0.25,0.5,1)")
    p.add_argument("--pillow-qualities", type=_ints, default=list(range(5, 100, 10)),
                   help="JPEG / WebP / AVIF quality sweep (default 5,15,..,95)")
    p.add_argument("--anchors", type=Path, default=SHARED.parent / "anchors" / "kodak_rd.json",
                   help="published CompressAI points (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch and AVIF threads (default: torch's)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the images already measured in OUT/images.jsonl (same options)")
    args = p.parse_args(argv)
    if args.images is not None and args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    if 0 not in args.efforts:
        p.error("--efforts must include 0 (the speed target and the reference curve)")
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
    images = load_images(args.data, args.images)
    global LOG
    args.out.mkdir(parents=True, exist_ok=True)
    LOG = ImageLog(args.out / "images.jsonl", args.resume)
    dataset = "Kodak" if args.data.name == "kodak" else args.data.name
    try:
        codec, decode, model_info = our_coder(args.model)
    except ClearvaeError as exc:
        raise SystemExit(f"error: {exc}") from None
    qualities = args.qualities or list(range(1, model_info["qualities"] + 1))
    if any(not 1 <= q <= model_info["qualities"] for q in qualities + args.effort_qualities):
        raise SystemExit(f"error: qualities must be in 1..{model_info['qualities']} for this "
                         f"model, got {qualities} and {args.effort_qualities}")
    command = shlex.join(["python", "benchmarks/codec_kodak.py",
                          *(sys.argv[1:] if argv is None else argv)])
    result = {"dataset": dataset, "images": len(images), "model": model_info,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command, "machine": machine(threads), "bd_method": "pchip", "bd": [],
              "pillow_options": {k: v[1] for k, v in PILLOW.items()}, "skipped": {},
              "speed_target_s": SPEED_TARGET_S}
    points: list[Point] = []

    def save() -> None:  # after every curve: a long run keeps what it measured
        result["points"] = [dataclasses.asdict(p) for p in points]
        atomic_write(args.out / "codec_kodak.json", json.dumps(result, indent=1).encode())

    anchors: dict[str, tuple[list[float], list[float]]] = {}
    for name, (fmt, options) in PILLOW.items():
        if not features.check(name if name != "jpeg" else "jpg"):
            result["skipped"][name] = f"this Pillow has no {fmt} support"
            print(f"skipping {name}: {result['skipped'][name]}", file=sys.stderr)
            continue
        anchor = sweep(name, *pillow_coder(fmt, options), images, args.pillow_qualities)
        points += anchor
        anchors[name] = ([p.bpp for p in anchor], [p.psnr for p in anchor])
        save()
    published: dict[str, dict] = {}
    if args.anchors.exists() and dataset == "Kodak":
        table = json.loads(args.anchors.read_text())
        published = {label: table[key] for label, key in PUBLISHED.items()}
        anchors |= {f"{label} (published)": (a["bpp"], a["psnr"])
                    for label, a in published.items()}
    else:
        result["skipped"]["published"] = "published curves are for Kodak only"
    curves: dict[int, list[Point]] = {}
    result["tradeoff"] = []
    for effort in sorted(args.efforts):
        def encode(image: np.ndarray, q: float, e: int = effort) -> bytes:
            return codec.compress(image, quality=q, effort=e)

        curve = sweep(f"ours-e{effort}", encode, decode, images,
                      qualities if effort == 0 else args.effort_qualities)
        curves[effort] = curve
        points += curve
        targets = dict(anchors) | ({"ours-e0": ([p.bpp for p in curves[0]],
                                                [p.psnr for p in curves[0]])} if effort else {})
        entries = [bd_entry(curve, *a, label) | {"ours": f"ours-e{effort}"}
                   for label, a in targets.items()]
        result["bd"] += entries
        for e in entries:
            value = ("n/a: " + e["error"] if e["bd_rate_percent"] is None
                     else f"{e['bd_rate_percent']:+.1f} % ({e['bd_psnr_db']:+.2f} dB)")
            print(f"BD-rate of ours at effort {effort} against {e['anchor']}: {value}",
                  flush=True)
        webp = next((e["bd_rate_percent"] for e in entries if e["anchor"] == "webp"), None)
        result["tradeoff"].append({"effort": effort, "bd_webp": webp,
                                   "encode_s": float(np.mean([p.encode_s for p in curve])),
                                   "decode_s": float(np.mean([p.decode_s for p in curve]))})
        result["speed"] = speed_line(points, threads)
        save()
        atomic_write(args.out / "codec_kodak.md", markdown(result, points).encode())
    if args.rate_targets:
        result["rate_control"] = rate_control(codec, images, args.rate_targets)
        save()
        atomic_write(args.out / "codec_kodak.md", markdown(result, points).encode())
    print(result["speed"])
    plot(points, published, args.out / "rd_kodak.png", len(images), dataset)
    print(f"wrote {args.out}/codec_kodak.json, codec_kodak.md, rd_kodak.png")


if __name__ == "__main__":
    main()
