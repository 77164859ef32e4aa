"""Training presets for denoisers: ``clearvae train --preset NAME`` starts from one of these.

- ``denoise-noisy``: learn from a folder of noisy gray images alone (set ``data.train``; the
  Gaussian noise level is estimated from the images unless ``model.noise.sigma`` is given;
  ``model.noise.kind=poisson_gaussian`` for photon-limited data). The conditional backbone
  (``models.conditional``) trained by recorruption through the noise model
  (``models.denoiser``): a 3.3 M-parameter U-Net for the mean and a latent branch for the
  spread; about 0.5 s per step of 16 crops of 64x64 on 2 cores with ``precision=bf16-mixed``.
- ``denoise-noisy-hdn``: the same data through a hierarchical (HDN-style) VAE with latents at
  four resolutions whose likelihood is the noise model, as DivNoising; sized for a CPU (0.19 s
  per step on one busy core). The ``denoise-noisy`` preset before 2026-12-01, kept to
  reproduce its numbers.
- ``denoise-synthetic``: learn from clean gray images with Gaussian noise of sigma 5-50 added
  on the fly, as the bundled denoiser was: the conditional backbone with clean targets.
- ``denoise-synthetic-hdn``: the same data through the HDN backbone of ``denoise-noisy-hdn``
  (the bundled denoiser before 2026-12-01, kept to reproduce its numbers).
- ``denoise-mri``: clean MRI (DICOM / NIfTI volumes, 8-16-bit gray PNG slices; each on the
  scale of the bits it uses) with Rician noise of sigma 1-35 (0-255 scale) added on the fly,
  2.5-D (each slice between its two neighbours): the bundled MRI denoiser's recipe. For noisy
  MRI alone, use ``denoise-noisy`` with ``model.noise.kind=rician`` (sigma from the
  background) and, for volumes, ``model.backbone.context_slices=1``.
"""

from __future__ import annotations

import copy
from typing import Any

from clearvae.errors import ConfigError

_BACKBONE = {"kind": "hierarchical", "likelihood": "gaussian", "image_channels": 1,
             "image_size": [64, 64], "widths": [16, 32, 48, 64],
             "blocks_per_resolution": [1, 1, 1, 1], "latent_channels": 8, "bottleneck": 0.5}
_CONDITIONAL = {"kind": "conditional", "image_channels": 1, "image_size": [64, 64],
                "widths": [32, 64, 128, 192], "blocks": 2, "latent_channels": 4, "branch": 0.25}
_SYNTHETIC = {"kind": "gaussian", "synthetic": [5.0, 50.0]}
_MRI = {"kind": "rician", "synthetic": [1.0, 35.0]}
_COMMON = {"data": {"size": [64, 64], "mode": "crop", "channels": 1, "preload": True},
           "batch_size": 16, "lr": 3e-4, "lr_warmup_steps": 200, "grad_clip": 200.0,
           "skip_threshold": 2000.0, "ema_decay": 0.999, "checkpoint_every": 500,
           "log_every": 100, "max_steps": 20000}

PRESETS: dict[str, dict[str, Any]] = {
    "denoise-noisy": {**_COMMON, "lr": 5e-4, "model": {"kind": "denoiser",
                                                       "backbone": _CONDITIONAL,
                                                       "noise": {"kind": "gaussian"}}},
    "denoise-noisy-hdn": {**_COMMON, "model": {"kind": "denoiser", "backbone": _BACKBONE,
                                               "noise": {"kind": "gaussian"}}},
    "denoise-synthetic": {**_COMMON, "model": {"kind": "denoiser", "backbone": _CONDITIONAL,
                                               "noise": _SYNTHETIC}},
    "denoise-synthetic-hdn": {**_COMMON, "model": {"kind": "denoiser", "backbone": _BACKBONE,
                                                   "noise": _SYNTHETIC}},
    "denoise-mri": {**_COMMON, "data": {**_COMMON["data"], "value_range": "used"},
                    "model": {"kind": "denoiser",
                              "backbone": {**_CONDITIONAL, "context_slices": 1},
                              "noise": _MRI}},
}


def fit_preset_to_data(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``denoise-noisy`` on medical volumes (every part of ``data.train`` a folder of DICOM or
    NIfTI files): Rician noise, 2.5-D, each volume on the scale of its used bits, as magnitude
    MRI needs; ``--set`` given after this still overrides. Other presets and data unchanged."""
    from clearvae.data.medical import holds_medical

    train = str(config.get("data", {}).get("train") or "")
    parts = [p.strip() for p in train.split(",") if p.strip()]
    if name != "denoise-noisy" or not parts or not all(holds_medical(p) for p in parts):
        return config
    config = copy.deepcopy(config)
    config["model"]["noise"] = {**config["model"]["noise"], "kind": "rician"}
    config["model"]["backbone"] = {**config["model"]["backbone"], "context_slices": 1}
    config["data"] = {**config["data"], "value_range": "used"}
    print("denoise-noisy on DICOM / NIfTI volumes: Rician noise (sigma from the background), "
          "2.5-D (each slice with its two neighbours), values on their used bits")
    return config


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of the training config ``name`` (plain data, for overrides)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
