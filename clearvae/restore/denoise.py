"""Denoising with a denoising VAE: MMSE estimate, posterior samples and an uncertainty map.

    noisy image (H, W[, C]) --tiles--> K posterior draws s_1..s_K per tile (DenoisingVAE)
        mean = (1/K) sum s_k       the MMSE estimate (Prakash et al., DivNoising, ICLR 2021);
                                   a conditional model (the bundled one) gives it directly
        std  = sqrt(mean(s_k^2) - mean(s_k)^2)    per-pixel spread of the plausible clean images

A 1-channel model denoises an RGB image plane by plane. A model trained blind on a range of
synthetic Gaussian noise (the bundled one) sees the planes of an opponent colour basis, as
CBM3D does (Dabov et al., ICIP 2007): a luminance plane (R + G + B) / 3 and two colour-difference
planes (R - B) / 2 + 1/2 and (R - 2G + B) / 4 + 1/2. The basis is orthogonal, so white noise
stays white and independent across planes, at 1/sqrt(3), 1/sqrt(2) and sqrt(6)/4 of its RGB
sigma; the luminance plane carries most of the signal at the lowest noise, and the colour
planes are smooth. On Kodak crops at sigma 15-50 this gained 0.15-0.8 dB (0.55 on average)
over R, G, B planes. The posterior draws go back to RGB before their mean and spread are
taken, so the std map is the spread of RGB draws. A model trained for one known noise (or
Poisson-Gaussian noise, which a colour transform would mix) denoises R, G and B themselves.

Images are floats on the [0, 1] scale (values outside it, as unclipped noisy data has, are
fine) or 8/16-bit integers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clearvae import checkpoint
from clearvae.errors import DataError, ModelFileError
from clearvae.models import model_from_file
from clearvae.models.denoiser import DenoisingVAE
from clearvae.noise import estimate_rician_sigma, estimate_sigma, rician_unbias
from clearvae.restore.tiles import tiled

DEFAULT_MODEL = "denoiser-default.safetensors"
MRI_MODEL = "denoiser-mri.safetensors"  # for DICOM, NIfTI and 16-bit gray input
NOISE_MARGIN = 1.5  # refuse inputs estimated noisier than 1.5x the trained maximum (+5)
# rows: the luminance and two colour-difference planes of an RGB pixel (see the module doc)
OPPONENT = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])
OPPONENT_OFFSET = torch.tensor([0.0, 0.5, 0.5])
OPPONENT_INVERSE = torch.linalg.inv(OPPONENT.double())


def default_denoiser_path(medical: bool = False) -> Path:
    """Where the bundled photo (or MRI) denoiser lives inside the installed package."""
    return Path(str(resources.files("clearvae") / "weights" / (MRI_MODEL if medical
                                                               else DEFAULT_MODEL)))


def load_denoiser(path: str | os.PathLike | None = None, medical: bool = False) -> DenoisingVAE:
    """A denoising VAE from a model file or checkpoint (None: the bundled photo denoiser, or
    with ``medical`` the bundled MRI one)."""
    path = Path(path) if path is not None else default_denoiser_path(medical)
    if not path.exists():
        if path == default_denoiser_path(medical):
            raise ModelFileError(f"the bundled denoiser '{path}' is not installed; pass a model "
                                 "trained with `clearvae train` (kind denoiser)")
        raise ModelFileError(f"no such model file: '{path}'")
    loaded = checkpoint.load_file(path)
    kind = loaded.model_config.get("kind")
    if kind != "denoiser":
        raise ModelFileError(f"'{path}' holds a {kind} model, not a denoiser: train one with "
                             "`clearvae train --preset denoise-noisy` (or denoise-synthetic)")
    return model_from_file(loaded, str(path))  # type: ignore[return-value]


@dataclasses.dataclass
class Denoised:
    """Arrays have the input's (H, W) or (H, W, C) shape, float32 on the [0, 1] scale."""

    mean: np.ndarray  # MMSE estimate, clipped to [0, 1]
    std: np.ndarray  # per-pixel std of the posterior samples (0 when none were drawn)
    samples: np.ndarray | None  # (K, ...) individual posterior samples, clipped, on request
    sigma: float  # noise std of the input (0-255 scale): as given, or estimated


def as_float_image(image: Any) -> tuple[np.ndarray, int | None]:
    """(H, W, C) float32 on the [0, 1] scale and the integer bit depth (None for floats)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3) or min(a.shape[:2]) < 1:
        raise DataError(f"expected an image (H, W) or (H, W, C) with C = 1 or 3, got shape "
                        f"{tuple(np.shape(image))}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0, 8
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0, 16
    if a.dtype.kind != "f":
        raise DataError(f"image pixels must be uint8, uint16 or float, got {a.dtype}")
    if not np.isfinite(a).all():
        raise DataError("the image holds NaN or infinite values")
    return a.astype(np.float32), None


def to_planes(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """(B, c, H, W): the image as the model's batch (channels as a batch for a gray model)."""
    c, mc = image.shape[-1], model.config.image_channels
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (C, H, W)
    if mc == c:
        return x[None]
    if mc == 1:
        return x[:, None]
    raise DataError(f"this model denoises {mc}-channel images; the image has {c} channel(s)")


def from_planes(t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """(..., B, c, H, W) back to (..., H, W, C), squeezed to the input's rank."""
    t = t.flatten(-4, -3)  # (..., C, H, W)
    a = t.movedim(-3, -1).numpy()
    return a[..., 0] if len(shape) == 2 else a


def uses_opponent_planes(model: DenoisingVAE, image: np.ndarray) -> bool:
    """Whether ``denoise`` runs an RGB image through the opponent colour planes."""
    blind = model.config.noise.synthetic is not None  # trained on a range of Gaussian sigmas
    return image.shape[-1] == 3 and model.config.image_channels == 1 and blind


def to_opponent(planes: torch.Tensor) -> torch.Tensor:
    """RGB planes (..., 3, c, H, W) -> opponent planes, same shape."""
    out = torch.einsum("ij,...jchw->...ichw", OPPONENT.to(planes), planes)
    return out + OPPONENT_OFFSET.to(planes)[:, None, None, None]


def from_opponent(planes: torch.Tensor) -> torch.Tensor:
    """Opponent planes (..., 3, c, H, W) -> RGB planes; the exact inverse of ``to_opponent``."""
    centred = planes - OPPONENT_OFFSET.to(planes)[:, None, None, None]
    return torch.einsum("ij,...jchw->...ichw", OPPONENT_INVERSE.to(planes), centred)


def check_noise_level(model: DenoisingVAE, sigma: float) -> None:
    """Refuse an image far noisier than the model was trained for."""
    top = model.config.noise.max_sigma
    if top and sigma > NOISE_MARGIN * top + 5:
        raise DataError(f"the image's noise (sigma ~{sigma:.1f} on the 0-255 scale) is far above "
                        f"what this model was trained for (up to {top:.1f}); the result would "
                        "be unreliable. Use or train a model for this noise level, or pass "
                        "force=True (CLI: --ignore-noise-level) to denoise anyway")


def _noise_sigma(model: DenoisingVAE, planes: np.ndarray | list[np.ndarray],
                 sigma: float | None) -> float:
    """The input's noise std on the 0-255 scale: as given, or estimated as the model's noise
    kind says (Rician: from the background of (H, W) planes, all on one scale)."""
    if sigma is not None:
        if not (np.isfinite(sigma) and sigma > 0):
            raise DataError(f"sigma must be a positive number (0-255 scale), got {sigma!r}")
        return float(sigma)
    if model.config.noise.kind == "rician":
        return 255.0 * estimate_rician_sigma(planes)
    return float(np.median([estimate_sigma(p) for p in planes]))


def _unbias(model: DenoisingVAE, t: torch.Tensor, sigma: float) -> torch.Tensor:
    """A noisy-only Rician model's output (the Rician mean of the signal) mapped to the signal
    (``noise.rician_unbias``); any other model's output as it is."""
    noise = model.config.noise
    if noise.kind != "rician" or noise.synthetic is not None:
        return t
    return torch.from_numpy(rician_unbias(t.numpy(), sigma / 255.0).astype(np.float32))


def _dihedral(t: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 flips and quarter turns of the image plane (the last two dims), or
    its inverse."""
    if not inverse:
        t = torch.rot90(t, k % 4, (-2, -1))
        return t.flip(-1) if k >= 4 else t
    t = t.flip(-1) if k >= 4 else t
    return torch.rot90(t, -(k % 4), (-2, -1))


def _denoise_planes(model: DenoisingVAE, x: torch.Tensor, samples: int, keep_samples: bool,
                    tile: int | None, overlap: int | None, opponent: bool,
                    progress: Callable[[int, int], None] | None,
                    ensemble: bool = False) -> torch.Tensor:
    """(3 [+ K], B, c, H, W): the estimate, the draws' first two moments and (on request) the
    K draws for the model's input x (B, c (2k + 1), H, W), tile by tile (None: the model's).
    ``ensemble``: each tile also run flipped and turned (8 ways), the estimates and moments
    averaged over the 8 after turning back (8 x the time); kept draws are the unturned run's."""
    device = next(model.parameters()).device
    tile = model.config.tile if tile is None else tile

    def once(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, draws = model.mean_and_draws(part.to(device), samples)
        mean, draws = mean.cpu(), draws.cpu()
        if opponent:  # (K, 3, 1, h, w): back to RGB before any statistics
            mean, draws = from_opponent(mean), from_opponent(draws)
        # (3, B, c, h, w): the estimate and the draws' first two moments (for the spread)
        if samples:
            moments = torch.stack([mean, draws.mean(0), draws.square().mean(0)])
        else:
            moments = torch.stack([mean, torch.zeros_like(mean), torch.zeros_like(mean)])
        return moments, draws

    def run(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        part = x[..., y0:y1, x0:x1]
        moments, draws = once(part)
        if ensemble:
            for k in range(1, 8):
                moments += _dihedral(once(_dihedral(part, k))[0], k, inverse=True)
            moments /= 8
        parts = [moments, draws] if keep_samples else [moments]
        return torch.cat(parts).flatten(0, 1)  # (N * B, c, h, w)

    out = tiled(run, x.shape[-2], x.shape[-1], tile, overlap, progress)
    return out.view(-1, x.shape[0], model.config.image_channels, *x.shape[-2:])


def _check_samples(model: DenoisingVAE, samples: int, keep_samples: bool) -> None:
    least = 0 if model.config.conditional else 1
    if not isinstance(samples, int) or samples < least:
        raise DataError(f"samples must be an integer >= {least} for this model, got {samples!r}")
    if keep_samples and samples < 1:
        raise DataError("keep_samples needs samples >= 1")


def _finish(model: DenoisingVAE, out: torch.Tensor, keep_samples: bool, sigma: float,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Estimate, spread and draws (unbiased for a Rician noisy-only model) from the moments."""
    mean, first, second = out[0], out[1], out[2]
    std = (second - first.square()).clamp_min(0).sqrt()
    draws = _unbias(model, out[3:], sigma).clamp(0, 1) if keep_samples else None
    return _unbias(model, mean, sigma).clamp(0, 1), std, draws


@torch.no_grad()
def denoise(image: Any, model: DenoisingVAE | str | os.PathLike | None = None, *,
            samples: int = 8, keep_samples: bool = False, sigma: float | None = None,
            tile: int | None = None, overlap: int | None = None, seed: int = 0,
            force: bool = False, progress: Callable[[int, int], None] | None = None,
            ensemble: bool = False) -> Denoised:
    """Denoise one image with ``samples`` posterior draws (see ``Denoised``). A conditional
    model (the bundled one) gives its estimate without draws: ``samples=0`` computes none
    (``std`` is then 0); other models average their draws, so need at least one.
    ``sigma`` (0-255 scale) is what the refusal check and a noisy-only Rician model's bias
    correction use; the blind models take their noise level from the image itself. ``tile``
    None: the model's own (``config.tile``, overlapping by a quarter). ``ensemble``: average
    the estimate over the 8 flips and quarter turns of the image (8 x the time; measured on MRI
    in docs/benchmarks.md). ``progress`` gets (tiles done, tiles) after each tile."""
    if not isinstance(model, DenoisingVAE):
        model = load_denoiser(model)
    _check_samples(model, samples, keep_samples)
    model = model.eval()
    shape = np.shape(image)
    x01, _ = as_float_image(image)
    sigma = _noise_sigma(model, [x01[..., c] for c in range(x01.shape[-1])], sigma)
    if not force:
        check_noise_level(model, sigma)
    x = to_planes(model, x01)  # (B, c, H, W)
    opponent = uses_opponent_planes(model, x01)
    if opponent:
        x = to_opponent(x)
    x = x.repeat(1, 2 * model.config.context_slices + 1, 1, 1)  # 2.5-D: no neighbours
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = _denoise_planes(model, x, samples, keep_samples, tile, overlap, opponent,
                              progress, ensemble)
    mean, std, draws = _finish(model, out, keep_samples, sigma)
    return Denoised(from_planes(mean, shape), from_planes(std, shape),
                    from_planes(draws, shape) if draws is not None else None, sigma)


@torch.no_grad()
def denoise_volume(volume: np.ndarray, model: DenoisingVAE | str | os.PathLike | None = None,
                   *, samples: int = 8, keep_samples: bool = False, sigma: float | None = None,
                   tile: int | None = None, overlap: int | None = None, seed: int = 0,
                   force: bool = False, progress: Callable[[int, int], None] | None = None,
                   ensemble: bool = False) -> Denoised:
    """Denoise a gray volume (S, H, W) ([0, 1] floats, all slices on one scale) slice by slice:
    a 2.5-D model sees each slice between its neighbours (repeated at the ends), a 2-D model
    the slice alone. One noise level for the whole volume (Rician models: from its background
    unless ``sigma``); the arrays of ``Denoised`` are (S, H, W), ``samples`` (K, S, H, W).
    Memory: the model runs on one slice stack at a time. ``progress`` gets (slices done,
    slices). ``model`` None: the bundled MRI denoiser. ``ensemble``: as for ``denoise``."""
    if not isinstance(model, DenoisingVAE):
        model = load_denoiser(model, medical=True)
    _check_samples(model, samples, keep_samples)
    model = model.eval()
    volume = np.asarray(volume)
    if volume.ndim != 3 or not volume.size or volume.dtype.kind != "f":
        raise DataError(f"a volume is (S, H, W) floats on the [0, 1] scale, got "
                        f"{volume.dtype} of shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise DataError("the volume holds NaN or infinite values")
    if model.config.image_channels != 1:
        raise DataError("this model denoises colour images; a volume needs a gray model")
    sigma = _noise_sigma(model, volume, sigma)
    if not force:
        check_noise_level(model, sigma)
    k, n = model.config.context_slices, volume.shape[0]
    mean = np.empty(volume.shape, np.float32)
    std = np.empty(volume.shape, np.float32)
    draws = np.empty((samples, *volume.shape), np.float32) if keep_samples else None
    with torch.random.fork_rng(devices=[]):
        for i in range(n):
            torch.manual_seed(seed + i)
            around = np.clip(np.arange(i - k, i + k + 1), 0, n - 1)
            x = torch.from_numpy(np.ascontiguousarray(volume[around], np.float32))[None]
            out = _denoise_planes(model, x, samples, keep_samples, tile, overlap, False, None,
                                  ensemble)
            m, sd, d = _finish(model, out, keep_samples, sigma)  # (B=1, 1, H, W) each
            mean[i], std[i] = m[0, 0].numpy(), sd[0, 0].numpy()
            if draws is not None:
                draws[:, i] = d[:, 0, 0].numpy()
            if progress is not None:
                progress(i + 1, n)
    return Denoised(mean, std, draws, sigma)
