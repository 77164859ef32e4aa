"""Coding tables: everything the decoder needs besides the float networks, exactly reproducible.

Built once from a trained model (``build_tables``) and stored in its model file: the integer
frequency tables of z (one per channel) and y (one per scale index), the float64 gains of
every quality step, the integer networks that choose y's tables, and for gray models the
exact decoder and residual tables of the bounded-error modes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clearvae.codec import coder
from clearvae.codec.container import QUALITY_STEPS
from clearvae.codec.context import calibration_inputs
from clearvae.codec.entropy_models import LOG_STEP, SCALE_LEVELS, SCALES
from clearvae.codec.exact import ExactDecoder, build_exact
from clearvae.codec.integer import IntegerNetwork, quantize_network
from clearvae.codec.model import HyperpriorCodec, interpolated

Y_TAIL_SIGMAS = 6.0  # y tables cover +-6 sigma (tail mass 2e-9); beyond: escape codes


@dataclass
class CodingTables:
    """Everything the decoder needs besides the float networks, all exactly reproducible."""

    z: coder.Tables  # one table per z channel
    y: coder.Tables  # one table per scale index
    median: np.ndarray  # (N,) float64
    inverse_gain_z: np.ndarray  # (R, N) float64, R = (Q - 1) * QUALITY_STEPS + 1 quality steps
    index_offset: np.ndarray  # (R, M) int64: log(gain_y) in scale-table steps, rounded
    scale_head: IntegerNetwork
    context: list[IntegerNetwork]  # the scale residual of slices 1..S-1 (none without context)
    # gray models: the exact decoder and the residual's tables of the bounded-error modes
    exact: ExactDecoder | None = None
    residual: coder.Tables | None = None

    def state(self) -> dict[str, Tensor]:
        out = {f"z.{k}": torch.from_numpy(v) for k, v in _tables_state(self.z).items()}
        out |= {f"y.{k}": torch.from_numpy(v) for k, v in _tables_state(self.y).items()}
        out["median"] = torch.from_numpy(self.median)
        out["inverse_gain_z"] = torch.from_numpy(self.inverse_gain_z)
        out["index_offset"] = torch.from_numpy(self.index_offset)
        out |= {f"scale_head.{k}": v for k, v in self.scale_head.state().items()}
        for i, net in enumerate(self.context):
            out |= {f"context.{i}.{k}": v for k, v in net.state().items()}
        if self.exact is not None:
            out |= {f"exact.{k}": v for k, v in self.exact.state().items()}
        if self.residual is not None:
            out |= {f"residual.{k}": torch.from_numpy(v)
                    for k, v in _tables_state(self.residual).items()}
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> CodingTables:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        def tables(prefix: str) -> coder.Tables:
            t = {k: v.numpy() for k, v in part(prefix).items()}
            return coder.Tables(t["freqs"].astype(np.int64), t["offsets"], t["lengths"])

        slices = {int(k.split(".")[1]) for k in state if k.startswith("context.")}
        context = [IntegerNetwork.from_state(part(f"context.{i}.")) for i in range(len(slices))]
        exact = ExactDecoder.from_state(part("exact.")) if part("exact.") else None
        residual = tables("residual.") if part("residual.") else None
        return cls(tables("z."), tables("y."), state["median"].numpy(),
                   state["inverse_gain_z"].numpy(), state["index_offset"].numpy(),
                   IntegerNetwork.from_state(part("scale_head.")), context, exact, residual)


def _tables_state(t: coder.Tables) -> dict[str, np.ndarray]:
    return {"freqs": t.freqs.astype(np.int32), "offsets": t.offsets, "lengths": t.lengths}


@torch.no_grad()
def build_tables(model: HyperpriorCodec, seed: int = 0) -> CodingTables:
    """Integer tables from a trained model (run once, then stored in the model file)."""
    model = model.eval()
    prior = copy.deepcopy(model.z_prior).float()
    prior.fit_quantiles()
    lower, median, upper = prior.quantile_table().double().unbind(1)
    pmfs, offsets = [], []
    for c in range(len(median)):
        lo = math.floor(lower[c] - median[c])
        hi = math.ceil(upper[c] - median[c])
        values = torch.arange(lo, hi + 1, dtype=torch.float32) + median[c].float()
        p = prior.likelihood(values.view(1, 1, 1, -1).expand(1, len(median), 1, -1).contiguous())
        pmfs.append(p[0, c, 0].double().numpy())
        offsets.append(lo)
    z_tables = coder.Tables.from_pmfs(pmfs, np.array(offsets))

    y_pmfs, y_offsets = [], []
    for sigma in SCALES.tolist():
        r = math.ceil(Y_TAIL_SIGMAS * sigma) + 1
        v = torch.arange(-r, r + 1, dtype=torch.float64)
        cdf = 0.5 * torch.erfc(-(v + 0.5) / (sigma * math.sqrt(2)))
        cdf_lo = 0.5 * torch.erfc(-(v - 0.5) / (sigma * math.sqrt(2)))
        y_pmfs.append((cdf - cdf_lo).numpy())
        y_offsets.append(-r)
    y_tables = coder.Tables.from_pmfs(y_pmfs, np.array(y_offsets))

    steps = quality_grid(model.config.qualities)  # (R,) model quality indices
    inverse_gain_z = interpolated(model.z_inverse_gain.double(), steps).exp().numpy()  # (R, N)
    median64 = median.numpy()
    # Calibrate the integer scale head on ẑ drawn from the prior at every trained quality.
    gen = np.random.default_rng(seed)
    draws = []
    for q in range(0, len(inverse_gain_z), QUALITY_STEPS):
        s = np.stack([gen.choice(len(p), size=64, p=p / p.sum()) + o
                      for p, o in zip(pmfs, offsets)])  # (N, 64)
        draws.append(((s + median64[:, None]) * inverse_gain_z[q][:, None]).reshape(-1, 8, 8))
    calibration = torch.from_numpy(np.stack(draws))  # (Q, N, 8, 8)
    scale_head = quantize_network(model.h_s.scale, calibration, SCALE_LEVELS)
    index_offset = torch.round(interpolated(model.y_gain.double(), steps) / LOG_STEP)
    index_offset = index_offset.long().numpy()  # (R, M); see gained()
    ctx = model.context
    context = [] if ctx is None else [
        quantize_network(net, calibration_inputs(k, ctx.size, seed), SCALE_LEVELS)
        for k, net in enumerate(ctx.scales, start=1)]
    exact = residual = None
    if model.config.image_channels == 1:  # gray codecs also code within a bounded error
        exact = build_exact(model, median64, inverse_gain_z, steps, seed)
        residual = residual_tables()
    return CodingTables(z_tables, y_tables, median64, inverse_gain_z, index_offset, scale_head,
                        context, exact, residual)


RESIDUAL_SPIKES = (0.0, 0.5, 0.9, 0.99)  # P(0) beyond the Laplace law's own
RESIDUAL_RANGE = 1024  # tables cover |q| <= min(8 b, 1024); beyond: escape codes


def residual_tables() -> coder.Tables:
    """The bounded-error residual's tables: for each spike π and each scale b of ``SCALES``,
    π δ(0) + (1 - π) Laplace(b), discretised (a good prediction's residual is heavier-tailed
    than a Gaussian, and a flat background's mostly exactly 0 next to large values at edges).
    Table index = spike * 64 + scale index."""
    pmfs, offsets = [], []
    for spike in RESIDUAL_SPIKES:
        for b in SCALES.double().tolist():
            r = min(math.ceil(8 * b) + 1, RESIDUAL_RANGE)
            v = np.arange(-r, r + 1, dtype=np.float64)
            pmf = (1 - spike) * (_laplace_cdf(v + 0.5, b) - _laplace_cdf(v - 0.5, b))
            pmf[r] += spike
            pmfs.append(pmf)
            offsets.append(-r)
    return coder.Tables.from_pmfs(pmfs, np.array(offsets))


def _laplace_cdf(t: np.ndarray, b: float) -> np.ndarray:
    return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / b),
                    1 - 0.5 * np.exp(-np.maximum(t, 0) / b))


def quality_grid(qualities: int) -> Tensor:
    """(R,) float64 model quality indices 0, 1/16, ..., Q - 1 of the coding tables' rows."""
    return torch.arange((qualities - 1) * QUALITY_STEPS + 1, dtype=torch.float64) / QUALITY_STEPS
