"""Noise models for restoration: what the camera or scanner adds, written as p(x | s).

A denoising VAE (``clearvae.models.denoiser``) learns the clean signal s from noisy images x
alone; these models say how x scatters around s (all on the [0, 1] scale):

    gaussian          x = s + sigma n                       var = sigma^2
    poisson_gaussian  x = s + sqrt(a s + b) n  (Foi et al.,  var = a max(s, 0) + b
                      "Practical Poissonian-Gaussian noise modeling and fitting for
                      single-image raw-data", IEEE TIP 2008, its heteroscedastic Gaussian form)

and how to estimate their parameters from noisy images only: the finest diagonal Haar
coefficients of an image are almost pure noise, and the median of their magnitudes is a robust
estimate of its standard deviation (Donoho & Johnstone, "Ideal spatial adaptation by wavelet
shrinkage", Biometrika 1994). Strong texture leaks into them, so on detailed images the
estimate errs high by a few levels at sigma 5 and is close from about sigma 15 up.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from clearvae.config import Config
from clearvae.errors import ConfigError, DataError

MAD_TO_STD = 1 / 0.6744897501960817  # std of a normal = median(|x|) / 0.6745


@dataclasses.dataclass(frozen=True)
class NoiseConfig(Config):
    """How the noise of the training images is modelled (sigmas on the 0-255 scale).

    - ``synthetic: [lo, hi]``: the training images are clean and each gets Gaussian noise of a
      sigma drawn uniformly from [lo, hi] (kind must be gaussian);
    - ``sigma``: the images are noisy with this known Gaussian sigma;
    - neither: the images are noisy and the parameters (``sigma``, or ``a`` and ``b``) are
      estimated from them before training and stored in the model.
    """

    kind: Literal["gaussian", "poisson_gaussian"] = "gaussian"
    sigma: float | None = None
    a: float | None = None  # poisson_gaussian: var = a s + b on the [0, 1] scale
    b: float | None = None
    synthetic: tuple[float, float] | None = None

    def validate(self) -> None:
        if self.synthetic is not None:
            lo, hi = self.synthetic
            if self.kind != "gaussian" or not 0 < lo <= hi:
                raise ConfigError(f"noise.synthetic must be [lo, hi] with 0 < lo <= hi and "
                                  f"kind gaussian; got {list(self.synthetic)}, kind {self.kind}")
        if self.sigma is not None and self.sigma <= 0:
            raise ConfigError(f"noise.sigma must be > 0 (0-255 scale), got {self.sigma}")
        if (self.a is None) != (self.b is None):
            raise ConfigError("noise.a and noise.b go together: give both or neither")
        if self.a is not None and (self.a < 0 or self.b < 0 or self.a + self.b <= 0):
            raise ConfigError(f"noise.a and noise.b must be >= 0 and not both 0, got "
                              f"{self.a}, {self.b}")
        if self.kind == "gaussian" and self.a is not None:
            raise ConfigError("noise.a and noise.b are for kind poisson_gaussian; gaussian "
                              "noise takes sigma")

    @property
    def known(self) -> bool:
        """Whether training can start without estimating parameters from the data."""
        if self.kind == "gaussian":
            return self.synthetic is not None or self.sigma is not None
        return self.a is not None

    @property
    def max_sigma(self) -> float:
        """The largest noise std (0-255 scale) the model was trained for."""
        if self.synthetic is not None:
            return self.synthetic[1]
        if self.kind == "gaussian":
            return float(self.sigma or 0.0)
        return 255.0 * math.sqrt((self.a or 0.0) + (self.b or 0.0))  # at s = 1


def noise_log_prob(noise: NoiseConfig, x: Tensor, s: Tensor,
                   sigma: Tensor | None = None) -> Tensor:
    """(B,) log p(x | s) summed over pixels; x, s (B, C, H, W) on the [0, 1] scale.

    ``sigma`` (B,) overrides the configured Gaussian std per image ([0, 1] scale), as training
    with synthetic noise of a random level needs.
    """
    var = noise_variance(noise, s, sigma)
    lp = -0.5 * ((x - s).square() / var + var.log() + math.log(2 * math.pi))
    return lp.flatten(1).sum(1)


def noise_variance(noise: NoiseConfig, s: Tensor, sigma: Tensor | None = None) -> Tensor:
    """(B, C, H, W) variance of the noise around the clean signal s (B, C, H, W), [0, 1] scale;
    ``sigma`` (B,) as in ``noise_log_prob``."""
    if noise.kind == "gaussian":
        if sigma is None:
            if noise.sigma is None:
                raise ConfigError("noise.sigma is not set: estimate it first (training does)")
            sigma = torch.full((s.shape[0],), noise.sigma / 255.0, device=s.device)
        return sigma.square()[:, None, None, None].expand_as(s)
    return noise.a * s.clamp_min(0.0) + noise.b


def _diagonal_haar(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finest diagonal Haar coefficients and the 2x2 means of a (H, W) image, both (H/2, W/2).

    The coefficient (a - b - c + d) / 2 of pure white noise has the noise's own std."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    a, b = image[0:h:2, 0:w:2], image[0:h:2, 1:w:2]
    c, d = image[1:h:2, 0:w:2], image[1:h:2, 1:w:2]
    return (a - b - c + d) / 2, (a + b + c + d) / 4


def _as_planes(image: np.ndarray) -> list[np.ndarray]:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or min(a.shape[:2]) < 8:
        raise DataError(f"noise estimation needs an image of at least 8x8 pixels as (H, W) or "
                        f"(H, W, C); got shape {tuple(np.shape(image))}")
    return [a[..., c] for c in range(a.shape[-1])]


def estimate_sigma(image: np.ndarray) -> float:
    """Gaussian noise std of one image, on the 0-255 scale, from a [0, 1] (H, W[, C]) array
    (channels: the mean of their estimates)."""
    planes = _as_planes(image)
    return float(np.mean([np.median(np.abs(_diagonal_haar(p)[0])) * MAD_TO_STD * 255.0
                          for p in planes]))


def estimate_poisson_gaussian(images: list[np.ndarray], bins: int = 16) -> tuple[float, float]:
    """Fit var = a s + b ([0, 1] scale) over images of the same sensor.

    Pixels are binned by their local 2x2 mean; in each bin the noise variance is the squared
    robust std of the diagonal Haar coefficients; a and b come from a least-squares line
    through the bins, weighted by their pixel counts, and are clipped at 0.
    """
    coeffs, means = [], []
    for image in images:
        for plane in _as_planes(image):
            hh, mean = _diagonal_haar(plane)
            coeffs.append(hh.ravel())
            means.append(mean.ravel())
    hh, mean = np.concatenate(coeffs), np.concatenate(means)
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    level, var, weight = [], [], []
    for i in range(len(edges) - 1):
        inside = which == i
        if inside.sum() < 50:
            continue
        level.append(mean[inside].mean())
        var.append((np.median(np.abs(hh[inside])) * MAD_TO_STD) ** 2)
        weight.append(inside.sum())
    if len(level) < 2:
        raise DataError("too few distinct intensity levels to fit a Poisson-Gaussian noise "
                        "model: give sigma (Gaussian noise) or noise.a and noise.b")
    a, b = np.polyfit(np.array(level), np.array(var), 1, w=np.sqrt(np.array(weight)))
    a, b = max(float(a), 0.0), max(float(b), 0.0)
    if a + b <= 0:
        b = float(np.min(var))
    return a, b


def fit_noise(noise: NoiseConfig, images: list[np.ndarray]) -> NoiseConfig:
    """``noise`` with its missing parameters estimated from noisy [0, 1] images."""
    if noise.known:
        return noise
    if not images:
        raise DataError("no images to estimate the noise from")
    if noise.kind == "gaussian":
        return dataclasses.replace(noise, sigma=float(np.median([estimate_sigma(i)
                                                                 for i in images])))
    a, b = estimate_poisson_gaussian(images)
    return dataclasses.replace(noise, a=a, b=b)


def add_gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``image`` ([0, 1]) plus Gaussian noise of std ``sigma`` (0-255 scale), not clipped."""
    rng = np.random.default_rng(seed)
    return (image + rng.standard_normal(np.shape(image)) * sigma / 255.0).astype(np.float32)
