"""Restoration: denoising and inpainting with VAEs (``denoise``, ``inpaint``), the noise models
they learn through (``noise``), and training presets for denoisers (``presets``)."""

from clearvae.noise import (
    NoiseConfig,
    add_rician_noise,
    estimate_poisson_gaussian,
    estimate_rician_sigma,
    estimate_sigma,
    rician_unbias,
)
from clearvae.restore.denoise import (
    Denoised,
    default_denoiser_path,
    denoise,
    denoise_volume,
    load_denoiser,
)
from clearvae.restore.fit import fit_unsupervised
from clearvae.restore.inpaint import Inpainted, inpaint

__all__ = [
    "Denoised", "Inpainted", "NoiseConfig", "add_rician_noise", "default_denoiser_path",
    "denoise", "denoise_volume", "estimate_poisson_gaussian", "estimate_rician_sigma",
    "estimate_sigma", "fit_unsupervised", "inpaint", "load_denoiser", "rician_unbias",
]
