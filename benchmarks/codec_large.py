"""Large images: memory and time of coding a big picture in blocks, and tiled vs untiled.

    python benchmarks/codec_large.py --model MODEL [--kodak DIR] [--side 8000x6000]

1. Seams: one Kodak image upscaled to 1536x1024 is coded whole and in 512-pixel blocks; the
   PSNR between the two decoded images (and of each against the original) shows whether the
   blocks leave seams.
2. Bounded memory: a Kodak image upscaled to --side is compressed and decompressed with the
   automatic block size; prints seconds, real bpp and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clearvae.codec.storage import load_codec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="codec model (default: the bundled one)")
    p.add_argument("--kodak", default=str(SHARED / "kodak"))
    p.add_argument("--side", default="8000x6000", help="WxH of the large test image")
    p.add_argument("--quality", type=int, default=4)
    args = p.parse_args()
    codec = load_codec(args.model)
    source = Image.open(Path(args.kodak) / "kodim01.png").convert("RGB")

    mid = np.asarray(source.resize((1536, 1024), Image.LANCZOS))
    whole = to_uint8(codec.decompress(codec.compress(mid, args.quality)))
    tiled_bytes = codec.compress(mid, args.quality, tile=512)
    tiled = to_uint8(codec.decompress(tiled_bytes))
    print(f"1536x1024, quality {args.quality}: tiled (512) vs untiled PSNR {psnr(whole, tiled):.2f}"
          f" dB; against the original: untiled {psnr(mid, whole):.2f} dB, tiled "
          f"{psnr(mid, tiled):.2f} dB")

    w, h = (int(v) for v in args.side.lower().split("x"))
    big = np.asarray(source.resize((w, h), Image.BICUBIC))
    del source
    t0 = time.perf_counter()
    data = codec.compress(big, args.quality)
    t1 = time.perf_counter()
    out = codec.decompress(data)
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{w}x{h}, quality {args.quality}: {8 * len(data) / (w * h):.3f} bpp, encode "
          f"{t1 - t0:.1f} s, decode {t2 - t1:.1f} s, PSNR {psnr(big, to_uint8(out)):.2f} dB, "
          f"peak memory of the process {peak_mb:.0f} MB (the image itself: "
          f"{big.nbytes / 2**20:.0f} MB as uint8), {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
