"""The image codec: a trained ``HyperpriorCodec`` + integer coding tables -> ``.cvae`` bytes.

Three layers meet here: networks (``model``), entropy models turned into integer tables
(``build_tables``), and the coder and container (``coder``, ``container``). Data flow of one
image at quality q (1-based in the API, index q-1 in the model)::

    x --pad 64--> g_a (tiled) --> y' = y * gain_y        z' = h_a(y') (tiled) * gain_z
    [effort > 0: y' and z' refined for this image, ``refine``]
    z symbols  s_z = round(z' - median)                 coded with the table of their channel
    ẑ_in = (s_z + median) * inverse_gain_z              (float64, single IEEE operations)
    table index of each y element = IntegerScaleHead(ẑ_in)   (exact on any machine)
    y symbols  s_y = round(y' - μ),  μ = h_s.means(ẑ_in) coded with the table of their index
    decode: ŷ = (s_y + μ) * inverse_gain_y --g_s (tiled)--> x̂

With channel context (``context_slices`` S) the y symbols go slice by slice, each slice's μ
and table index refined from the slices before it (``_slices``; the index by an integer
network of earlier symbols, so still exact).

Only μ and the transforms are float; they shift and shape the picture but never choose a
probability, so a file decodes to the same symbols everywhere. Qualities come in steps of 1/16
(``QUALITY_STEPS``): the gains between two trained qualities are interpolated, and the coding
tables hold the exact integer and float64 values of every step. Large images are coded in
blocks of ``tile`` pixels, one after another, but z is one grid over the whole image and μ and
the table indices of a block are computed from the z around it too (``_hyper``), and g_a, h_a
and g_s run over overlapping tiles of the whole grid: a block edge changes nothing that the
picture depends on except the context model's view, so blocks leave no seams. Cells of
16 x 16 pixels of one exact colour are carried beside the latents and painted after g_s
(``flat``), so that flat regions decode flat.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clearvae.codec import coder, container, flat
from clearvae.codec.container import QUALITY_STEPS
from clearvae.codec.context import scale_context_input
from clearvae.codec.model import MULTIPLE, HyperpriorCodec, _gain
from clearvae.codec.tables import CodingTables, build_tables, quality_grid
from clearvae.codec.tiling import as_tensor, block_rects, pad, tile_size, tiled
from clearvae.errors import ConfigError, DataError

Z_MARGIN = 2  # z pixels around a block that its means and table indices see (h_s: < 2)


def model_id(model: HyperpriorCodec, tables: CodingTables) -> bytes:
    """8 bytes naming the exact weights and tables (stored in every file they code)."""
    return state_digest({**model.state_dict(), **tables.state()})


def state_digest(tensors: dict[str, Tensor]) -> bytes:
    """The first 8 bytes of SHA-256 over named tensors in name order: ``model_id``'s hash."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:8]


@dataclass
class Prepared:
    """One image made ready for coding at any quality: what the encoder computes only once."""

    x: Tensor  # (1, C, H, W) float32 in [0, 1]
    y: Tensor  # (1, M, H'/16, W'/16): g_a of the padded image, before any gain
    channels: int  # channels the caller gave (1 or 3)
    tile: int  # block size in pixels
    cells: flat.Cells | None = None  # the flat cells of x (``flat.find``); None: none coded

    @property
    def pixels(self) -> int:
        return self.x.shape[-2] * self.x.shape[-1]


@dataclass
class Encoded:
    """A ``.cvae`` file and what the encoder knows about it."""

    data: bytes
    quality: float
    effort: int
    x_hat: Tensor | None = None  # (1, C, H, W) the decoded image, when asked for

    def psnr(self, x: Tensor) -> float:
        """PSNR (dB) of the 8-bit decoded image against the 8-bit original."""
        a, b = (torch.round(t.clamp(0, 1) * 255) for t in (self.x_hat, x))
        mse = (a - b).square().mean().item()
        return 10 * math.log10(255**2 / max(mse, 1e-10))


@dataclass
class Coded:
    """The coded streams of one image, with the integer symbols they hold."""

    streams: list[container.TileStreams]
    x_hat: Tensor | None  # (1, C, H, W) float x̂, when asked for
    s_z: np.ndarray  # (1, N, h/4, w/4) z symbols
    symbols: np.ndarray  # (1, M, h, w) y symbols


Progress = Callable[[int, int, float, float], None]  # (iteration, of, est. bpp, est. PSNR)


class Codec:
    """``compress`` / ``decompress`` images with one trained model at qualities 1..Q."""

    def __init__(self, model: HyperpriorCodec, tables: CodingTables | None = None,
                 name: str = "codec") -> None:
        self.model = model.eval()
        if tables is not None and len(tables.index_offset) != len(quality_grid(self.qualities)):
            tables = None  # made before fractional qualities: rebuilt (a new model id)
        if tables is not None and model.config.image_channels == 1 and tables.exact is None:
            tables = None  # a gray model's tables made before the bounded-error modes
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

    def quality_steps(self, quality: float) -> int:
        """``quality`` (1..Q, any float) in the header's steps of 1/16, checked."""
        if not (isinstance(quality, (int, float)) and math.isfinite(quality)
                and 1 <= quality <= self.qualities):
            raise ConfigError(f"quality must be a number from 1 to {self.qualities} (fractions "
                              f"allowed, in steps of 1/{QUALITY_STEPS}), got {quality!r}")
        return round(quality * QUALITY_STEPS)

    @torch.no_grad()
    def compress(self, image: np.ndarray | Tensor, quality: float = 4, tile: int = 0,
                 effort: int = 0, *, target_bpp: float | None = None,
                 max_bytes: int | None = None, target_psnr: float | None = None,
                 progress: Progress | None = None) -> bytes:
        """Image (H, W) or (H, W, C) uint8 or float in [0, 1] -> ``.cvae`` bytes.

        ``quality`` 1..Q, fractions allowed (steps of 1/16). ``effort`` 0..3 spends encode time
        on this image (``refine``) for a smaller file at the same quality; the decoder is the
        same. ``target_bpp``, ``max_bytes`` or ``target_psnr`` (at most one) choose the quality
        by search instead (``rate``); the header says which one was used
        (``container.read_header``). ``tile`` (pixels, a multiple of 64; 0 = automatic) splits
        large images into blocks coded one after another, so memory stays bounded.
        ``progress`` is called during refinement with (iteration, iterations, bpp, PSNR).
        """
        from clearvae.codec import rate  # rate control builds on this class

        prep = self.prepare(image, tile)
        if not isinstance(effort, int) or not 0 <= effort <= container.MAX_EFFORT:
            raise ConfigError(f"effort must be an integer from 0 to {container.MAX_EFFORT}, "
                              f"got {effort!r}")
        targets = {"target_bpp": target_bpp, "max_bytes": max_bytes, "target_psnr": target_psnr}
        given = {k: v for k, v in targets.items() if v is not None}
        if given:
            return rate.search(self, prep, effort, progress=progress, **given).data
        return self.encode(prep, self.quality_steps(quality), effort, progress=progress).data

    @torch.no_grad()
    def prepare(self, image: np.ndarray | Tensor, tile: int = 0,
                flat_cells: bool = True) -> Prepared:
        """Check an image and run the analysis transform once (quality-independent);
        ``flat_cells``: find the cells of one exact 8-bit colour, which the file then carries
        exactly (``flat``; off for images of more than 8 bits)."""
        x, channels = as_tensor(image, self.model.config.image_channels)
        self._check_fresh()
        h, w = x.shape[-2:]
        tile = tile_size(h, w, tile)
        y = tiled(self.model.g_a, pad(x), 1 / 16)
        return Prepared(x, y, channels, tile, flat.find(x, channels) if flat_cells else None)

    @torch.no_grad()
    def encode(self, prep: Prepared, steps: int, effort: int = 0, reconstruct: bool = False,
               progress: Progress | None = None) -> Encoded:
        """Code a prepared image at quality ``steps`` / 16 with the given effort."""
        h, w = prep.x.shape[-2:]
        header = container.Header(prep.channels, steps, self.id, h, w,
                                  0 if prep.tile >= max(h, w) else prep.tile, effort,
                                  prep.cells is not None)
        coded = self.code(prep, steps, effort, container.header_key(header), reconstruct,
                          progress)
        cells = prep.cells
        if cells is not None and coded.x_hat is not None:
            flat.paint(coded.x_hat[0].permute(1, 2, 0).numpy(), cells.mask, cells.values)
        return Encoded(container.pack(header, coded.streams, cells.data if cells else b""),
                       steps / QUALITY_STEPS, effort, coded.x_hat)

    @torch.no_grad()
    def code(self, prep: Prepared, steps: int, effort: int, key: bytes,
             reconstruct: bool = False, progress: Progress | None = None) -> Coded:
        """The streams of each block of a prepared image at quality ``steps`` / 16, their check
        symbols derived from the file's ``key`` (``container.block_check``), the symbols,
        and the decoded image x̂ (1, C, H, W) when ``reconstruct``."""
        from clearvae.codec.refine import refine

        m, t = self.model, self.tables
        row = steps - QUALITY_STEPS
        quality = torch.tensor([row / QUALITY_STEPS])
        y = prep.y * _gain(m.y_gain, quality)  # (1, M, h, w) y'
        z = tiled(m.h_a, y, 1 / 4) * _gain(m.z_gain, quality)  # (1, N, h/4, w/4) z'
        if effort:
            x = pad(prep.x)
            keep = None if prep.cells is None else flat.uncovered(prep.cells.mask,
                                                                  *x.shape[-2:])
            with torch.enable_grad():
                y, z = refine(m, x, y, z, quality, effort, progress, keep)
        s_z = torch.round(z - torch.from_numpy(t.median).float()[None, :, None, None])
        s_z = s_z.double().numpy().astype(np.int64)
        h, w = prep.x.shape[-2:]
        rects = block_rects(*y.shape[-2:], prep.tile // 16)
        streams, y_hat = [], torch.empty_like(y) if reconstruct else None
        symbols = np.zeros(y.shape, np.int64)
        for b, (i0, i1, j0, j1) in enumerate(rects):
            check = container.block_check(key, b)
            sz = s_z[..., i0 // 4 : i1 // 4, j0 // 4 : j1 // 4]
            index_z = np.broadcast_to(np.arange(sz.shape[1])[None, :, None, None], sz.shape)
            z_stream, z_esc = coder.encode(sz, index_z, t.z, check)
            means, index_y = self._hyper(s_z, row, (i0, i1, j0, j1))
            block, parts = self._slices(means, index_y, row, y=y[..., i0:i1, j0:j1])
            y_stream, y_esc = coder.encode_parts(parts, t.y, check)
            streams.append(container.TileStreams(z_stream, z_esc, y_stream, y_esc))
            symbols[..., i0:i1, j0:j1] = np.concatenate([sym for sym, _ in parts], 1)
            if y_hat is not None:
                y_hat[..., i0:i1, j0:j1] = block
        x_hat = None if y_hat is None else self._synthesis(y_hat, row, h, w)
        return Coded(streams, x_hat, s_z, symbols)

    def _hyper(self, s_z: np.ndarray, row: int, rect: tuple[int, int, int, int] | None = None,
               ) -> tuple[Tensor, np.ndarray]:
        """Means (float) and table indices (exact integers) of the y block ``rect`` (latent
        rows i0:i1, columns j0:j1; default all) from the z symbols of the image around it, at
        the quality of table row ``row``."""
        rect = rect or (0, 4 * s_z.shape[-2], 0, 4 * s_z.shape[-1])
        i0, i1, j0, j1 = (v // 4 for v in rect)  # the block in z
        a0, a1 = max(i0 - Z_MARGIN, 0), min(i1 + Z_MARGIN, s_z.shape[-2])
        b0, b1 = max(j0 - Z_MARGIN, 0), min(j1 + Z_MARGIN, s_z.shape[-1])
        t = self.tables
        z_in = ((s_z[..., a0:a1, b0:b1] + t.median[None, :, None, None])
                * t.inverse_gain_z[row][None, :, None, None])
        z_in = torch.from_numpy(z_in)  # float64, identical on every machine
        offset = torch.from_numpy(t.index_offset[row])[None, :, None, None]
        crop = (..., slice(4 * (i0 - a0), 4 * (i1 - a0)), slice(4 * (j0 - b0), 4 * (j1 - b0)))
        index = t.scale_head(z_in, offset).numpy()[crop]
        m = self.model
        means = m.h_s.means(z_in.to(next(m.parameters()).dtype))[crop]
        return means * self._y_gain(row), index

    def _y_gain(self, row: int) -> Tensor:
        return _gain(self.model.y_gain, torch.tensor([row / QUALITY_STEPS]))

    def _synthesis(self, y_hat: Tensor, row: int, h: int, w: int) -> Tensor:
        """x̂ (1, C, h, w) in [0, 1] from the gained ŷ' of the whole image."""
        m = self.model
        y_hat = y_hat * _gain(m.y_inverse_gain, torch.tensor([row / QUALITY_STEPS]))
        return tiled(m.g_s, y_hat, 16)[..., :h, :w].clamp(0, 1)

    def _slices(self, means: Tensor, index: np.ndarray, row: int, y: Tensor | None = None,
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
        gain = self._y_gain(row).to(means.dtype)
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
    def decompress(self, data: bytes, name: str = "input",
                   max_pixels: int = container.MAX_PIXELS) -> np.ndarray:
        """``.cvae`` bytes -> float32 image (H, W, C) in [0, 1] (C as when compressed).

        A header that claims more than ``max_pixels`` pixels is refused before anything is
        allocated."""
        header, streams, cells = container.unpack(data, name, max_pixels)
        if header.model_id != self.id:
            raise DataError(f"'{name}' was compressed with another model (id "
                            f"{header.model_id.hex()}); this is {self.name} (id {self.id.hex()}): "
                            "decompress with the model that compressed it (--model)")
        if header.quality > self.qualities:
            raise DataError(f"'{name}' has quality {header.quality}, beyond this model's "
                            f"{self.qualities}")
        x_hat = self.decode(streams, header.quality_steps, header.height, header.width,
                            header.tile, container.header_key(header))
        x_hat = x_hat[0].permute(1, 2, 0).numpy()
        if header.channels == 1:
            x_hat = x_hat.mean(axis=2, keepdims=True)
        if header.flat:
            flat.paint(x_hat, *flat.unpack(cells, header.height, header.width,
                                           header.channels, name))
        return x_hat

    @torch.no_grad()
    def decode(self, streams: list[container.TileStreams], steps: int, height: int, width: int,
               tile: int, key: bytes) -> Tensor:
        """x̂ (1, C, height, width) in [0, 1] from the checked streams of each block, coded at
        quality ``steps`` / 16 in blocks of ``tile`` (0: one), with check symbols from
        ``key``; a stream that does not decode to its end and its check is a DataError."""
        y_hat = self.decode_latents(streams, steps, height, width, tile, key)[0]
        return self._synthesis(y_hat, steps - QUALITY_STEPS, height, width)

    @torch.no_grad()
    def decode_latents(self, streams: list[container.TileStreams], steps: int, height: int,
                       width: int, tile: int, key: bytes,
                       ) -> tuple[Tensor, np.ndarray, np.ndarray]:
        """``decode`` before g_s: the gained ŷ' (1, M, h, w), the z symbols (1, N, h/4, w/4)
        and the y symbols (1, M, h, w)."""
        row = steps - QUALITY_STEPS
        m = self.model
        hp, wp = (-(-v // MULTIPLE) * MULTIPLE for v in (height, width))
        tile = tile or max(hp, wp)
        rects = block_rects(hp // 16, wp // 16, tile // 16)
        n = m.config.channels_n
        s_z = np.zeros((1, n, hp // 64, wp // 64), np.int64)
        checks = [container.block_check(key, b) for b in range(len(rects))]
        for s, (i0, i1, j0, j1), check in zip(streams, rects, checks):  # all z first
            shape = (1, n, (i1 - i0) // 4, (j1 - j0) // 4)
            index_z = np.broadcast_to(np.arange(n)[None, :, None, None], shape)
            s_z[..., i0 // 4 : i1 // 4, j0 // 4 : j1 // 4] = coder.decode(
                s.z, s.z_escapes, index_z, self.tables.z, check)
        y_hat = torch.empty(1, m.config.channels_m, hp // 16, wp // 16)
        symbols = np.zeros(y_hat.shape, np.int64)
        for s, rect, check in zip(streams, rects, checks):
            means, index_y = self._hyper(s_z, row, rect)
            decoder = coder.Decoder(s.y, s.y_escapes, self.tables.y, check)
            i0, i1, j0, j1 = rect
            y_block, parts = self._slices(means, index_y, row, decoder=decoder)
            y_hat[..., i0:i1, j0:j1] = y_block
            symbols[..., i0:i1, j0:j1] = np.concatenate([sym for sym, _ in parts], 1)
            decoder.finish()
        return y_hat, s_z, symbols

    def z_input(self, s_z: np.ndarray, steps: int) -> Tensor:
        """ẑ_in = (s_z + median) · inverse gain (float64, one IEEE operation each): exact."""
        t, row = self.tables, steps - QUALITY_STEPS
        return torch.from_numpy((s_z + t.median[None, :, None, None])
                                * t.inverse_gain_z[row][None, :, None, None])
