"""Bjøntegaard delta rate and delta PSNR between two rate-distortion curves.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", ITU-T SG16
VCEG-M33, 2001: express log-rate as a function of PSNR for each curve, integrate both over
the PSNR interval they share, and read the mean gap as a rate ratio::

    BD-rate = 10 ** (mean over [p_lo, p_hi] of  log10 R_B(p) - log10 R_A(p)) - 1   (in %)

Bjøntegaard fitted a cubic polynomial to the points (``method="cubic"``); a cubic through
points that bend oddly can swing far between them, so the JCT-VC / JVET common-test-conditions
spreadsheets (and FAU's ``bjontegaard`` package, which matches them) moved to piecewise cubic
Hermite interpolation, PCHIP (Fritsch & Carlson 1980), which never overshoots the data. PCHIP
is the default here, via ``scipy.interpolate.PchipInterpolator`` and its exact integral.
BD-PSNR swaps the axes: PSNR as a function of log-rate, mean gap in dB.

Negative BD-rate: B needs fewer bits than anchor A for the same PSNR (B is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator

Method = Literal["pchip", "cubic"]
METHODS: tuple[str, ...] = ("pchip", "cubic")


def bd_rate(rate_a: Sequence[float], psnr_a: Sequence[float], rate_b: Sequence[float],
            psnr_b: Sequence[float], method: Method = "pchip") -> float:
    """Mean rate difference of B against anchor A at equal PSNR, in percent."""
    la, pa = _curve(rate_a, psnr_a, "A", method)
    lb, pb = _curve(rate_b, psnr_b, "B", method)
    lo, hi = _overlap(pa, pb, "PSNR", "dB")
    gap = _mean(pb, lb, lo, hi, method) - _mean(pa, la, lo, hi, method)
    return float((10**gap - 1) * 100)


def bd_psnr(rate_a: Sequence[float], psnr_a: Sequence[float], rate_b: Sequence[float],
            psnr_b: Sequence[float], method: Method = "pchip") -> float:
    """Mean PSNR difference of B against anchor A at equal rate, in dB."""
    la, pa = _curve(rate_a, psnr_a, "A", method)
    lb, pb = _curve(rate_b, psnr_b, "B", method)
    lo, hi = _overlap(la, lb, "log10 rate", "")
    return float(_mean(lb, pb, lo, hi, method) - _mean(la, pa, lo, hi, method))


def _curve(rate: Sequence[float], psnr: Sequence[float], name: str,
           method: str) -> tuple[np.ndarray, np.ndarray]:
    """(log10 rate, PSNR) sorted by rate; raises unless PSNR strictly rises with rate."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    r = np.asarray(rate, dtype=np.float64)
    p = np.asarray(psnr, dtype=np.float64)
    if r.ndim != 1 or r.shape != p.shape:
        raise ValueError(f"curve {name}: rates and PSNRs must be 1-D and of one length, got "
                         f"shapes {r.shape} and {p.shape}")
    need = 4 if method == "cubic" else 2
    if len(r) < need:
        raise ValueError(f"curve {name}: {method} needs at least {need} points, got {len(r)}")
    if not (np.isfinite(r).all() and np.isfinite(p).all() and (r > 0).all()):
        raise ValueError(f"curve {name}: rates must be finite and positive and PSNRs finite, "
                         f"got rates {r.tolist()} and PSNRs {p.tolist()}")
    order = np.argsort(r)
    r, p = r[order], p[order]
    if not (np.diff(r) > 0).all() or not (np.diff(p) > 0).all():
        # A point that costs more bits for no more quality makes log-rate(PSNR) ill-defined.
        raise ValueError(f"curve {name} is not strictly monotone (PSNR must rise with rate): "
                         f"rates {r.round(4).tolist()}, PSNRs {p.round(2).tolist()}")
    return np.log10(r), p


def _overlap(a: np.ndarray, b: np.ndarray, what: str, unit: str) -> tuple[float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if not lo < hi:
        raise ValueError(f"the curves share no {what} interval (A spans {a.min():.4g}.."
                         f"{a.max():.4g}{unit}, B {b.min():.4g}..{b.max():.4g}{unit}): "
                         "measure more qualities so that their ranges overlap")
    return float(lo), float(hi)


def _mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Mean of the curve y(x) over [lo, hi] (x strictly increasing)."""
    if method == "pchip":
        integral = PchipInterpolator(x, y).integrate(lo, hi)
    else:
        poly = np.polynomial.Polynomial.fit(x, y, 3).integ()
        integral = poly(hi) - poly(lo)
    return float(integral) / (hi - lo)
