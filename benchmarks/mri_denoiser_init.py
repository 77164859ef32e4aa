"""Start the 2.5-D MRI denoiser from the bundled photo denoiser: the warm start of its training.

    python benchmarks/mri_denoiser_init.py clearvae/weights/denoiser-default.safetensors \
        runs/mri-denoiser-init.safetensors

The photo denoiser (a conditional U-Net for gray images, blind over Gaussian sigma 5-50) and
the MRI one (preset ``denoise-mri``: Rician noise, each slice between its two neighbours)
share every weight but the stem's share for the neighbouring slices, which starts at zero: so
the warm start denoises each slice exactly as the photo model does, and training teaches it
the neighbours, the Rician bias of the background and MRI's statistics. The output is a model
file (fp32) for ``init_from`` with the preset's model config.
"""

import argparse

from clearvae import checkpoint
from clearvae.models import build_model, model_config_from_dict
from clearvae.restore.presets import preset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("source", help="the photo denoiser (model file or checkpoint)")
parser.add_argument("target")
parser.add_argument("--preset", default="denoise-mri")
args = parser.parse_args()

photo = checkpoint.load_file(args.source)
config = model_config_from_dict(preset(args.preset)["model"])
model = build_model(config)
weights = {k: v.float() for k, v in photo.weights().items()}
missing, unexpected = model.load_state_dict(weights, strict=False)
if unexpected or any(not k.startswith("backbone.context_stem") for k in missing):
    raise SystemExit(f"the source does not fit {args.preset}: missing {missing[:3]}, "
                     f"unexpected {unexpected[:3]}")
checkpoint.save_file(args.target, "model", model.state_dict(), config.to_dict(),
                     {"note": f"mri_denoiser_init({args.source})"})
print(f"wrote {args.target}: {args.preset} model from {args.source} "
      f"({sum(p.numel() for p in model.parameters())} parameters; new: {missing})")
