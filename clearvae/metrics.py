"""Image quality metrics on tensors in [0, 1] of shape (B, C, H, W)."""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim
from torch import Tensor


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> Tensor:
    """(B,) peak signal-to-noise ratio in dB (capped at 100 dB for identical images)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(peak**2 / mse.clamp(min=1e-10))).float()


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """(B,) SSIM (Wang et al. 2004), Gaussian window of 11 (smaller for tiny images)."""
    win = min(11, min(a.shape[-2:]) - (1 - min(a.shape[-2:]) % 2))
    return _ssim(a.float(), b.float(), data_range=1.0, size_average=False, win_size=max(win, 1))


def ms_ssim(a: Tensor, b: Tensor) -> Tensor:
    """(B,) multi-scale SSIM (Wang et al. 2003); images need at least 161 pixels a side."""
    return _ms_ssim(a.float(), b.float(), data_range=1.0, size_average=False)
