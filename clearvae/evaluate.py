"""Held-out evaluation of a VAE: ELBO, importance-weighted likelihood bound, PSNR and SSIM."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from clearvae.metrics import psnr, ssim
from clearvae.models import VAE


def _batches(dataset: Any, limit: int | None, batch_size: int) -> Iterator[Tensor]:
    """Consecutive images stacked into batches; a change of image size starts a new batch."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    batch: list[Tensor] = []
    for i in range(n):
        x = dataset[i]
        if batch and (len(batch) == batch_size or x.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(x)
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def evaluate(model: VAE, dataset: Any, *, limit: int | None = None, batch_size: int = 100,
             iw_samples: int = 1000, iw_chunk: int = 50, seed: int = 0,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    """Metrics over the first ``limit`` images of ``dataset``, as a JSON-able dict.

    Likelihoods are in nats per image and bits per dimension; Bernoulli models see the data
    binarized once with ``seed`` (the same binarization for every estimate). For continuous
    likelihoods, bits per dim are on the 8-bit scale (log 256 per dimension added).
    ``iw_samples=0`` skips the importance-weighted bound.
    """
    model = model.eval().to(device)
    lik = model.likelihood
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sums: dict[str, float] = {"elbo": 0.0, "iw": 0.0, "psnr": 0.0, "ssim": 0.0, "dims": 0.0}
    count = 0
    for x in _batches(dataset, limit, batch_size):
        target = lik.target(x, gen).to(device)
        x = x.to(device)
        sums["elbo"] += float(model(x, target).elbo.sum())
        if iw_samples:
            sums["iw"] += float(model.iw_log_likelihood(x, iw_samples, iw_chunk, target).sum())
        recon = model.reconstruct(x)
        sums["psnr"] += float(psnr(recon, x).sum())
        sums["ssim"] += float(ssim(recon, x).sum())
        sums["dims"] += x[0].numel() * x.shape[0]
        count += x.shape[0]
    if count == 0:
        raise ValueError("no images to evaluate")
    dims = sums["dims"] / count
    offset = lik.nats_offset_per_dim * dims

    def bpd(nats: float) -> float:
        return nats / (dims * math.log(2))

    result: dict[str, Any] = {
        "images": count, "likelihood": lik.name, "dims_per_image": dims,
        "nelbo_nats": -sums["elbo"] / count + offset,
        "psnr_db": sums["psnr"] / count, "ssim": sums["ssim"] / count,
    }
    result["nelbo_bpd"] = bpd(result["nelbo_nats"])
    if iw_samples:
        result["iw_samples"] = iw_samples
        result["nll_nats"] = -sums["iw"] / count + offset
        result["nll_bpd"] = bpd(result["nll_nats"])
    return result


def evaluate_spec(model: VAE, spec: str, *, size: tuple[int, int] | None = None,
                  mode: str = "crop", channels: int | None = None, split: str = "test",
                  **kwargs: Any) -> dict[str, Any]:
    """``evaluate`` on a dataset named like ``--data`` (folder, IDX folder, CSV ...)."""
    from clearvae.data import open_dataset

    channels = channels or model.config.image_channels
    dataset = open_dataset(spec, split, size=size, mode=mode if size else "full",
                           channels=channels)
    return {"data": spec, **evaluate(model, dataset, **kwargs)}
