"""The work behind each endpoint, run by a job: the library functions the CLI calls, on files
in the job's private folder, their outputs read back as bytes.

Each task takes its ``Job`` (for progress and cancellation: the library's progress callbacks
go to ``Job.report``, which raises ``Cancelled`` when asked to stop) and returns an
``Outcome``. Nothing here decides anything about images or models that the library does not:
which codec a file needs, how a target picks a quality, how a denoiser treats colour, all
come from the same calls as ``clearvae compress`` / ``denoise`` / ``sample``.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clearvae.codec import baselines, volume_container
from clearvae.codec.codec import Codec, Progress
from clearvae.compress import (
    Settings,
    compress_file,
    decompress_file,
    is_gray_volume,
    read_for_codec,
)
from clearvae.data import read_image, write_image
from clearvae.data.images import read_pixels
from clearvae.errors import ConfigError
from clearvae.generate import interpolation_strip, sample_grid, to_tensor
from clearvae.models import VAE
from clearvae.restore.files import denoise_file, inpaint_file
from clearvae.service.errors import ServiceError
from clearvae.service.jobs import Job, Outcome

# denoise and inpaint seed torch's global generator (fork_rng + manual_seed): two of them at
# once in two threads would draw from one generator, and the same seed would no longer give
# the same result. They take turns; everything else runs side by side.
GLOBAL_RNG = threading.Lock()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def compress(job: Job, codec: Codec, source: Path, settings: Settings, drop_alpha: bool,
             max_pixels: int) -> Outcome:
    """``clearvae compress`` of one upload, then ``decompress`` of the file it made: the
    .cvae bytes, the real rate, the decoded PNG and its PSNR against what was coded."""
    folder = source.parent
    job.report(0.0, "encoding")
    result = compress_file(codec, source, folder / "result.cvae", settings, drop_alpha,
                           progress=_refining(job), max_pixels=max_pixels)
    job.report(0.95, "decoding")
    decoded = folder / "decoded.png"
    decompress_file(codec, result.target, decoded, max_pixels=max_pixels)
    data = result.target.read_bytes()
    if is_gray_volume(source):  # 16-bit gray: the stored values, in the bits they use
        original = read_pixels(source, max_pixels)
        bits = volume_container.read_volume_header(data)[0].bits
    else:
        original, bits = read_for_codec(source, drop_alpha), 8
    back = read_pixels(decoded, max_pixels).reshape(original.shape)
    height, width = original.shape[:2]
    return Outcome({
        "model": codec.name, "bytes": result.compressed_bytes, "pixels": result.pixels,
        "bpp": result.bpp, "quality": result.quality, "effort": result.effort,
        "psnr": _finite(baselines.psnr(original, back, 2**bits - 1)),
        "max_abs_error": int(np.abs(original.astype(np.int64) - back).max()),
        "width": width, "height": height, "channels": 1 if original.ndim == 2 else
        original.shape[-1], "bits": bits, "cvae": b64(data), "decoded": b64(decoded.read_bytes()),
    })


def compare(job: Job, source: Path, psnr: float, drop_alpha: bool) -> Outcome:
    """What JPEG and WebP need to reach ``psnr`` dB on an 8-bit upload."""
    image = read_for_codec(source, drop_alpha)
    out: dict = {"psnr_target": psnr}
    for i, fmt in enumerate(baselines.FORMATS):
        def progress(tried: int, i: int = i, fmt: str = fmt) -> None:
            job.report((i + tried / 8) / len(baselines.FORMATS), f"{fmt}: trial {tried}")

        found = baselines.at_psnr(image, psnr, fmt, progress)
        out[fmt] = {"quality": found.quality, "bytes": found.bytes, "bpp": found.bpp,
                    "psnr": _finite(found.psnr), "reached": found.reached}
    return Outcome(out)


def decompress(job: Job, codec: Codec, source: Path, max_pixels: int) -> Outcome:
    """``clearvae decompress`` of one upload: the PNG (8-bit, or 16-bit gray)."""
    job.report(0.0, "decoding")
    target = source.parent / "decoded.png"
    result = decompress_file(codec, source, target, max_pixels=max_pixels)
    return Outcome({"model": codec.name, "bytes": result.compressed_bytes, "bpp": result.bpp,
                    "quality": result.quality, "effort": result.effort},
                   target.read_bytes())


def denoise(job: Job, model: torch.nn.Module, source: Path, samples: int, keep: int,
            sigma: float | None, seed: int, force: bool) -> Outcome:
    """``clearvae denoise --std --save-samples keep`` of one upload."""
    with GLOBAL_RNG:
        job.report(0.0, "denoising")
        target = source.parent / "denoised.png"
        written, result = denoise_file(model, source, target, samples=samples,
                                       save_samples=keep, std_map=True, sigma=sigma, seed=seed,
                                       force_noise=force, progress=_steps(job, "denoising tile"))
    std, *draws = written.extras
    return Outcome({"sigma": result.sigma, "sigma_given": sigma is not None,
                    "samples": max(samples, keep), "denoised": b64(target.read_bytes()),
                    "std": b64(std.read_bytes()),
                    "sample_images": [b64(p.read_bytes()) for p in draws]})


def inpaint(job: Job, model: torch.nn.Module, source: Path, mask: Path, iterations: int,
            seed: int) -> Outcome:
    """``clearvae inpaint`` of one upload and its mask: the filled PNG."""
    with GLOBAL_RNG:
        job.report(0.0, "inpainting")
        target = source.parent / "inpainted.png"
        inpaint_file(model, source, mask, target, iterations=iterations, seed=seed,
                     progress=_steps(job, "inpainting step"))
    return Outcome({"iterations": iterations, "seed": seed}, target.read_bytes())


def sample(job: Job, model: VAE, folder: Path, n: int, temperature: float, seed: int,
           size: tuple[int, int] | None, max_pixels: int) -> Outcome:
    """``clearvae sample``: a grid of ``n`` samples as a PNG (at most ``max_pixels`` in all)."""
    h, w = size or model.config.image_size
    if n * h * w > max_pixels:
        raise ServiceError(413, f"{n} samples of {h}x{w} are {n * h * w} pixels, more than "
                           f"this server's limit of {max_pixels}", {"limit_pixels": max_pixels})
    job.report(0.0, "sampling")
    target = folder / "samples.png"
    write_image(target, sample_grid(model, n, temperature, seed, size))
    return Outcome({"n": n, "temperature": temperature, "seed": seed}, target.read_bytes())


def interpolate(job: Job, model: VAE, a: Path, b: Path, steps: int) -> Outcome:
    """``clearvae interpolate``: the strip from image a to image b as a PNG."""
    job.report(0.0, "interpolating")
    c = model.config.image_channels
    xa, xb = (to_tensor(read_image(p, channels=c)) for p in (a, b))
    if xa.shape != xb.shape:
        raise ConfigError(f"'a' is {xa.shape[2]}x{xa.shape[1]} and 'b' {xb.shape[2]}x"
                          f"{xb.shape[1]}: give two images of one size")
    target = a.parent / "interpolation.png"
    write_image(target, interpolation_strip(model, xa, xb, steps))
    return Outcome({"steps": steps}, target.read_bytes())


def _refining(job: Job) -> Progress:
    """The codec's refinement progress as the job's (up to 95 %: decoding follows)."""
    def report(done: int, total: int, bpp: float, psnr: float) -> None:
        job.report(0.95 * done / total, f"refining {done}/{total}: about {bpp:.3f} bpp, "
                   f"{psnr:.2f} dB")

    return report


def _steps(job: Job, what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        job.report(done / total, f"{what} {done}/{total}")

    return report


def _finite(value: float) -> float | None:
    """JSON has no infinity: an identical decode has no PSNR (null)."""
    return value if math.isfinite(value) else None
