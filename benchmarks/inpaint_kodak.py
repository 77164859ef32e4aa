"""Inpainting on Kodak: how well each method fills holes, measured on the hole pixels.

    python benchmarks/inpaint_kodak.py --out runs/inpaint-bench
    ... --limit 2 --methods mean,smooth                                 # a quick check

Protocol, the same for every method:

    image  = the central 256x256 crop of each of the 24 images of ../shared/data/kodak (RGB,
             float32 in [0, 1]); --gray converts them to gray first
    mask   = rectangles of random size 4-32 pixels at random places, drawn until 10% of the
             pixels are covered; fixed by (--seed, image index)
    PSNR   = over the hole pixels only (all channels), data range 1.0, averaged over images
    seconds = time.perf_counter around the method's call on one image, averaged

    mean        the mean of the known pixels, per channel (the floor)
    biharmonic  skimage.restoration.inpaint_biharmonic (per channel)
    smooth      clearvae.restore.inpaint.smooth_fill: our push-pull start, with no model
    ours        clearvae.inpaint with the bundled denoiser (or --model), --iterations sweeps:
                one filling (a posterior sample)
    ours_mean4  the mean of 4 fillings (towards the MMSE estimate)

A sample is not meant to maximise PSNR (it invents plausible detail where the mean is
blurred), so the table reports both. Writes OUT/inpaint_kodak.json and OUT/inpaint_kodak.md.
"""

from __future__ import annotations

import argparse
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
from machine import machine_info
from PIL import Image

from clearvae.restore import inpaint
from clearvae.restore.inpaint import smooth_fill

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
METHODS = ("mean", "biharmonic", "smooth", "ours", "ours_mean4")
CROP = 256

Filler = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_kodak(folder: Path, limit: int | None, gray: bool) -> list[np.ndarray]:
    paths = sorted(folder.glob("kodim*.png"))[:limit]
    if not paths:
        sys.exit(f"no Kodak images in {folder} (set CLEARVAE_DATA or --kodak)")
    images = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("L" if gray else "RGB"), dtype=np.float32) / 255
        y, x = (a.shape[0] - CROP) // 2, (a.shape[1] - CROP) // 2
        images.append(a[y:y + CROP, x:x + CROP])
    return images


def random_mask(shape: tuple[int, int], seed: int, index: int, cover: float = 0.1) -> np.ndarray:
    """(H, W) bool, rectangles of 4-32 pixels until ``cover`` of the image is masked."""
    rng = np.random.default_rng([seed, index])
    mask = np.zeros(shape, bool)
    while mask.mean() < cover:
        h, w = rng.integers(4, 33, 2)
        y, x = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        mask[y:y + h, x:x + w] = True
    return mask


def hole_psnr(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    err = (np.clip(out, 0, 1)[mask] - ref[mask]) ** 2
    return float(10 * np.log10(1 / max(err.mean(), 1e-12)))


def mean_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask] = image[~mask].mean(0)
    return out


def biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return inpaint_biharmonic(image, mask, channel_axis=-1 if image.ndim == 3 else None)


def smooth(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.atleast_3d(image).transpose(2, 0, 1).copy())[None]
    out = smooth_fill(x, torch.from_numpy(mask))[0].numpy().transpose(1, 2, 0)
    return out.reshape(image.shape)


def ours(model: str | None, samples: int, iterations: int, seed: int) -> Filler:
    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        result = inpaint(image, mask, model, samples=samples, iterations=iterations, seed=seed)
        return result.mean

    return fill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/inpaint-bench"))
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", help="model file (default: the bundled denoiser)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--limit", type=int)
    p.add_argument("--gray", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        sys.exit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    fillers: dict[str, Filler] = {
        "mean": mean_fill, "biharmonic": biharmonic, "smooth": smooth,
        "ours": ours(args.model, 1, args.iterations, args.seed),
        "ours_mean4": ours(args.model, 4, args.iterations, args.seed),
    }
    images = load_kodak(args.kodak, args.limit, args.gray)
    masks = [random_mask(im.shape[:2], args.seed, i) for i, im in enumerate(images)]
    results = {}
    for method in methods:
        scores, seconds = [], []
        for image, mask in zip(images, masks):
            t = time.perf_counter()
            out = fillers[method](image, mask)
            seconds.append(time.perf_counter() - t)
            assert np.array_equal(out[~mask], image[~mask]), f"{method} changed known pixels"
            scores.append(hole_psnr(out, image, mask))
        results[method] = {"psnr_holes": float(np.mean(scores)),
                           "seconds": float(np.mean(seconds)), "per_image": scores}
        print(f"{method:12s} hole PSNR {results[method]['psnr_holes']:6.2f} dB  "
              f"{results[method]['seconds']:.2f} s/image", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": shlex.join(sys.argv), "date": datetime.now(timezone.utc).isoformat(),
              "machine": machine_info(("scikit-image", "numpy")), "images": len(images),
              "iterations": args.iterations, "gray": args.gray, "results": results}
    (args.out / "inpaint_kodak.json").write_text(json.dumps(report, indent=1))
    rows = ["| method | hole PSNR (dB) | s / image |", "|---|---:|---:|"]
    rows += [f"| {m} | {r['psnr_holes']:.2f} | {r['seconds']:.2f} |" for m, r in results.items()]
    (args.out / "inpaint_kodak.md").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.out}/inpaint_kodak.json, inpaint_kodak.md")


if __name__ == "__main__":
    main()
