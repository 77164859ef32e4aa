"""Which tile a denoiser should denoise large images in, measured on images it may be tuned on.

    python benchmarks/denoiser_tile.py runs/dmri/model.safetensors \
        --data ../shared/data/mri/train/bangalore_dwi,../shared/data/mri/train/msd_brain \
        --tiles 64,96,128,4096 --levels 3,9

Our U-Nets train on small crops (64 or 112 pixels) and, run over a whole large image, denoise
it worse than tile by tile near that size (docs/benchmarks.md, "the tile"): this script picks
the tile for ``DenoisingVAEConfig.tile`` (``export_denoiser.py --tile``). It must never see a
test set. Each image of the --data folders (16-bit gray PNG, DICOM, NIfTI: every slice of a
volume; at most --per-folder slices, evenly spaced) gets Rician noise of level % of its own
peak (seed 0, rounded, as ``denoise_mri.py`` does) for MRI models, Gaussian noise of sigma
level (0-255 scale) for photo models, and is denoised as one slice with each tile (overlap a
quarter, at most 32; 4096 = the whole image). Prints the mean PSNR per tile and level (on
each image's peak; photos: 255), and the tile with the best mean over the levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from denoise_mri import add_noise, psnr  # the MRI benchmark's noise and score, same protocol

from clearvae.data import images
from clearvae.data.medical import holds_medical, read_volume
from clearvae.restore.denoise import denoise, denoise_volume, load_denoiser


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def slices_of(folder: Path, per_folder: int) -> list[np.ndarray]:
    """Up to ``per_folder`` evenly spaced 2-D images of a folder (float64, stored values)."""
    if holds_medical(folder):
        planes = [s for f in sorted(folder.iterdir()) for s in read_volume(f).values]
    else:
        planes = [images.read_pixels(f)[..., 0] for f in sorted(folder.iterdir())
                  if f.suffix.lower() in images.IMAGE_EXTENSIONS]
    keep = np.unique(np.linspace(0, len(planes) - 1, min(per_folder, len(planes))).astype(int))
    return [np.asarray(planes[i], np.float64) for i in keep if np.asarray(planes[i]).max() > 0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True, help="comma-separated folders (never a test set)")
    p.add_argument("--tiles", type=_ints, default=[64, 96, 128, 256, 4096])
    p.add_argument("--levels", type=_ints, default=[3, 9],
                   help="Rician: % of the peak; Gaussian: sigma on the 0-255 scale")
    p.add_argument("--per-folder", type=int, default=12)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_denoiser(args.model)
    rician = model.config.noise.kind == "rician"
    planes = [s for d in args.data.split(",") if d.strip()
              for s in slices_of(Path(d.strip()), args.per_folder)]
    print(f"{len(planes)} images from {args.data}; model tile {model.config.tile}", flush=True)
    table = np.zeros((len(args.levels), len(args.tiles)))
    for li, level in enumerate(args.levels):
        for i, clean in enumerate(planes):
            if rician:
                peak = clean.max()
                sigma = level / 100 * peak
                noisy = add_noise(clean, level, 0, i)
                top = 2 ** images.used_bits(noisy) - 1
                x, unit = (noisy / top).astype(np.float32)[None], top
            else:
                peak = 255.0
                rng = np.random.default_rng(i)
                noisy = np.clip(np.rint(clean + rng.normal(0, level, clean.shape)), 0, 255)
                x, unit = (noisy / 255).astype(np.float32), 255.0
            for ti, tile in enumerate(args.tiles):
                if rician:  # sigma given: the tile, not the estimate, is measured
                    out = denoise_volume(x, model, samples=0, tile=tile,
                                         sigma=255 * sigma / top).mean[0]
                else:
                    out = denoise(x, model, samples=0, tile=tile, sigma=level).mean
                mse = float(np.mean((out.astype(np.float64) * unit - clean) ** 2))
                table[li, ti] += psnr(mse, peak) / len(planes)
        print(f"level {level:>3}: " + "  ".join(f"{t}: {v:.2f}" for t, v in
                                               zip(args.tiles, table[li])), flush=True)
    best = args.tiles[int(np.argmax(table.mean(0)))]
    print("mean    : " + "  ".join(f"{t}: {v:.2f}" for t, v in zip(args.tiles, table.mean(0))))
    print(f"best tile: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
