"""Block seams and flat areas, measured directly (PSNR hides both).

    python benchmarks/codec_seams.py --images 8 --tile 256 --out runs/seams

Seams: each image is coded in blocks of ``--tile`` pixels, and the mean absolute step
between the two pixel columns (rows) that meet at a block boundary is compared with the mean
step between neighbouring columns (rows) around it (3 on each side), for the decoded image and
for the original. A seam shows as a boundary step well above its neighbours' where the
original has none: the ratio boundary / around, decoded, against the same ratio of the
original. Also the same image coded as one block, at the same boundaries, for reference.

Flat areas: flat black, mid-grey and white 512x768 images; a flat area must decode flat
(mean, largest error and standard deviation of the decoded values, 8-bit). And the first
photo on a black canvas twice its size, coded with and without the flat-cell map
(``clearvae.codec.flat``): bytes, PSNR, and the largest and mean error of the background, all
of it and beyond one cell (16 pixels) from the photo.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clearvae.codec import flat as flat_cells
from clearvae.codec.storage import load_codec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
AROUND = 3


def steps(image: np.ndarray, boundaries: list[int], axis: int) -> tuple[float, float]:
    """Mean |step| across the boundaries, and across the AROUND neighbours on each side."""
    a = image.astype(np.float64)
    d = np.abs(np.diff(a, axis=axis)).mean(axis=tuple(i for i in range(a.ndim) if i != axis))
    at = [d[b - 1] for b in boundaries]  # d[b - 1] = |x[b] - x[b - 1]|
    near = [d[b - 1 + k] for b in boundaries for k in range(-AROUND, AROUND + 1)
            if k and 0 <= b - 1 + k < len(d)]
    return float(np.mean(at)), float(np.mean(near))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="codec model file (default: the bundled model)")
    p.add_argument("--data", type=Path, default=SHARED / "kodak")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--qualities", default="1,2,3,4,5,6,7,8")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model)
    qualities = [float(q) for q in args.qualities.split(",")]
    paths = sorted(args.data.glob("*.png"))[: args.images]
    rows = []
    for q in qualities:
        ratios = {"tiled": [], "whole": [], "original": []}
        for path in paths:
            x = np.asarray(Image.open(path).convert("RGB"))
            h, w = x.shape[:2]
            cols = list(range(args.tile, w, args.tile))
            lines = list(range(args.tile, h, args.tile))
            decoded = {
                "tiled": codec.decompress(codec.compress(x, quality=q, tile=args.tile)),
                "whole": codec.decompress(codec.compress(x, quality=q)),
                "original": x / 255.0}
            for name, image in decoded.items():
                image = np.round(image * 255)
                r = []
                for axis, b in ((1, cols), (0, lines)):
                    if b:
                        at, near = steps(image, b, axis)
                        r.append(at / near)
                ratios[name].append(float(np.mean(r)))
        row = {"quality": q, **{k: float(np.mean(v)) for k, v in ratios.items()},
               "worst_tiled": float(np.max(ratios["tiled"]))}
        print(f"q={q:g}: boundary step / steps around: blocks {row['tiled']:.3f} (worst "
              f"{row['worst_tiled']:.3f}), one block {row['whole']:.3f}, original "
              f"{row['original']:.3f}", flush=True)
        rows.append(row)
    flat = []
    for value in (0, 128, 255):
        x = np.full((512, 768, 3), value, np.uint8)
        for q in qualities:
            out = np.round(codec.decompress(codec.compress(x, quality=q)) * 255)
            err = np.abs(out - value)
            inner = err[64:-64, 64:-64]
            entry = {"value": value, "quality": q, "mean": float(out.mean()),
                     "max_error": float(err.max()), "std": float(out.std()),
                     "max_error_inside": float(inner.max()), "std_inside": float(
                         out[64:-64, 64:-64].std())}
            print(f"flat {value:3d} q={q:g}: mean {entry['mean']:.2f}, max error "
                  f"{entry['max_error']:.0f} (inside 64 px of the edge: "
                  f"{entry['max_error_inside']:.0f}), std {entry['std']:.2f} (inside "
                  f"{entry['std_inside']:.2f})", flush=True)
            flat.append(entry)
    canvas = [on_canvas(codec, np.asarray(Image.open(paths[0]).convert("RGB")), q, cells)
              for q in qualities for cells in (False, True)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codec_seams.json").write_text(json.dumps(
        {"model_id": codec.id.hex(), "tile": args.tile, "images": [p.name for p in paths],
         "seams": rows, "flat": flat, "canvas": canvas}, indent=1))


def on_canvas(codec, photo: np.ndarray, quality: float, cells: bool) -> dict:
    """The photo in the middle of a black canvas twice its size (7 and 5 pixels off the cell
    grid), coded at ``quality`` with the flat-cell map or without (``cells``): what the
    background decodes to."""
    h, w = photo.shape[:2]
    top, left = h // 2 - 7, w // 2 - 5  # off the cell grid: cells straddle the photo's edge
    x = np.zeros((2 * h, 2 * w, 3), np.uint8)
    x[top : top + h, left : left + w] = photo
    background = np.ones(x.shape[:2], bool)
    background[top : top + h, left : left + w] = False
    far = np.ones(x.shape[:2], bool)
    c = flat_cells.CELL
    far[top - c : top + h + c, left - c : left + w + c] = False
    data = codec.encode(codec.prepare(x, flat_cells=cells), codec.quality_steps(quality)).data
    out = np.round(codec.decompress(data) * 255)
    err = np.abs(out - x).max(axis=2)
    entry = {"quality": quality, "flat_cells": cells, "bytes": len(data),
             "psnr": float(10 * np.log10(255**2 / np.mean((out - x) ** 2))),
             "background_max": float(err[background].max()),
             "background_mean": float(err[background].mean()),
             "far_max": float(err[far].max()), "far_mean": float(err[far].mean())}
    print(f"canvas q={quality:g} {'with' if cells else 'without'} flat cells: "
          f"{entry['bytes']} bytes, {entry['psnr']:.2f} dB, background error max "
          f"{entry['background_max']:.0f} mean {entry['background_mean']:.2f}; beyond "
          f"{c} px of the photo max {entry['far_max']:.0f} mean {entry['far_mean']:.2f}",
          flush=True)
    return entry


if __name__ == "__main__":
    main()
