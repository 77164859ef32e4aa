"""Train a denoiser on noisy images held in memory: the DivNoising protocol, where a model
learns from the very images it will then denoise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clearvae.config import set_nested
from clearvae.data import FloatImages
from clearvae.restore.presets import preset


def fit_unsupervised(noisy: list[np.ndarray], out: str | os.PathLike, *,
                     sigma: float | None = None, minutes: float | None = None,
                     overrides: dict[str, Any] | None = None, resume: bool = False,
                     progress: bool | None = None) -> Path:
    """Train the ``denoise-noisy`` preset on ``noisy`` ((H, W) float arrays, [0, 1] scale,
    unclipped is fine) and return the model file. ``sigma`` (0-255 scale) is estimated from
    the images when None; ``minutes`` caps the wall time; ``overrides`` maps dotted keys
    (e.g. ``{"max_steps": 5000}``) to values; ``resume`` continues the run in ``out``."""
    from clearvae.training import TrainConfig, train  # training pulls in Fabric: only here

    data = preset("denoise-noisy")
    data["out"] = str(out)
    data["data"]["train"] = "in memory"
    if sigma is not None:
        data["model"]["noise"]["sigma"] = float(sigma)
    if minutes is not None:
        data["max_minutes"] = float(minutes)
        data["max_steps"] = 10**9
    for key, value in (overrides or {}).items():
        set_nested(data, key.split("."), value)
    config = TrainConfig.from_dict(data)
    return train(config, resume=resume, dataset=FloatImages(noisy, size=config.data.size),
                 progress=progress)
