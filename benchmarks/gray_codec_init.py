"""Start a gray (12/16-bit) codec from a colour one: the warm start of the MRI codec's training.

    python benchmarks/gray_codec_init.py clearvae/weights/codec-default.safetensors \
        runs/mri-init.safetensors --lambda-scale 4

The gray model codes a gray image x exactly as the colour model codes (x, x, x)
(``clearvae.codec.model.gray_from_colour``); its λ are the colour model's times
``--lambda-scale``, because MRI is judged and coded (near-losslessly) at higher PSNR than
photos. The output is a model file (fp32, with coding tables) for ``init_from``.
"""

import argparse

from clearvae.codec.codec import Codec
from clearvae.codec.model import gray_from_colour
from clearvae.codec.storage import load_codec, save_codec

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("source", help="colour codec model file or checkpoint")
parser.add_argument("target")
parser.add_argument("--lambda-scale", type=float, default=4.0)
args = parser.parse_args()

colour = load_codec(args.source)
lambdas = tuple(args.lambda_scale * lam for lam in colour.model.config.lambdas)
gray = Codec(gray_from_colour(colour.model, lambdas))
save_codec(gray, args.target, {"note": f"gray_from_colour({args.source}, lambda x "
                                       f"{args.lambda_scale})"})
print(f"wrote {args.target}: gray codec, id {gray.id.hex()}, lambdas "
      f"{', '.join(f'{v:.4g}' for v in lambdas)}")
