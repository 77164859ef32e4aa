"""Recorruption pairs under Rician noise, checked where the answer is known.

    python benchmarks/rician_recorruption.py [--pixels 4000000] [--alpha 0.75]

A noisy-only denoiser trained on recorrupted pairs (``clearvae.models.denoiser.recorrupt``)
learns E[target | input]; for it to be the denoiser wanted, that must equal E[m | input],
m = E[y | s] the Rician mean of the clean signal s (which ``noise.rician_unbias`` maps back to
s). This draws pixels whose signal is 0 (air) half the time and uniform in [0.5, 10] sigma
otherwise, Rician magnitudes y of them, and the pair (y + alpha D z, y - D z / alpha) for three
choices of D^2: sigma^2 (Gaussian noise of the same sigma), the Rician variance at the true
mean m (an oracle), and the Rician variance at a noisy local mean, m plus noise of a 3 x 3
average (what training computes). E[. | input] is estimated in 200 quantile bins of the input.
Printed: the MSE against m of the predictor that the pairs train, that of the best predictor
E[m | input] of the same input, and the bias E[target | input] - E[m | input] in the five
lowest bins (air).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from clearvae.noise import rician_mean, rician_variance


def binned(u: np.ndarray, values: np.ndarray, bins: int = 200) -> np.ndarray:
    """E[values | u] in quantile bins of u, per pixel, and the bin means."""
    edges = np.quantile(u, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, u) - 1, 0, bins - 1)
    means = np.bincount(idx, values, bins) / np.bincount(idx, minlength=bins)
    return means[idx], means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=4_000_000)
    p.add_argument("--alpha", type=float, default=0.75)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n, sigma, alpha = args.pixels, 1.0, args.alpha
    s = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.5, 10, n))
    y = np.abs(s + sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n)))
    m = rician_mean(s, sigma)
    var = s**2 + 2 * sigma**2 - m**2

    def at_mean(level: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(level)[None, None, None]
        return rician_variance(t, torch.tensor([sigma], dtype=torch.float64))[0, 0, 0].numpy()

    z = rng.standard_normal(n)
    local = m + np.sqrt(var / 9) * rng.standard_normal(n)
    for name, d2 in (("D^2 = sigma^2 (as Gaussian)", np.full(n, sigma**2)),
                     ("D^2 = Rician variance at the true mean", at_mean(m)),
                     ("D^2 = Rician variance at a 3x3 local mean", at_mean(local))):
        d = np.sqrt(d2)
        u, target = y + alpha * d * z, y - d * z / alpha
        trained, trained_bins = binned(u, target)
        best, best_bins = binned(u, m)
        print(f"{name:44s} MSE of the trained predictor {np.mean((trained - m) ** 2):.4f} "
              f"sigma^2, of the best {np.mean((best - m) ** 2):.4f}; bias in the lowest bins "
              f"{np.round((trained_bins - best_bins)[:5], 2).tolist()} sigma")


if __name__ == "__main__":
    main()
