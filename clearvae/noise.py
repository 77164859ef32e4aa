"""Noise models for restoration: what the camera or scanner adds, written as p(x | s).

A denoising VAE (``clearvae.models.denoiser``) learns the clean signal s from noisy images x
alone; these models say how x scatters around s (all on the [0, 1] scale):

    gaussian          x = s + sigma n                       var = sigma^2
    poisson_gaussian  x = s + sqrt(a s + b) n  (Foi et al.,  var = a max(s, 0) + b
                      "Practical Poissonian-Gaussian noise modeling and fitting for
                      single-image raw-data", IEEE TIP 2008, its heteroscedastic Gaussian form)
    rician            x = |s + sigma (n1 + i n2)|      magnitude MRI (Gudbjartsson & Patz,
                      "The Rician distribution of noisy MRI data", MRM 1995): close to
                      Gaussian of std sigma where s >> sigma, Rayleigh (mean 1.25 sigma, not 0)
                      where s = 0, so that the noise also lifts the signal, most at low SNR

and how to estimate their parameters from noisy images only. Rician sigma comes from the image
background (air, s = 0), as the MRI literature does (Aja-Fernandez, Alberola-Lopez, Westin,
"Noise and signal estimation in magnitude MRI and Rician distributed images: a LMMSE approach",
IEEE TIP 2008): there the local mean of x^2 over a window is 2 sigma^2, and it is the mode of
the local means over the image because the background is its largest uniform region
(``estimate_rician_sigma``). Otherwise the finest diagonal Haar
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

    - ``synthetic: [lo, hi]``: the training images are clean and each gets Gaussian (or Rician)
      noise of a sigma drawn uniformly from [lo, hi] (kind gaussian or rician);
    - ``sigma``: the images are noisy with this known Gaussian (Rician: of the underlying
      complex Gaussian) sigma;
    - neither: the images are noisy and the parameters (``sigma``, or ``a`` and ``b``) are
      estimated from them before training and stored in the model.
    """

    kind: Literal["gaussian", "poisson_gaussian", "rician"] = "gaussian"
    sigma: float | None = None
    a: float | None = None  # poisson_gaussian: var = a s + b on the [0, 1] scale
    b: float | None = None
    synthetic: tuple[float, float] | None = None

    def validate(self) -> None:
        if self.synthetic is not None:
            lo, hi = self.synthetic
            if self.kind == "poisson_gaussian" or not 0 < lo <= hi:
                raise ConfigError(f"noise.synthetic must be [lo, hi] with 0 < lo <= hi and "
                                  f"kind gaussian or rician; got {list(self.synthetic)}, kind "
                                  f"{self.kind}")
        if self.sigma is not None and self.sigma <= 0:
            raise ConfigError(f"noise.sigma must be > 0 (0-255 scale), got {self.sigma}")
        if (self.a is None) != (self.b is None):
            raise ConfigError("noise.a and noise.b go together: give both or neither")
        if self.a is not None and (self.a < 0 or self.b < 0 or self.a + self.b <= 0):
            raise ConfigError(f"noise.a and noise.b must be >= 0 and not both 0, got "
                              f"{self.a}, {self.b}")
        if self.kind != "poisson_gaussian" and self.a is not None:
            raise ConfigError(f"noise.a and noise.b are for kind poisson_gaussian; {self.kind} "
                              "noise takes sigma")
        if self.kind == "poisson_gaussian" and self.sigma is not None:
            raise ConfigError("noise.sigma is for kind gaussian or rician; poisson_gaussian "
                              "noise takes a and b")

    @property
    def known(self) -> bool:
        """Whether training can start without estimating parameters from the data."""
        if self.kind != "poisson_gaussian":
            return self.synthetic is not None or self.sigma is not None
        return self.a is not None

    @property
    def max_sigma(self) -> float:
        """The largest noise std (0-255 scale) the model was trained for."""
        if self.synthetic is not None:
            return self.synthetic[1]
        if self.kind != "poisson_gaussian":
            return float(self.sigma or 0.0)
        return 255.0 * math.sqrt((self.a or 0.0) + (self.b or 0.0))  # at s = 1


def noise_log_prob(noise: NoiseConfig, x: Tensor, s: Tensor,
                   sigma: Tensor | None = None) -> Tensor:
    """(B,) log p(x | s) summed over pixels; x, s (B, C, H, W) on the [0, 1] scale.

    ``sigma`` (B,) overrides the configured Gaussian std per image ([0, 1] scale), as training
    with synthetic noise of a random level needs. Rician: the exact density
    x / sigma^2 exp(-(x^2 + s^2) / (2 sigma^2)) I0(x s / sigma^2) of a magnitude x >= 0.
    """
    var = noise_variance(noise, s, sigma)
    if noise.kind == "rician":
        x, s = x.clamp_min(1e-12), s.clamp_min(0.0)
        z = x * s / var
        log_i0 = torch.special.i0e(z).log() + z  # log I0(z), stable for large z
        lp = x.log() - var.log() - (x.square() + s.square()) / (2 * var) + log_i0
        return lp.flatten(1).sum(1)
    lp = -0.5 * ((x - s).square() / var + var.log() + math.log(2 * math.pi))
    return lp.flatten(1).sum(1)


def noise_variance(noise: NoiseConfig, s: Tensor, sigma: Tensor | None = None) -> Tensor:
    """(B, C, H, W) variance of the noise around the clean signal s (B, C, H, W), [0, 1] scale;
    ``sigma`` (B,) as in ``noise_log_prob``. Rician: sigma^2, the variance of each Gaussian
    component (and of x where s >> sigma)."""
    if noise.kind != "poisson_gaussian":
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
    if noise.kind == "rician":  # the median over the images that show background
        sigmas = []
        for image in images:
            try:
                sigmas.append(estimate_rician_sigma(_as_planes(image)))
            except DataError:
                continue
        if not sigmas:
            raise DataError(f"none of the {len(images)} images shows background (air) to "
                            "estimate the Rician noise from: give model.noise.sigma")
        return dataclasses.replace(noise, sigma=255.0 * float(np.median(sigmas)))
    a, b = estimate_poisson_gaussian(images)
    return dataclasses.replace(noise, a=a, b=b)


def add_gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``image`` ([0, 1]) plus Gaussian noise of std ``sigma`` (0-255 scale), not clipped."""
    rng = np.random.default_rng(seed)
    return (image + rng.standard_normal(np.shape(image)) * sigma / 255.0).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """|image + sigma (n1 + i n2)|: magnitude MRI noise of ``sigma`` (on the image's own scale)
    over a non-negative ``image``, as float32."""
    rng = np.random.default_rng(seed)
    real = np.asarray(image, np.float64) + sigma * rng.standard_normal(np.shape(image))
    imag = sigma * rng.standard_normal(np.shape(image))
    return np.hypot(real, imag).astype(np.float32)


def rician_noise(s: Tensor, sigma: Tensor) -> Tensor:
    """Rician-noisy magnitudes of clean s (B, C, H, W) >= 0 with std sigma (B,) per image."""
    sd = sigma[:, None, None, None]
    return torch.hypot(s + sd * torch.randn_like(s), sd * torch.randn_like(s))


# --- Rician sigma from the background, and the Rician bias ----------------------------------

WINDOW = 7  # local moments over 7x7 windows: 49 values, so 2 sigma^2 to within about 14 %
RAYLEIGH_RATIO = math.pi / 4  # E[x]^2 / E[x^2] of Rayleigh-distributed background
_BACKGROUND_RATIO = 0.83  # below: Rayleigh-like (Rician at SNR 2 gives 0.86, tissue ~1)
_MIN_BACKGROUND = 0.02  # the background must cover 2 % of the windows


def _box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Means over the k x k windows lying inside a (H, W) array: (H - k + 1, W - k + 1)."""
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def estimate_rician_sigma(planes: list[np.ndarray] | np.ndarray) -> float:
    """Rician noise sigma of magnitude images (one (H, W) plane, a list of them or an (S, H, W)
    volume, all on one scale) from their background, on that scale.

    The local second moments m2 of 7x7 windows (2 sigma^2 in the background) are histogrammed
    on a log scale over all planes; their mode, checked to be Rayleigh-like background
    (E[x]^2 / E[x^2] near pi / 4, not tissue), covering at least 2 % of the windows and with
    few windows darker than it, gives
    sigma^2 = median(m2 near the mode) / 2. Raises ``DataError`` when there is no such
    background (a crop inside the body, a zero-filled or masked background).
    """
    if isinstance(planes, np.ndarray) and planes.ndim == 2:
        planes = [planes]
    m1s, m2s = [], []
    for plane in planes:
        x = np.asarray(plane, np.float64)
        if x.ndim != 2 or min(x.shape) < WINDOW:
            raise DataError(f"Rician noise estimation needs planes of at least {WINDOW}x{WINDOW}"
                            f" pixels, got shape {x.shape}")
        m1s.append(_box_mean(x, WINDOW).ravel())
        m2s.append(_box_mean(x * x, WINDOW).ravel())
    m1, m2 = np.concatenate(m1s), np.concatenate(m2s)
    positive = m2 > 0
    if positive.mean() < _MIN_BACKGROUND:
        raise DataError("the image is (almost) all zero: there is no noise to estimate; give the "
                        "noise level (--sigma)")
    logs = np.log(m2[positive])
    lo, hi = np.quantile(logs, [0.001, 0.999])
    counts, edges = np.histogram(logs, bins=256, range=(lo, max(hi, lo + 1e-6)))
    counts = np.convolve(counts, np.ones(5) / 5, mode="same")  # smooth out single-bin spikes
    mode = math.exp(0.5 * (edges[counts.argmax()] + edges[counts.argmax() + 1]))
    near = positive & (m2 > mode / 1.6) & (m2 < mode * 1.6)
    ratio = float(np.median(m1[near] ** 2 / m2[near])) if near.any() else 1.0
    darker = positive & (m2 <= mode / 1.6)  # background is the darkest region: little below it
    if near.mean() < _MIN_BACKGROUND or ratio > _BACKGROUND_RATIO or \
            darker.sum() > 0.5 * near.sum():
        raise DataError("found no background (air) to estimate the Rician noise from: the "
                        "most common local level looks like tissue (E[x]^2/E[x^2] = "
                        f"{ratio:.2f}, background gives {RAYLEIGH_RATIO:.2f}); give the noise "
                        "level (--sigma)")
    return math.sqrt(float(np.median(m2[near])) / 2.0)


def rician_mean(s: np.ndarray, sigma: float) -> np.ndarray:
    """E[x] of Rician magnitudes of signal s >= 0 and noise sigma > 0 (same scale):
    sigma sqrt(pi / 2) L_1/2(-s^2 / (2 sigma^2)), through exponentially scaled Bessel
    functions so that high SNR does not overflow."""
    t = torch.from_numpy(np.square(np.asarray(s, np.float64) / sigma) / 2)  # s^2 / (2 sigma^2)
    # L_1/2(-t) = e^{-t/2} ((1 + t) I0(t/2) + t I1(t/2)); i0e(u) = e^{-u} I0(u)
    laguerre = (1 + t) * torch.special.i0e(t / 2) + t * torch.special.i1e(t / 2)
    return sigma * math.sqrt(math.pi / 2) * laguerre.numpy()


def _rician_moments() -> tuple[Tensor, Tensor]:
    """E[x] / sigma and Var[x] / sigma^2 of Rician magnitudes on a grid of SNR s / sigma from
    0 to 40 (float64), both increasing in s: Var[x] = s^2 + 2 sigma^2 - E[x]^2."""
    snr = np.linspace(0, 40, 2001)
    mean = rician_mean(snr, 1.0)
    return torch.from_numpy(mean), torch.from_numpy(snr**2 + 2 - mean**2)


_MOMENTS = _rician_moments()


def rician_variance(m: Tensor, sigma: Tensor) -> Tensor:
    """Var[x] of Rician magnitudes whose mean E[x] is ``m`` (B, C, H, W), noise ``sigma``
    (B,): 0.43 sigma^2 in the background (Rayleigh: (2 - pi / 2) sigma^2), rising to sigma^2
    where the signal is well above the noise. What recorruption must use as D^2 for Rician
    data: with sigma^2 everywhere, its pairs are biased in the background by up to 2 sigma
    (docs/benchmarks.md)."""
    sd = sigma[:, None, None, None]
    mean, var = (t.to(m.device) for t in _MOMENTS)
    r = (m / sd).double().clamp(float(mean[0]), float(mean[-1]))
    i = torch.searchsorted(mean, r.contiguous()).clamp(1, len(mean) - 1)
    w = (r - mean[i - 1]) / (mean[i] - mean[i - 1])
    return ((var[i - 1] + w * (var[i] - var[i - 1])) * sd.double().square()).to(m.dtype)


def rician_unbias(m: np.ndarray, sigma: float) -> np.ndarray:
    """The signal s >= 0 whose Rician mean (``rician_mean``) is m: the inverse of the bias that
    Rician noise adds to a (denoised) magnitude estimate; 0 where m is below the mean of pure
    noise (1.2533 sigma)."""
    if sigma <= 0:
        return np.asarray(m, np.float64).clip(0)
    snr = np.concatenate([np.linspace(0, 8, 801), np.geomspace(8.01, 1e4, 400)])
    means = rician_mean(snr * sigma, sigma)  # increasing in s
    m = np.asarray(m, np.float64)
    far = np.sqrt(np.maximum(m * m - sigma * sigma, 0))  # beyond the table: E[x]^2 ~ s^2 + sigma^2
    return np.where(m > means[-1], far, np.interp(m, means, snr * sigma, left=0.0))
