"""Denoising and inpainting image files (the tasks behind ``clearvae denoise`` / ``inpaint``).

Outputs keep the input's bit depth (8 or 16; Pillow writes 16 bits for gray images only),
are written atomically, and never replace the input or an existing file unless asked.

Medical inputs (DICOM files and series, NIfTI volumes, 16-bit gray PNG / TIFF:
``data.medical.is_gray_volume``) are denoised as volumes (``denoise_volume``) on the scale the
gray codec uses (stored values minus offset, over 2**bits - 1 for the bits used) and written
back in their own format, dtype and header through ``data.medical.write_volume``: a DICOM
output is a new derived series (new Series and SOP Instance UIDs, Image Type DERIVED).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clearvae.data import medical, read_image, read_image_bit_depth, write_image
from clearvae.data.images import opened
from clearvae.errors import DataError
from clearvae.restore.denoise import Denoised, denoise, denoise_volume, load_denoiser
from clearvae.restore.inpaint import Inpainted, inpaint, load_restorer


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


def _stem_suffix(path: Path) -> tuple[str, str]:
    """``x.nii.gz`` -> ("x", ".nii.gz"); a series folder ``t1`` -> ("t1", "")."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[:-7], name[-7:]
    return (path.stem, path.suffix) if path.suffix else (name, "")


def _sibling(target: Path, tag: str) -> Path:
    stem, suffix = _stem_suffix(target)
    return target.with_name(f"{stem}_{tag}{suffix}")


def is_volume_input(source: Path) -> bool:
    """Whether ``source`` is denoised as a medical volume: DICOM, NIfTI, or a 16-bit image
    with one channel (16-bit colour images are photos)."""
    if medical.is_medical(source):
        return True
    if not medical.is_gray_volume(source):
        return False
    with opened(source) as im:
        return im.mode.startswith("I")


def denoised_name(source: Path, tag: str = "denoised") -> Path:
    """Where a denoised ``source`` goes by default: NAME_denoised beside it, in the same format
    for medical inputs (``t1/`` -> ``t1_denoised/``, ``x.nii.gz`` -> ``x_denoised.nii.gz``),
    as PNG for photos."""
    stem, suffix = _stem_suffix(source)
    if not (source.is_dir() or suffix.lower() in (".dcm", ".nii", ".nii.gz")):
        suffix = ".png"
    return source.with_name(f"{stem}_{tag}{suffix}")


def _draws_needed(model: torch.nn.Module | None, samples: int, std_map: bool,
                  save_samples: int) -> int:
    """Draws only make the std map and the samples: without them none are computed (a
    conditional model's estimate needs none; other models' denoise() asks for one)."""
    if not (std_map or save_samples) and (model is None or getattr(
            getattr(model, "config", None), "conditional", False)):
        return 0
    return max(samples, save_samples)


def denoise_file(model: torch.nn.Module | None, source: str | os.PathLike,
                 target: str | os.PathLike | None = None, *, samples: int = 8,
                 save_samples: int = 0, std_map: bool = False, sigma: float | None = None,
                 tile: int | None = None, seed: int = 0, force_noise: bool = False,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 ensemble: bool = False) -> tuple[Written, Denoised]:
    """Denoise one file to ``target`` (default: NAME_denoised.png beside it); on request also
    NAME_std.png (per-pixel std, on the image's [0, 1] scale) and NAME_sample{k}.png.
    ``ensemble``: average over the 8 flips and quarter turns (``denoise``)."""
    source = Path(source)
    target = Path(target) if target else denoised_name(source)
    extras = ([_sibling(target, "std")] if std_map else []) + \
        [_sibling(target, f"sample{k}") for k in range(save_samples)]
    for path in [target, *extras]:
        _check_target(source, path, overwrite)
    if is_volume_input(source):
        model = model if model is not None else load_denoiser(medical=True)
        return _denoise_volume_file(model, source, target, extras, samples, save_samples,
                                    std_map, sigma, tile, seed, force_noise, progress,
                                    ensemble)
    image = read_image(source)  # (H, W, C) in [0, 1]
    depth = _depth(source, image.shape[-1])
    result = denoise(image, model, samples=_draws_needed(model, samples, std_map, save_samples),
                     keep_samples=save_samples > 0, sigma=sigma, tile=tile, seed=seed,
                     force=force_noise, progress=progress, ensemble=ensemble)
    write_image(target, result.mean, depth)
    if std_map:
        write_image(extras[0], result.std.clip(0, 1), depth)
    for k, path in enumerate(extras[int(std_map):]):
        write_image(path, result.samples[k], depth)
    return Written(target, extras), result


def _denoise_volume_file(model: torch.nn.Module, source: Path, target: Path, extras: list[Path],
                         samples: int, save_samples: int, std_map: bool, sigma: float | None,
                         tile: int | None, seed: int, force_noise: bool,
                         progress: Callable[[int, int], None] | None, ensemble: bool,
                         ) -> tuple[Written, Denoised]:
    """``denoise_file`` for a DICOM / NIfTI / 16-bit gray input: the same format back."""
    if not isinstance(model, torch.nn.Module):
        model = load_denoiser(model)
    if model.config.noise.kind != "rician":
        warnings.warn(f"'{source.name}' is a medical image, but this denoiser was trained for "
                      f"{model.config.noise.kind} noise (photos); magnitude MRI carries Rician "
                      "noise: use the bundled MRI denoiser (no --model) or train one with "
                      "--preset denoise-mri", UserWarning, stacklevel=3)
    volume = medical.read_volume(source)
    if volume.offset < 0:
        warnings.warn(f"'{source.name}' holds signed values (down to {volume.offset}): they "
                      "are denoised shifted to start at 0, which is right for magnitude "
                      "images only", UserWarning, stacklevel=3)
    top = float(2**volume.bits - 1)
    values = volume.unsigned().astype(np.float32) / top  # (S, H, W) on the codec's scale
    result = denoise_volume(values, model, samples=_draws_needed(model, samples, std_map,
                                                                 save_samples),
                            keep_samples=save_samples > 0, sigma=sigma, tile=tile, seed=seed,
                            force=force_noise, progress=progress, ensemble=ensemble)
    low, high = int(volume.values.min()), int(volume.values.max())
    dtype = volume.values.dtype

    def stored(a: np.ndarray, offset: int, lo: int, hi: int) -> np.ndarray:
        return (np.rint(a.astype(np.float64) * top) + offset).clip(lo, hi).astype(dtype)

    note = f"Denoised by clearvae, {model.config.noise.kind} noise sigma {result.sigma:.2f}/255"
    medical.write_volume(target, volume, stored(result.mean, volume.offset, low, high),
                         derived=note)
    if std_map:  # the spread in stored units (before any rescale slope), from 0
        medical.write_volume(extras[0], volume, stored(result.std, 0, 0, high - min(low, 0)),
                             derived=f"Uncertainty (posterior std) of: {note}")
    for k, path in enumerate(extras[int(std_map):]):
        medical.write_volume(path, volume, stored(result.samples[k], volume.offset, low, high),
                             derived=f"Posterior sample {k} of: {note}")
    return Written(target, extras), result


def inpaint_file(model: torch.nn.Module | None, source: str | os.PathLike,
                 mask: str | os.PathLike, target: str | os.PathLike | None = None, *,
                 samples: int = 1, iterations: int = 20, tile: int = 256, seed: int = 0,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[Written, Inpainted]:
    """Fill the white (nonzero) pixels of the ``mask`` image in ``source``; writes ``target``
    (default NAME_inpainted.png) and, for samples > 1, TARGET_sample{k}.png for the others.
    A medical input (16-bit gray, DICOM, NIfTI) comes back in its own format with every known
    value exactly as stored, the mask applied to each of its slices."""
    source = Path(source)
    target = Path(target) if target else denoised_name(source, "inpainted")
    extras = [_sibling(target, f"sample{k}") for k in range(1, samples)]
    for path in [target, *extras]:
        _check_target(source, path, overwrite)
    if is_volume_input(source):
        model = model if model is not None else load_restorer(None, medical=True)
        return _inpaint_volume_file(model, source, mask, target, extras, samples, iterations,
                                    tile, seed, progress)
    image = read_image(source)
    holes = read_image(mask, channels=1)[..., 0]  # inpaint checks that the sizes match
    result = inpaint(image, holes, model, samples=samples, iterations=iterations, tile=tile,
                     seed=seed, progress=progress)
    depth = _depth(source, image.shape[-1])
    write_image(target, result.samples[0], depth)
    for k, path in enumerate(extras, start=1):
        write_image(path, result.samples[k], depth)
    return Written(target, extras), result


def _inpaint_volume_file(model: torch.nn.Module, source: Path, mask: str | os.PathLike,
                         target: Path, extras: list[Path], samples: int, iterations: int,
                         tile: int, seed: int, progress: Callable[[int, int], None] | None,
                         ) -> tuple[Written, Inpainted]:
    """``inpaint_file`` for a medical input, slice by slice on the scale of its used bits."""
    volume = medical.read_volume(source)
    holes = read_image(mask, channels=1)[..., 0]
    top = float(2**volume.bits - 1)
    values = volume.unsigned()
    fills = []
    for i, plane in enumerate(values):
        step = None if progress is None else (
            lambda done, total, i=i: progress(i * total + done, len(values) * total))
        fills.append(inpaint(plane.astype(np.float32) / top, holes, model, samples=samples,
                             iterations=iterations, tile=tile, seed=seed + i,
                             progress=step).samples)  # (K, H, W)
    filled = np.stack(fills, 1)  # (K, S, H, W) in [0, 1]
    unknown = holes > 0.5
    outputs = []
    for k, path in enumerate([target, *extras]):
        out = volume.values.copy()  # the known values exactly as stored
        new = np.rint(filled[k].astype(np.float64) * top) + volume.offset
        out[:, unknown] = new[:, unknown].clip(volume.values.min(), volume.values.max())
        medical.write_volume(path, volume, out, derived="Inpainted by clearvae")
        outputs.append(out)
    return Written(target, extras), Inpainted(filled)
