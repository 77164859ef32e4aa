"""Restoration: denoising and inpainting with VAEs (``denoise``, ``inpaint``), the noise models
they learn through (``noise``), and training presets for denoisers (``presets``)."""

from clearvae.noise import NoiseConfig, estimate_poisson_gaussian, estimate_sigma
from clearvae.restore.denoise import Denoised, default_denoiser_path, denoise, load_denoiser
from clearvae.restore.fit import fit_unsupervised
from clearvae.restore.inpaint import Inpainted, inpaint

__all__ = [
    "Denoised", "Inpainted", "NoiseConfig", "default_denoiser_path", "denoise",
    "estimate_poisson_gaussian", "estimate_sigma", "fit_unsupervised", "inpaint",
    "load_denoiser",
]
