"""BSDS500 grayscale denoising: classical denoisers, BM3D and our VAEs, in one run.

    python benchmarks/denoise_bsds.py --out runs/denoise-bench
    ... --limit 2 --methods noisy,nlm,tv,wavelet,bm3d --sigmas 25      # a quick check

Protocol, the same for every method:

    clean  = the 100 images of ../shared/data/bsds500/val (BSDS300's test set, of which BSD68 is
             a 68-image subset), sorted by name, converted to gray: (H, W) float32 in [0, 1]
    noisy  = clean + sigma/255 * N(0, 1), NOT clipped (the standard float protocol); the noise
             is fixed by (--seed, image index, sigma), so every method sees the same noisy image
    output = method(noisy, sigma/255), clipped to [0, 1]
    PSNR   = 10 log10(1 / MSE) against clean (data range 1.0), averaged over the images in dB
    SSIM   = skimage.metrics.structural_similarity(clean, output, data_range=1.0) (7x7 uniform
             window, the skimage default), averaged over the images
    seconds = time.perf_counter around the method's call on one image, averaged

Every method is told the true sigma except ours (bundled), which estimates it from the image.

    noisy       the input itself (clipped to [0, 1] for the metrics, like every output)
    nlm         skimage denoise_nl_means: h = 0.8 sigma, sigma = sigma, patch_size = 5,
                patch_distance = 6, fast_mode = True (h = 0.8 sigma: skimage's advice when sigma
                is given with fast_mode)
    tv          skimage denoise_tv_chambolle, weight = sigma (on the [0, 1] scale); the factor 1
                was picked from {0.5, 1, 1.5, 2, 3} on 3 BSDS *train* images, never on val
    wavelet     skimage denoise_wavelet(sigma=sigma, method="BayesShrink", mode="soft",
                rescale_sigma=True), default wavelet (db1)
    bm3d        bm3d.bm3d(noisy, sigma_psd=sigma): the package's default profile
    ours        clearvae.restore.denoise with the bundled denoiser (or --model): the mean of
                --samples posterior samples (MMSE)
    ours_unsupervised   the DivNoising protocol: per sigma, a denoiser trained only on the noisy
                images being evaluated (clearvae.restore.fit_unsupervised, true sigma, for
                --unsupervised-minutes), then denoised as `ours`; training time is recorded
                apart and not counted in seconds per image. Costly on CPU, so run only at
                --unsupervised-sigmas.

A method that cannot run (our API or model missing, a noise level the model refuses) is
recorded as skipped with the reason, not a crash. Writes OUT/denoise_bsds.json (per method and
sigma: means, counts, per-image numbers) and OUT/denoise_bsds.md (for docs/benchmarks.md),
after every finished method, so an interrupted run keeps what it measured. The published
anchor (``../shared/anchors/other.json``) is quoted, labelled as measured on BSD68.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from machine import machine_info
from skimage.metrics import structural_similarity
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

from clearvae.data import read_image
from clearvae.errors import ClearvaeError
from clearvae.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
ANCHOR_KEY = "denoising_bsd68_sigma25_psnr_db"
METHODS = ["noisy", "nlm", "tv", "wavelet", "bm3d", "ours", "ours_unsupervised"]

# (H, W) noisy, sigma on [0, 1] -> (H, W) estimate, or (estimate, per-pixel std) for ours
Denoiser = Callable[[np.ndarray, float], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
Image = tuple[str, np.ndarray]  # (file stem, (H, W) float32)


@dataclasses.dataclass
class Cell:
    """One method at one sigma: means over the images, or the reason it did not run."""

    method: str
    sigma: int
    psnr: float | None = None
    ssim: float | None = None
    seconds_per_image: float | None = None
    count: int = 0
    images: list[dict] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. training time, model path


# --- data and metrics ------------------------------------------------------------------------

def load_bsds(folder: Path, limit: int | None) -> list[Image]:
    """The first ``limit`` images of ``folder`` by name, as gray (H, W) float32 in [0, 1]."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not paths:
        raise SystemExit(f"error: no .jpg or .png images in {folder}: pass --data with the "
                         "BSDS500 val folder or set CLEARVAE_DATA")
    return [(p.stem, read_image(p, channels=1)[..., 0]) for p in paths[:limit]]


def add_noise(clean: np.ndarray, sigma: int, seed: int, index: int) -> np.ndarray:
    """``clean`` plus Gaussian noise of std ``sigma``/255, unclipped; fixed by (seed, index,
    sigma), so the same image at the same sigma is equally noisy for every method and run."""
    rng = np.random.default_rng((seed, index, sigma))
    return (clean + rng.standard_normal(clean.shape) * (sigma / 255.0)).astype(np.float32)


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of ``x`` against ``ref``, both on a data range of 1.0."""
    mse = float(np.mean((x.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(x: np.ndarray, ref: np.ndarray) -> float:
    return float(structural_similarity(ref, x, data_range=1.0))


# --- methods: (H, W) noisy, sigma on the [0, 1] scale -> (H, W) estimate --------------------

def nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True)


def tv(noisy: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_tv_chambolle(noisy, weight=sigma)


def wavelet(noisy: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_wavelet(noisy, sigma=sigma, method="BayesShrink", mode="soft",
                           rescale_sigma=True)


def bm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d  # benchmark-only dependency: pip install -e ".[bench]"

    return bm3d.bm3d(noisy, sigma_psd=sigma)


CLASSICAL: dict[str, Denoiser] = {"noisy": lambda noisy, sigma: noisy, "nlm": nlm, "tv": tv,
                                  "wavelet": wavelet, "bm3d": bm3d_denoise}


def vae_denoiser(model: str | os.PathLike | None, samples: int, seed: int) -> Denoiser:
    """Ours: the MMSE estimate of a clearvae denoiser, loaded once (None: the bundled one).

    Raises ImportError or ClearvaeError when the API or the model is missing."""
    from clearvae.restore import denoise, load_denoiser

    vae = load_denoiser(model)

    def fn(noisy: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        result = denoise(noisy, model=vae, samples=samples, seed=seed)
        return result.mean, result.std

    return fn


def fit_vae_denoiser(noisy: list[np.ndarray], sigma: int, out: Path, minutes: float,
                     samples: int, seed: int,
                     overrides: Sequence[str] = ()) -> tuple[Denoiser, dict]:
    """Ours, unsupervised: train on the noisy images themselves, then denoise with that model.
    ``overrides``: KEY=VALUE settings of the training config (as ``clearvae train --set``)."""
    from clearvae.config import parse_override
    from clearvae.restore import fit_unsupervised

    settings = {".".join(key): value for key, value in map(parse_override, overrides)}
    t0 = time.perf_counter()
    path = fit_unsupervised(noisy, out=out, sigma=float(sigma), minutes=minutes, progress=False,
                            overrides=settings)
    info = {"train_seconds": time.perf_counter() - t0, "model": str(path),
            "train_minutes_budget": minutes, "train_images": len(noisy),
            "train_settings": list(overrides)}
    return vae_denoiser(path, samples, seed), info


# --- measuring -------------------------------------------------------------------------------

def measure(method: str, fn: Denoiser, clean: list[Image], noisy: list[np.ndarray],
            sigma: int) -> Cell:
    """Run ``fn`` on every noisy image at ``sigma``; PSNR, SSIM and seconds per image."""
    cell = Cell(method, sigma)
    for i, ((name, x), y) in enumerate(zip(clean, noisy)):
        print(f"{method} sigma={sigma} image {i + 1}/{len(clean)} ({name})", flush=True)
        t0 = time.perf_counter()
        out = fn(y, sigma / 255.0)
        seconds = time.perf_counter() - t0
        out, std = out if isinstance(out, tuple) else (out, None)
        out = np.clip(np.asarray(out, dtype=np.float32).reshape(x.shape), 0.0, 1.0)
        scores = {"psnr": psnr(out, x), "ssim": ssim(out, x), "seconds": seconds}
        cell.images.append({"image": name, **scores,
                            **({} if std is None else calibration(out, std, x))})
    cell.count = len(cell.images)
    cell.psnr, cell.ssim, cell.seconds_per_image = (
        float(np.mean([r[k] for r in cell.images])) for k in ("psnr", "ssim", "seconds"))
    if "std_ratio" in cell.images[0]:
        cell.extra.update({k: float(np.mean([r[k] for r in cell.images]))
                           for k in ("std_ratio", "std_corr")})
    print(f"{method:>17} sigma={sigma:<3} PSNR {cell.psnr:6.2f} dB  SSIM {cell.ssim:.4f}  "
          f"{cell.seconds_per_image:7.3f} s/image", flush=True)
    return cell


def calibration(estimate: np.ndarray, std: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """How well an uncertainty map predicts the error: ``std_ratio`` = RMS of the map over the
    RMS error (1: right on average), ``std_corr`` = correlation across pixels of the map with
    the absolute error (0: no idea where the errors are)."""
    error = np.abs(estimate.astype(np.float64) - clean)
    std = np.asarray(std, dtype=np.float64).reshape(clean.shape)
    rms_error = float(np.sqrt(np.mean(error**2)))
    ratio = float(np.sqrt(np.mean(std**2)) / rms_error) if rms_error > 0 else float("nan")
    corr = float(np.corrcoef(std.ravel(), error.ravel())[0, 1]) if np.ptp(std) > 0 else 0.0
    return {"std_ratio": ratio, "std_corr": corr}


def skip(method: str, sigma: int, reason: str) -> Cell:
    print(f"{method:>17} sigma={sigma:<3} skipped: {reason}", flush=True)
    return Cell(method, sigma, skipped=reason)


def run_ours(args: argparse.Namespace, clean: list[Image], noisy: list[np.ndarray],
             sigma: int, cache: dict[str, Denoiser | str]) -> Cell:
    """The bundled (or --model) denoiser; the model is loaded once, for every sigma."""
    if "ours" not in cache:
        try:
            cache["ours"] = vae_denoiser(args.model, args.samples, args.seed)
        except (ImportError, ClearvaeError) as exc:
            cache["ours"] = f"{type(exc).__name__}: {exc}"
    fn = cache["ours"]
    if isinstance(fn, str):
        return skip("ours", sigma, fn)
    try:
        return measure("ours", fn, clean, noisy, sigma)
    except ClearvaeError as exc:  # e.g. a noise level the model refuses
        return skip("ours", sigma, f"{type(exc).__name__}: {exc}")


def run_unsupervised(args: argparse.Namespace, clean: list[Image], noisy: list[np.ndarray],
                     sigma: int) -> Cell:
    """Train on this sigma's noisy images, then denoise them (DivNoising protocol)."""
    name = "ours_unsupervised"
    if args.unsupervised_minutes <= 0:
        return skip(name, sigma, "not run: --unsupervised-minutes 0")
    if sigma not in args.unsupervised_sigmas:
        return skip(name, sigma, f"not run: only at --unsupervised-sigmas "
                                 f"{','.join(map(str, args.unsupervised_sigmas))} (CPU cost)")
    try:
        print(f"{name} sigma={sigma}: training for up to {args.unsupervised_minutes:g} min on "
              f"{len(noisy)} noisy images", flush=True)
        fn, info = fit_vae_denoiser(noisy, sigma, args.out / f"unsupervised_sigma{sigma}",
                                    args.unsupervised_minutes, args.samples, args.seed,
                                    args.unsupervised_set)
        cell = measure(name, fn, clean, noisy, sigma)
    except (ImportError, ClearvaeError) as exc:
        return skip(name, sigma, f"{type(exc).__name__}: {exc}")
    cell.extra.update(info)  # beside the std map's calibration
    return cell


# --- report ----------------------------------------------------------------------------------

def machine() -> dict:
    return machine_info(("numpy", "scikit-image", "bm3d", "PyWavelets"))


def published_anchor() -> dict:
    """The published BSD68 sigma = 25 PSNRs, or {} without the anchors file."""
    path = SHARED.parent / "anchors" / "other.json"
    return json.loads(path.read_text()).get(ANCHOR_KEY, {}) if path.exists() else {}


def markdown(result: dict, cells: list[Cell]) -> str:
    m, sigmas = result["machine"], result["sigmas"]
    lines = [f"### BSDS500 val, gray, Gaussian noise: {result['images']} images "
             f"({result['date'][:10]})", "",
             f"Machine: {m['cpu_model'] or m['processor'] or 'unknown CPU'} ({m['platform']}), "
             f"{m['cpu_count']} CPUs, {m['torch_threads']} torch thread(s); scikit-image "
             f"{m['scikit-image']}, bm3d {m['bm3d']}, torch {m['torch']}.", "",
             f"Command: `{result['command']}`", "",
             "| method | " + " | ".join(f"σ={s} PSNR / SSIM" for s in sigmas) +
             " | s / image |", "|---|" + "---:|" * (len(sigmas) + 1)]
    notes: list[str] = []
    for method in result["methods"]:
        row = {c.sigma: c for c in cells if c.method == method}
        text = []
        for s in sigmas:
            c = row.get(s)
            if c is None:
                text.append("")
            elif c.skipped:
                text.append("skipped")
                notes.append(f"- {method}, σ={s}: {c.skipped}")
            else:
                text.append(f"{c.psnr:.2f} / {c.ssim:.4f}")
        times = [c.seconds_per_image for c in row.values() if c.seconds_per_image is not None]
        mean_time = f"{np.mean(times):.3f}" if times else ""
        lines.append(f"| {method} | " + " | ".join(text) + f" | {mean_time} |")
    lines += ["", "PSNR in dB (data range 1.0), outputs clipped to [0, 1]; noise not clipped. "
              "s / image: mean over the σ that ran (per σ in the JSON)."]
    anchor = {k: v for k, v in result["published"].items() if k != "about"}
    if anchor:
        quoted = "; ".join(f"{name} {value:.2f} dB" for name, value in anchor.items())
        lines += ["", f"Published, BSD68 (68-image subset), σ=25: {quoted}."]
    calibrated = [f"- {c.method}, σ={c.sigma}: RMS std / RMS error {c.extra['std_ratio']:.2f}, "
                  f"correlation of std with |error| {c.extra['std_corr']:.2f}"
                  for c in cells if "std_ratio" in c.extra]
    if calibrated:
        lines += ["", "Uncertainty map (the per-pixel std of the draws) against the real error:",
                  "", *calibrated]
    trained = [f"- ours_unsupervised, σ={c.sigma}: trained {c.extra['train_seconds']:.0f} s "
               f"on the {c.extra['train_images']} noisy images" for c in cells
               if "train_seconds" in c.extra]
    if trained:
        lines += ["", "Training (not in s / image):", "", *trained]
    if notes:
        lines += ["", "Skipped:", "", *notes]
    return "\n".join(lines).rstrip() + "\n"


def write(args: argparse.Namespace, result: dict, cells: list[Cell]) -> None:
    """Write the JSON and the markdown as they stand (called after every finished cell)."""
    result["results"] = [dataclasses.asdict(c) for c in cells]
    atomic_write(args.out / "denoise_bsds.json", json.dumps(result, indent=1).encode())
    atomic_write(args.out / "denoise_bsds.md", markdown(result, cells).encode())


# --- command line ----------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}; choose from "
                                         f"{','.join(METHODS)}")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the json and md")
    p.add_argument("--data", type=Path, default=SHARED / "bsds500" / "val",
                   help="folder of the test images (default: %(default)s)")
    p.add_argument("--sigmas", type=_ints, default=[15, 25, 50],
                   help="noise std on the 0-255 scale (default 15,25,50)")
    p.add_argument("--limit", type=int, help="the first N images by name (default: all)")
    p.add_argument("--methods", type=_methods, default=METHODS,
                   help=f"comma list of {','.join(METHODS)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="noise and sampling seed (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--model", help="our denoiser's model file (default: the bundled model)")
    p.add_argument("--samples", type=int, default=8,
                   help="posterior samples averaged by ours (default 8)")
    p.add_argument("--skip-ours", action="store_true", help="leave out ours and ours_unsupervised")
    p.add_argument("--unsupervised-minutes", type=float, default=10.0,
                   help="training time per sigma for ours_unsupervised (default 10; 0: skip)")
    p.add_argument("--unsupervised-sigmas", type=_ints, default=[25],
                   help="sigmas at which ours_unsupervised is trained (default 25)")
    p.add_argument("--unsupervised-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for ours_unsupervised (as clearvae train --set), "
                        "e.g. precision=bf16-mixed; repeatable")
    args = p.parse_args(argv)
    for name in ("limit", "threads", "samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.skip_ours:
        args.methods = [m for m in args.methods if not m.startswith("ours")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clean = load_bsds(args.data, args.limit)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "benchmarks/denoise_bsds.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine(), "data": str(args.data), "images": len(clean),
              "sigmas": args.sigmas, "methods": args.methods, "seed": args.seed,
              "noise": "additive Gaussian, std sigma/255 on [0, 1], not clipped",
              "samples": args.samples, "model": args.model or "bundled default",
              "published": published_anchor(), "published_label": "BSD68 (68-image subset)"}
    cells: list[Cell] = []
    cache: dict[str, Denoiser | str] = {}
    for sigma in args.sigmas:
        noisy = [add_noise(x, sigma, args.seed, i) for i, (_, x) in enumerate(clean)]
        for method in args.methods:
            if method in CLASSICAL:
                cells.append(measure(method, CLASSICAL[method], clean, noisy, sigma))
            elif method == "ours":
                cells.append(run_ours(args, clean, noisy, sigma, cache))
            else:
                cells.append(run_unsupervised(args, clean, noisy, sigma))
            write(args, result, cells)
    print(f"wrote {args.out}/denoise_bsds.json, denoise_bsds.md", flush=True)


if __name__ == "__main__":
    main()
