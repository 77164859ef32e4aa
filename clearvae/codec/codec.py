"""The image codec: a trained ``HyperpriorCodec`` + integer coding tables -> ``.cvae`` bytes.

Three layers meet here: networks (``model``), entropy models turned into integer tables
(``build_tables``), and the coder and container (``coder``, ``container``). Data flow of one
image at quality q (1-based in the API, index q-1 in the model)::

    x --pad 64--> g_a (tiled) --> y' = y * gain_y        z' = h_a(y') * gain_z
    z symbols  s_z = round(z' - median)                 coded with the table of their channel
    ẑ_in = (s_z + median) * inverse_gain_z              (float64, single IEEE operations)
    table index of each y element = IntegerScaleHead(ẑ_in)   (exact on any machine)
    y symbols  s_y = round(y' - μ),  μ = h_s.means(ẑ_in) coded with the table of their index
    decode: ŷ = (s_y + μ) * inverse_gain_y --g_s (tiled)--> x̂

With channel context (``context_slices`` S) the y symbols go slice by slice, each slice's μ
and table index refined from the slices before it (``_slices``; the index by an integer
network of earlier symbols, so still exact).

Only μ and the transforms are float; they shift and shape the picture but never choose a
probability, so a file decodes to the same symbols everywhere. Large images are coded in
blocks of ``tile`` pixels (each with its own z), while g_a and g_s run over overlapping tiles
of the whole latent grid, so blocks leave no seams.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clearvae.codec import coder, container
from clearvae.codec.context import calibration_inputs, scale_context_input
from clearvae.codec.entropy_models import LOG_STEP, SCALE_LEVELS, SCALES
from clearvae.codec.integer import IntegerNetwork, quantize_network
from clearvae.codec.model import MULTIPLE, HyperpriorCodec
from clearvae.errors import ConfigError, DataError

Y_TAIL_SIGMAS = 6.0  # y tables cover +-6 sigma (tail mass 2e-9); beyond: escape codes
COMPUTE_TILE = 512  # g_a / g_s run on tiles of this many pixels (plus a margin)
MARGIN = 64  # pixels of context around each tile (covers g_a's 61-pixel receptive field)


@dataclass
class CodingTables:
    """Everything the decoder needs besides the float networks, all exactly reproducible."""

    z: coder.Tables  # one table per z channel
    y: coder.Tables  # one table per scale index
    median: np.ndarray  # (N,) float64
    inverse_gain_z: np.ndarray  # (Q, N) float64
    index_offset: np.ndarray  # (Q, M) int64: log(gain_y) in scale-table steps, rounded
    scale_head: IntegerNetwork
    context: list[IntegerNetwork]  # the scale residual of slices 1..S-1 (none without context)

    def state(self) -> dict[str, Tensor]:
        out = {f"z.{k}": torch.from_numpy(v) for k, v in _tables_state(self.z).items()}
        out |= {f"y.{k}": torch.from_numpy(v) for k, v in _tables_state(self.y).items()}
        out["median"] = torch.from_numpy(self.median)
        out["inverse_gain_z"] = torch.from_numpy(self.inverse_gain_z)
        out["index_offset"] = torch.from_numpy(self.index_offset)
        out |= {f"scale_head.{k}": v for k, v in self.scale_head.state().items()}
        for i, net in enumerate(self.context):
            out |= {f"context.{i}.{k}": v for k, v in net.state().items()}
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
        return cls(tables("z."), tables("y."), state["median"].numpy(),
                   state["inverse_gain_z"].numpy(), state["index_offset"].numpy(),
                   IntegerNetwork.from_state(part("scale_head.")), context)


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

    inverse_gain_z = model.z_inverse_gain.double().exp().numpy()  # (Q, N)
    median64 = median.numpy()
    # Calibrate the integer scale head on ẑ drawn from the prior at every quality.
    gen = np.random.default_rng(seed)
    draws = []
    for q in range(len(inverse_gain_z)):
        s = np.stack([gen.choice(len(p), size=64, p=p / p.sum()) + o
                      for p, o in zip(pmfs, offsets)])  # (N, 64)
        draws.append(((s + median64[:, None]) * inverse_gain_z[q][:, None]).reshape(-1, 8, 8))
    calibration = torch.from_numpy(np.stack(draws))  # (Q, N, 8, 8)
    scale_head = quantize_network(model.h_s.scale, calibration, SCALE_LEVELS)
    index_offset = torch.round(model.y_gain.double() / LOG_STEP).long().numpy()  # see gained()
    ctx = model.context
    context = [] if ctx is None else [
        quantize_network(net, calibration_inputs(k, ctx.size, seed), SCALE_LEVELS)
        for k, net in enumerate(ctx.scales, start=1)]
    return CodingTables(z_tables, y_tables, median64, inverse_gain_z, index_offset, scale_head,
                        context)


def model_id(model: HyperpriorCodec, tables: CodingTables) -> bytes:
    """8 bytes naming the exact weights and tables (stored in every file they code)."""
    h = hashlib.sha256()
    for name, t in sorted({**model.state_dict(), **tables.state()}.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:8]


class Codec:
    """``compress`` / ``decompress`` images with one trained model at qualities 1..Q."""

    def __init__(self, model: HyperpriorCodec, tables: CodingTables | None = None,
                 name: str = "codec") -> None:
        self.model = model.eval()
        self.tables = tables if tables is not None else build_tables(model)
        self.name = name
        self.id = model_id(self.model, self.tables)

    @property
    def qualities(self) -> int:
        return self.model.config.qualities

    def _check_fresh(self) -> None:
        """Refuse to code with tables built for other weights (e.g. after more training)."""
        if model_id(self.model, self.tables) != self.id:
            raise ConfigError("the model's weights changed after its coding tables were built: "
                              "make a new Codec (tables are rebuilt automatically)")

    @torch.no_grad()
    def compress(self, image: np.ndarray | Tensor, quality: int = 4, tile: int = 0) -> bytes:
        """Image (H, W) or (H, W, C) uint8 or float in [0, 1] -> ``.cvae`` bytes.

        ``tile`` (pixels, a multiple of 64; 0 = automatic) splits large images into blocks
        coded one after another, so memory stays bounded.
        """
        x, channels = _as_tensor(image, self.model.config.image_channels)
        if not 1 <= quality <= self.qualities:
            raise ConfigError(f"quality must be 1..{self.qualities}, got {quality}")
        self._check_fresh()
        h, w = x.shape[-2:]
        tile = _tile_size(h, w, tile)
        q = quality - 1
        m = self.model
        y = _tiled(lambda t: m.g_a(t), _pad(x), 1 / 16)
        y = y * m.y_gain[q].exp()[None, :, None, None]
        streams = []
        for block in _blocks(y, tile // 16):
            z = m.h_a(block) * m.z_gain[q].exp()[None, :, None, None]
            s_z = torch.round(z - torch.from_numpy(self.tables.median).float()[None, :, None, None])
            s_z = s_z.double().numpy().astype(np.int64)
            index_z = np.broadcast_to(np.arange(s_z.shape[1])[None, :, None, None], s_z.shape)
            z_stream, z_esc = coder.encode(s_z, index_z, self.tables.z)
            means, index_y = self._hyper(s_z, q)
            _, parts = self._slices(means, index_y, q, y=block)
            y_stream, y_esc = coder.encode_parts(parts, self.tables.y)
            streams.append(container.TileStreams(z_stream, z_esc, y_stream, y_esc))
        header = container.Header(channels, quality, self.id, h, w, 0 if tile >= max(h, w)
                                  else tile)
        return container.pack(header, streams)

    def _hyper(self, s_z: np.ndarray, q: int) -> tuple[Tensor, np.ndarray]:
        """Means (float) and table indices (exact integers) of y from z symbols."""
        t = self.tables
        z_in = (s_z + t.median[None, :, None, None]) * t.inverse_gain_z[q][None, :, None, None]
        z_in = torch.from_numpy(z_in)  # float64, identical on every machine
        offset = torch.from_numpy(t.index_offset[q])[None, :, None, None]
        index = t.scale_head(z_in, offset).numpy()
        m = self.model
        means = m.h_s.means(z_in.to(next(m.parameters()).dtype))
        return means * m.y_gain[q].exp()[None, :, None, None], index

    def _slices(self, means: Tensor, index: np.ndarray, q: int, y: Tensor | None = None,
                decoder: coder.Decoder | None = None,
                ) -> tuple[Tensor, list[tuple[np.ndarray, np.ndarray]]]:
        """Walk the slices of one block of y' in coding order, taking each slice's integer
        symbols from ``y`` (encoding) or from ``decoder``. Returns ŷ' (1, M, h, w) and the
        (symbols, table indices) of each slice.

        Without context the whole y' is one slice. With it, each slice's means and table
        indices also depend on the slices before it (``context`` module), computed here the
        same way for the encoder and the decoder.
        """
        ctx = self.model.context
        slices = 1 if ctx is None else ctx.slices
        size = means.shape[1] // slices
        gain = self.model.y_gain[q].exp()[None, :, None, None].to(means.dtype)
        y_hat: list[Tensor] = []  # gained ŷ' of the slices done
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(slices):
            c = slice(k * size, (k + 1) * size)
            mu_k, index_k = means[:, c], index[:, c]
            if k:
                earlier = [t / gain[:, j * size:(j + 1) * size] for j, t in enumerate(y_hat)]
                mu_k = ctx.mean(k, mu_k, earlier, gain[:, c])
                base = torch.from_numpy(index_k).double()
                net_in = scale_context_input(base, [torch.from_numpy(s).double()
                                                    for s, _ in parts])
                index_k = self.tables.context[k - 1](net_in, base).numpy()
            if decoder is None:
                s_k = torch.round(y[:, c] - mu_k).double().numpy().astype(np.int64)
            else:
                s_k = decoder.decode(index_k)
            parts.append((s_k, index_k))
            y_hat.append(torch.from_numpy(s_k).to(mu_k.dtype) + mu_k)
        return torch.cat(y_hat, 1), parts

    @torch.no_grad()
    def decompress(self, data: bytes, name: str = "input") -> np.ndarray:
        """``.cvae`` bytes -> float32 image (H, W, C) in [0, 1] (C as when compressed)."""
        header, streams = container.unpack(data, name)
        if header.model_id != self.id:
            raise DataError(f"'{name}' was compressed with another model (id "
                            f"{header.model_id.hex()}); this is {self.name} (id {self.id.hex()}): "
                            "decompress with the model that compressed it (--model)")
        if header.quality > self.qualities:
            raise DataError(f"'{name}' has quality {header.quality}, beyond this model's "
                            f"{self.qualities}")
        q = header.quality - 1
        m = self.model
        hp, wp = (-(-v // MULTIPLE) * MULTIPLE for v in (header.height, header.width))
        tile = header.tile or max(hp, wp)
        shapes = [b.shape for b in _blocks(torch.empty(1, 1, hp // 16, wp // 16), tile // 16)]
        blocks = []
        for s, shape in zip(streams, shapes):
            zh, zw = shape[-2] // 4, shape[-1] // 4
            n, mch = m.config.channels_n, m.config.channels_m
            index_z = np.broadcast_to(np.arange(n)[None, :, None, None], (1, n, zh, zw))
            s_z = coder.decode(s.z, s.z_escapes, index_z, self.tables.z)
            means, index_y = self._hyper(s_z, q)
            if index_y.shape != (1, mch, shape[-2], shape[-1]):
                raise DataError(f"'{name}' is inconsistent with this model (latent shapes)")
            decoder = coder.Decoder(s.y, s.y_escapes, self.tables.y)
            blocks.append(self._slices(means, index_y, q, decoder=decoder)[0])
            decoder.finish()
        y_hat = _unblocks(blocks, hp // 16, wp // 16, tile // 16)
        y_hat = y_hat * m.y_inverse_gain[q].exp()[None, :, None, None]
        x_hat = _tiled(lambda t: m.g_s(t), y_hat, 16)[..., : header.height, : header.width]
        x_hat = x_hat.clamp(0, 1)[0].permute(1, 2, 0).numpy()
        if header.channels == 1:
            x_hat = x_hat.mean(axis=2, keepdims=True)
        return x_hat


def _as_tensor(image: np.ndarray | Tensor, model_channels: int) -> tuple[Tensor, int]:
    """(1, model_channels, H, W) float32 in [0, 1] and the number of channels the caller gave
    (a gray image goes through an RGB model as three equal planes)."""
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got "
                        f"{a.shape}")
    if a.shape[2] == 4:
        raise DataError("the image has an alpha channel, which the codec does not keep: "
                        "flatten it onto a background first (e.g. --drop-alpha)")
    if a.shape[2] == 3 and model_channels == 1:
        raise DataError("this codec model codes gray images only, and the image is colour: "
                        "convert it to gray first, or use an RGB model")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        raise DataError("16-bit images are not supported by the codec: convert to 8 bits "
                        "first (the codec codes 8-bit images)")
    elif not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        raise DataError(f"expected uint8 or finite float pixels, got {a.dtype}")
    h, w, c = a.shape
    if min(h, w) < 1 or max(h, w) > container.MAX_SIDE:
        raise DataError(f"image size {w}x{h} is outside 1..{container.MAX_SIDE} pixels a side")
    x = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None].clamp(0, 1)
    return (x.expand(1, model_channels, h, w).contiguous() if c == 1 else x), c


def _tile_size(h: int, w: int, tile: int) -> int:
    if tile == 0:  # automatic: one block up to 2048 pixels a side
        return 2048 if max(h, w) > 2048 else max(-(-h // 64), -(-w // 64)) * 64
    if tile % MULTIPLE or tile < MULTIPLE:
        raise ConfigError(f"tile must be a positive multiple of {MULTIPLE}, got {tile}")
    return tile


def _pad(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % MULTIPLE, 0, -h % MULTIPLE), mode="replicate")


def _blocks(y: Tensor, size: int) -> list[Tensor]:
    """Row-major blocks of ``size`` latent pixels (edge blocks smaller, multiples of 4)."""
    return [y[..., i : i + size, j : j + size]
            for i in range(0, y.shape[-2], size) for j in range(0, y.shape[-1], size)]


def _unblocks(blocks: list[Tensor], h: int, w: int, size: int) -> Tensor:
    rows = [torch.cat(blocks[k : k + -(-w // size)], dim=-1)
            for k in range(0, len(blocks), -(-w // size))]
    return torch.cat(rows, dim=-2)


def _tiled(fn, x: Tensor, scale: float) -> Tensor:  # noqa: ANN001
    """Apply a convolutional ``fn`` that resizes by ``scale`` over overlapping tiles of x,
    keeping each tile's centre: the same result as ``fn(x)`` in bounded memory."""
    step = int(COMPUTE_TILE if scale < 1 else COMPUTE_TILE / 16)
    margin = int(MARGIN if scale < 1 else MARGIN / 16)
    h, w = x.shape[-2:]
    if h <= step + 2 * margin and w <= step + 2 * margin:
        return fn(x)
    out = None
    for i in range(0, h, step):
        for j in range(0, w, step):
            i0, j0 = max(i - margin, 0), max(j - margin, 0)
            piece = fn(x[..., i0 : min(i + step + margin, h), j0 : min(j + step + margin, w)])
            a, b = int((i - i0) * scale), int((j - j0) * scale)
            hh, ww = int(min(step, h - i) * scale), int(min(step, w - j) * scale)
            if out is None:
                out = piece.new_empty((*piece.shape[:2], int(h * scale), int(w * scale)))
            out[..., int(i * scale) : int(i * scale) + hh,
                int(j * scale) : int(j * scale) + ww] = piece[..., a : a + hh, b : b + ww]
    return out
