"""Denoising and inpainting image files (the tasks behind ``clearvae denoise`` / ``inpaint``).

Outputs keep the input's bit depth (8 or 16; Pillow writes 16 bits for gray images only),
are written atomically, and never replace the input or an existing file unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clearvae.data import read_image, read_image_bit_depth, write_image
from clearvae.errors import DataError
from clearvae.restore.denoise import Denoised, denoise
from clearvae.restore.inpaint import Inpainted, inpaint


@dataclass(frozen=True)
class Written:
    target: Path
    extras: list[Path]  # std map, samples


def _check_target(source: Path, target: Path, overwrite: bool) -> None:
    if target.resolve() == source.resolve() and not overwrite:
        raise DataError(f"refusing to overwrite the input '{source}': choose another -o, or "
                        "pass --force to replace it")
    if target.exists() and not overwrite:
        raise DataError(f"'{target}' exists: remove it or pass --force")


def _depth(path: Path, channels: int) -> int:
    return 16 if read_image_bit_depth(path) == 16 and channels == 1 else 8


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f"{target.stem}_{tag}{target.suffix}")


def denoise_file(model: torch.nn.Module | None, source: str | os.PathLike,
                 target: str | os.PathLike | None = None, *, samples: int = 8,
                 save_samples: int = 0, std_map: bool = False, sigma: float | None = None,
                 tile: int = 256, seed: int = 0, force_noise: bool = False,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[Written, Denoised]:
    """Denoise one file to ``target`` (default: NAME_denoised.png beside it); on request also
    NAME_std.png (per-pixel std, on the image's [0, 1] scale) and NAME_sample{k}.png."""
    source = Path(source)
    target = Path(target) if target else source.with_name(f"{source.stem}_denoised.png")
    extras = ([_sibling(target, "std")] if std_map else []) + \
        [_sibling(target, f"sample{k}") for k in range(save_samples)]
    for path in [target, *extras]:
        _check_target(source, path, overwrite)
    image = read_image(source)  # (H, W, C) in [0, 1]
    depth = _depth(source, image.shape[-1])
    # draws only make the std map and the samples: without them none are computed (a
    # conditional model's estimate needs none; other models' denoise() asks for one)
    if not (std_map or save_samples) and (model is None or getattr(
            getattr(model, "config", None), "conditional", False)):
        samples = 0
    result = denoise(image, model, samples=max(samples, save_samples),
                     keep_samples=save_samples > 0, sigma=sigma, tile=tile, seed=seed,
                     force=force_noise, progress=progress)
    write_image(target, result.mean, depth)
    if std_map:
        write_image(extras[0], result.std.clip(0, 1), depth)
    for k, path in enumerate(extras[int(std_map):]):
        write_image(path, result.samples[k], depth)
    return Written(target, extras), result


def inpaint_file(model: torch.nn.Module | None, source: str | os.PathLike,
                 mask: str | os.PathLike, target: str | os.PathLike | None = None, *,
                 samples: int = 1, iterations: int = 20, tile: int = 256, seed: int = 0,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[Written, Inpainted]:
    """Fill the white (nonzero) pixels of the ``mask`` image in ``source``; writes ``target``
    (default NAME_inpainted.png) and, for samples > 1, TARGET_sample{k}.png for the others."""
    source = Path(source)
    target = Path(target) if target else source.with_name(f"{source.stem}_inpainted.png")
    extras = [_sibling(target, f"sample{k}") for k in range(1, samples)]
    for path in [target, *extras]:
        _check_target(source, path, overwrite)
    image = read_image(source)
    holes = read_image(mask, channels=1)[..., 0]  # inpaint checks that the sizes match
    result = inpaint(image, holes, model, samples=samples, iterations=iterations, tile=tile,
                     seed=seed, progress=progress)
    depth = _depth(source, image.shape[-1])
    write_image(target, result.samples[0], depth)
    for k, path in enumerate(extras, start=1):
        write_image(path, result.samples[k], depth)
    return Written(target, extras), result
