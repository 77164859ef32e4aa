"""``clearvae demo``: the quick start. Needs no download: trains a small convolutional VAE on
digits that clearvae draws itself, then writes reconstructions and samples to one PNG."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from clearvae.data import SyntheticDigits, write_image
from clearvae.generate import load, reconstruction_grid
from clearvae.models import ConvVAEConfig
from clearvae.training import DataConfig, TrainConfig, train
from clearvae.visual import make_grid

DEMO_MODEL = ConvVAEConfig(widths=(32, 64, 64), latent_channels=4, attention=False,
                           likelihood="bernoulli")


def run_demo(out: Path, steps: int = 600, progress: bool | None = None) -> Path:
    """Train for ``steps`` steps (about a minute on 2 CPU cores) and write ``demo.png``."""
    t0 = time.perf_counter()
    config = TrainConfig(
        model=DEMO_MODEL, data=DataConfig(train="synthetic-digits:10000"), out=str(out / "run"),
        max_steps=steps, batch_size=64, lr=2e-3, ema_decay=0.99, log_every=100,
        checkpoint_every=max(steps, 1),
    )
    resume = (out / "run" / "checkpoints" / "last.safetensors").exists()
    model_path = train(config, resume=resume, progress=progress)
    model = load(model_path)
    held_out = SyntheticDigits(n=16, seed=12345)  # digits the model never saw
    x = torch.stack([held_out[i] for i in range(16)])
    recon = reconstruction_grid(model, x)
    samples = make_grid(model.sample(32, generator=torch.Generator().manual_seed(0)), ncol=16)
    figure = make_grid(torch.stack(_same_width([recon, samples])), ncol=1)
    png = write_image(out / "demo.png", figure) or out / "demo.png"
    print(f"trained for {steps} steps in {time.perf_counter() - t0:.0f} s; model: {model_path}")
    print(f"top: 16 held-out digits above their reconstructions; bottom: 32 samples -> {png}")
    return Path(png)


def _same_width(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Pad (C, H, W) images with white to a common height and width."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    return [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1]), value=1.0)
            for i in images]
