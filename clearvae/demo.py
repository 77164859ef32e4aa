"""``clearvae demo``: the quick start. Needs no download: trains a small convolutional VAE on
digits that clearvae draws itself, then writes reconstructions and samples to one PNG; then
compresses a picture that it generates to a real ``.cvae`` file with the codec (the bundled
one, or ``codec``) and decodes it again, printing the real bits per pixel and the PSNR."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clearvae.codec.codec import Codec
from clearvae.codec.storage import default_model_path, load_codec
from clearvae.compress import Result, Settings, compress_file, decompress_file
from clearvae.data import SyntheticDigits, read_image, write_image
from clearvae.generate import load, reconstruction_grid
from clearvae.metrics import psnr
from clearvae.models import ConvVAEConfig
from clearvae.training import DataConfig, TrainConfig, train
from clearvae.visual import make_grid

DEMO_MODEL = ConvVAEConfig(widths=(16, 32, 32), latent_channels=4, attention=False,
                           likelihood="bernoulli")


def run_demo(out: Path, steps: int = 600, progress: bool | None = None,
             codec: str | os.PathLike | None = None) -> Path:
    """Train for ``steps`` steps (about 1.5 minutes on 2 CPU cores) and write ``demo.png``; then
    the codec round trip (``codec_demo``) with ``codec`` or the bundled model, if there is one."""
    t0 = time.perf_counter()
    # The codec first: a bad --codec fails here, before a minute of training.
    has_codec = codec is not None or default_model_path().exists()
    model_codec = load_codec(codec) if has_codec else None
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
    if model_codec is None:
        print("codec: this install has no bundled codec model yet (docs/benchmarks.md says "
              "where its training stands); `clearvae demo --codec MODEL` runs this part with one")
    else:
        r = codec_demo(out, model_codec)
        c = r.compressed
        print(f"codec: {c.source.name} -> {c.target.name}, {c.compressed_bytes} bytes, "
              f"{c.bpp:.3f} bpp at quality {r.quality}; decoded: {r.decoded.name}, "
              f"PSNR {r.psnr:.2f} dB")
    return Path(png)


@dataclass(frozen=True)
class CodecDemo:
    compressed: Result  # the generated PNG -> its .cvae file (real size and bpp)
    decoded: Path  # the .cvae file decoded to PNG
    quality: float
    psnr: float  # dB, RGB, 8-bit decoded file against the 8-bit picture


def codec_demo(out: Path, codec: Codec, quality: float = 4,
               size: tuple[int, int] = (512, 768)) -> CodecDemo:
    """Write a generated picture, compress it to a real file and decode that file again."""
    out.mkdir(parents=True, exist_ok=True)
    picture, compressed, decoded = (out / "demo-picture.png", out / "demo-picture.cvae",
                                    out / "demo-picture-decoded.png")
    write_image(picture, demo_picture(*size) / 255.0)
    result = compress_file(codec, picture, compressed, Settings(quality), overwrite=True)
    decompress_file(codec, compressed, decoded, overwrite=True)
    a, b = (torch.from_numpy(read_image(p, channels=3)).permute(2, 0, 1)[None]
            for p in (picture, decoded))
    return CodecDemo(result, decoded, quality, float(psnr(a, b)))


def demo_picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 picture with some statistics of photographs: a colour field whose
    amplitude spectrum falls as a power of the frequency (1/f^1.5; photographs: about 1/f,
    but with smooth regions beside textured ones), and discs with hard edges."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None])  # (H, W//2+1)
    f[0, 0] = 1.0
    shape = (3, h, w // 2 + 1)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / f**1.5
    spectrum[:, 0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(h, w))  # (3, H, W)
    field = np.tensordot(np.array([[1.0, 0.3, 0.2], [0.9, 0.5, -0.2], [0.8, -0.2, 0.4]]),
                         field / field.std(), 1)  # correlated colour planes, like RGB
    image = 0.5 + 0.15 * field.transpose(1, 2, 0)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.03, 0.15) * min(h, w)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image[inside] = 0.7 * rng.uniform(0.05, 0.95, 3) + 0.3 * image[inside]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _same_width(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Pad (C, H, W) images with white to a common height and width."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    return [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1]), value=1.0)
            for i in images]
