"""Write a denoiser run's averaged weights as fp16 (the bundled file) and check it denoises alike.

    python benchmarks/export_denoiser.py runs/cden/model.safetensors \
        clearvae/weights/denoiser-default.safetensors [--tile 96]

--tile sets the tile the model denoises large images in (``DenoisingVAEConfig.tile``), as
measured on training images (docs/benchmarks.md).
"""

import argparse
import dataclasses
import math

import numpy as np
from PIL import Image

from clearvae import checkpoint
from clearvae.models import model_from_file
from clearvae.restore import denoise
from clearvae.restore.denoise import load_denoiser

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("source")
parser.add_argument("target")
parser.add_argument("--tile", type=int, help="the model's tile (default: as trained, 256)")
args = parser.parse_args()
src, dst = args.source, args.target
loaded = checkpoint.load_file(src)
model = model_from_file(loaded, src)
config = model.config if args.tile is None else dataclasses.replace(model.config, tile=args.tile)
state = {k: v.half() for k, v in model.state_dict().items()}
info = {**loaded.info, "note": "fp16 copy of the run's averaged (EMA) weights",
        "see": "docs/benchmarks.md (bundled denoiser)"}
checkpoint.save_file(dst, "model", state, config.to_dict(), info)
half = load_denoiser(dst)
kodim05 = Image.open("../shared/data/kodak/kodim05.png").convert("L")
im = np.asarray(kodim05, np.float32)[:256, :256] / 255
noisy = im + np.random.default_rng(0).standard_normal(im.shape).astype(np.float32) * 25 / 255
for name, m in (("fp32", model), ("fp16", half)):
    out = denoise(noisy, m, samples=2, sigma=25).mean
    print(name, f"{10 * math.log10(1 / np.mean((out - im) ** 2)):.3f} dB")
