"""Write a codec's averaged weights as fp16 with its coding tables: the bundled model file.

    python benchmarks/export_codec.py runs/codec/checkpoints/last.safetensors \
        clearvae/weights/codec-default.safetensors --note "..."

The weights are rounded to fp16 first and the tables built from the rounded weights, so the
model id stored in the file is the id of what a user loads. It then checks that the file
loads to the same id and that a Kodak crop codes to the same bytes as the rounded model.
"""

import argparse

from clearvae import checkpoint
from clearvae.codec.codec import Codec
from clearvae.codec.storage import load_codec
from clearvae.data import read_image

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("source", help="model file or training checkpoint")
parser.add_argument("target")
parser.add_argument("--note", default="", help="text stored in the file's info")
parser.add_argument("--image", default="../shared/data/kodak/kodim05.png")
args = parser.parse_args()

model = load_codec(args.source).model
model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
codec = Codec(model)
loaded = checkpoint.read_file(args.source)
info = {**loaded.info, "note": args.note, "model_id": codec.id.hex(),
        "see": "docs/benchmarks.md (image codec)"}
tensors = {k: v.half() for k, v in model.state_dict().items()}
tensors |= {f"tables.{k}": v for k, v in codec.tables.state().items()}
checkpoint.save_file(args.target, "model", tensors, model.config.to_dict(), info)

back = load_codec(args.target)
channels = model.config.image_channels  # a gray (MRI) codec checks a gray crop
image = read_image(args.image, channels=channels)[:256, :256]
image = image[..., 0] if channels == 1 else image
same = back.compress(image, quality=4) == codec.compress(image, quality=4)
print(f"wrote {args.target}: model id {back.id.hex()} (expected {codec.id.hex()}), "
      f"same bytes on a 256x256 crop: {same}")
if back.id != codec.id or not same:
    raise SystemExit("the written file does not reproduce the model")
