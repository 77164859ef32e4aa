"""Checks of a codec model file's coding tables before anything uses them.

The tables (tensors ``tables.*`` of a model file, ``CodingTables.state()``) decide every
probability the coder uses, so a damaged or edited table must be refused, not coded with:
a negative or missing frequency crashes the coder, a wrong length or offset makes every
symbol an escape (files many times their size), a non-finite gain or an integer network of
the wrong shape gives table indices that do not exist. Layout, for a model with N z channels,
M y channels, Q qualities and S context slices::

    z.freqs (N, W) int, z.offsets (N,) int, z.lengths (N,) int      one table per z channel
    y.freqs (64, W) int, y.offsets (64,) int, y.lengths (64,) int    one per scale index
    median (N,) float64          inverse_gain_z (R, N) float64 > 0    index_offset (R, M) int64
    scale_head.*                 the integer network of h_s's scale head (ẑ -> table index)
    context.{0..S-2}.*           the integer scale residual of slices 1..S-1

R >= Q rows: one per quality step the tables serve (whole qualities or finer), each within
the range of the model's own gains (so tables of other weights do not pass). Table t's
frequencies ``freqs[t, :lengths[t] + 1]`` (its symbols, then the escape) are each >= 1 and
sum to 2**16; the rest of the row is 0; it covers symbol 0 (symbols are values less their
median or mean), symmetrically for the Gaussian y tables. The integer networks have the
layers of the float ones they replace. Every check raises one ModelFileError naming the file;
``check_model_id`` then compares the stored model id with the weights and tables.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from clearvae.codec.entropy_models import LOG_STEP, SCALE_LEVELS
from clearvae.codec.integer import WEIGHT_BITS
from clearvae.codec.model import HyperpriorCodec
from clearvae.errors import ModelFileError

PRECISION = 16  # table frequencies sum to 2**PRECISION
MAX_OFFSET = 2**31  # |symbol values| a table covers: far beyond any latent, no int64 overflow
MAX_MEDIAN = 1e6  # the prior's quantiles are solved within +-1e6 (fit_quantiles)
MAX_SHIFT = 62  # accumulator shifts of the integer networks
MAX_INPUT_BITS = 64  # |fractional bits| of an integer network's input
MAX_BIAS = 2**52  # integer network biases stay exact in float64


def check_tables(tables: dict[str, Tensor], model: HyperpriorCodec, source: str) -> None:
    """Check the coding tables (``tables.`` prefix removed) of ``model``'s file ``source``."""
    cfg = model.config
    n, m = cfg.channels_n, cfg.channels_m
    expected = {f"{p}.{k}" for p in ("z", "y") for k in ("freqs", "offsets", "lengths")}
    expected |= {"median", "inverse_gain_z", "index_offset"}
    slices = cfg.context_slices
    networks = {"scale_head": model.h_s.scale}
    if model.context is not None:
        networks |= {f"context.{k}": net for k, net in enumerate(model.context.scales)}
    sections = tuple(f"{p}." for p in networks)
    if cfg.image_channels == 1:  # gray: the bounded-error modes' exact decoder and tables
        sections += ("exact.", "residual.")
    unexpected = sorted(k for k in tables if k not in expected and not k.startswith(sections))
    if unexpected:
        raise _error(source, f"unexpected table tensors {', '.join(unexpected[:3])} (a model "
                             f"with context_slices {slices} has "
                             f"{max(slices - 1, 0)} context networks)")
    missing = sorted(expected - set(tables))
    if missing:
        raise _error(source, f"missing table tensors {', '.join(missing)}")

    _check_coder_tables(tables, "z", n, source)
    _check_coder_tables(tables, "y", SCALE_LEVELS, source, symmetric=True)
    median = _array(tables, "median", (n,), "float64", source)
    if not (np.isfinite(median).all() and (np.abs(median) <= MAX_MEDIAN).all()):
        raise _error(source, f"'median' must be finite and within +-{MAX_MEDIAN:g}")
    gains = tables["inverse_gain_z"]
    rows = gains.shape[0] if gains.ndim == 2 else -1
    if rows < cfg.qualities:
        raise _error(source, f"'inverse_gain_z' has shape {tuple(gains.shape)}; expected (R, "
                             f"{n}) with R >= {cfg.qualities} (one row per quality step)")
    gains = _array(tables, "inverse_gain_z", (rows, n), "float64", source)
    if not (np.isfinite(gains).all() and (gains > 0).all()):
        raise _error(source, "'inverse_gain_z' must be finite and positive")
    offsets = _array(tables, "index_offset", (rows, m), "int64", source)
    # Each row is the gain of a quality between two trained ones (interpolated geometrically),
    # so per channel it lies within the range of the model's own gains.
    log_gains = model.z_inverse_gain.detach().double()  # (Q, N)
    low, high = (np.exp(v.numpy()) for v in log_gains.aminmax(dim=0))
    if ((gains < low * (1 - 1e-9)) | (gains > high * (1 + 1e-9))).any():
        raise _error(source, "'inverse_gain_z' is not the model's (outside the range of its "
                             "z_inverse_gain weights)")
    y_steps = model.y_gain.detach().double() / LOG_STEP  # (Q, M): index_offset before rounding
    low, high = (v.numpy() for v in y_steps.aminmax(dim=0))
    if ((offsets < np.floor(low)) | (offsets > np.ceil(high))).any():
        raise _error(source, "'index_offset' is not the model's (outside the range of its "
                             "y_gain weights)")
    for prefix, net in networks.items():
        part = {k[len(prefix) + 1:]: v for k, v in tables.items() if k.startswith(prefix + ".")}
        _check_integer_network(part, net, prefix, source)
    if any(k.startswith("residual.") for k in tables):
        from clearvae.codec.tables import RESIDUAL_SPIKES

        _check_coder_tables(tables, "residual", SCALE_LEVELS * len(RESIDUAL_SPIKES), source,
                            symmetric=True)
    exact = {k[6:]: v for k, v in tables.items() if k.startswith("exact.")}
    if exact:
        _check_exact(exact, model, rows, source)


def _check_exact(state: dict[str, Tensor], model: HyperpriorCodec, rows: int,
                 source: str) -> None:
    """An ``ExactDecoder.state()`` of ``model``: its fixed-point networks layer for layer
    those of the float ones, integers and shifts in exact range, gains finite and positive."""
    nets = {"means": model.h_s.means, "synthesis": model.g_s}
    if model.context is not None:
        nets |= {f"context.{i}": net for i, net in enumerate(model.context.means)}
    known = {"y_gain", "y_inverse_gain"}
    for prefix, net in nets.items():
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        known |= {f"{prefix}.{k}" for k in part}
        _check_fixed_network(part, net, f"exact.{prefix}", source)
    extra = sorted(set(state) - known)
    if extra:
        raise _error(source, f"unexpected table tensors exact.{extra[0]}")
    for key in ("y_gain", "y_inverse_gain"):
        if key not in state:
            raise _error(source, f"missing table tensors exact.{key}")
        g = _array(state, key, (rows, model.config.channels_m), "float64", source, "exact")
        if not (np.isfinite(g).all() and (g > 0).all()):
            raise _error(source, f"'exact.{key}' must be finite and positive")


def _check_fixed_network(state: dict[str, Tensor], net: nn.Module, prefix: str,
                         source: str) -> None:
    from clearvae.codec.exact import WEIGHT_BITS as FIXED_WEIGHT_BITS
    from clearvae.codec.networks import GDN

    leaves = [m for m in net.modules() if not list(m.children())
              and not isinstance(m, nn.Identity)]
    if "frac" not in state:
        raise _error(source, f"missing table tensors {prefix}.frac")
    frac = _array(state, "frac", (2,), "int", source, prefix)
    if (np.abs(frac) > MAX_INPUT_BITS).any():
        raise _error(source, f"'{prefix}.frac' is beyond +-{MAX_INPUT_BITS}")
    for i, m in enumerate(leaves):
        if f"{i}.meta" not in state:
            raise _error(source, f"'{prefix}' does not match the model's {len(leaves)} layers")
        kind, shift, shift2, upscale = (int(v) for v in _array(state, f"{i}.meta", (4,),
                                                                 "int", source, prefix))
        want = (0 if isinstance(m, nn.Conv2d) else 1 if isinstance(m, GDN)
                else 2 if isinstance(m, nn.ReLU) else 3)
        shuffle = m.upscale_factor if isinstance(m, nn.PixelShuffle) else 0
        if kind != want or upscale != shuffle or not (0 <= shift <= MAX_SHIFT
                                                      and 0 <= shift2 <= MAX_SHIFT):
            raise _error(source, f"'{prefix}.{i}.meta' does not describe the model's layer {i} "
                                 f"({type(m).__name__})")
        if kind in (0, 1):
            c = m.gamma_root.shape[0] if kind else 0
            w_shape, b_shape = (tuple(m.weight.shape), m.weight.shape[:1]) if kind == 0 else (
                (c, c), (c,))
            for key in (f"{i}.weight", f"{i}.bias"):
                if key not in state:
                    raise _error(source, f"missing table tensors {prefix}.{key}")
            w = _array(state, f"{i}.weight", w_shape, "int", source, prefix)
            b = _array(state, f"{i}.bias", tuple(b_shape), "int", source, prefix)
            if (np.abs(w) >= 2**FIXED_WEIGHT_BITS).any() or (np.abs(b) > MAX_BIAS).any():
                raise _error(source, f"'{prefix}.{i}' holds integers beyond their exact range")
    if any(k.split(".")[0].isdigit() and int(k.split(".")[0]) >= len(leaves) for k in state):
        raise _error(source, f"'{prefix}' has more layers than the model's {len(leaves)}")


def check_model_id(info: dict, computed: bytes, source: str) -> None:
    """The ``model_id`` stored in a codec file's info must name its weights and tables."""
    stored = info.get("model_id")
    if not isinstance(stored, str) or len(stored) != 16 or not _is_hex(stored):
        raise ModelFileError(f"'{source}': its metadata has no valid model_id (16 hex digits, "
                             f"got {stored!r}): the file is damaged")
    if stored != computed.hex():
        raise ModelFileError(f"'{source}': its weights or coding tables were altered after it "
                             f"was saved (stored model id {stored}, its contents give "
                             f"{computed.hex()}): the file is damaged or tampered with")


def _check_coder_tables(tables: dict[str, Tensor], prefix: str, count: int, source: str,
                        symmetric: bool = False) -> None:
    freqs = tables[f"{prefix}.freqs"]
    width = freqs.shape[1] if freqs.ndim == 2 else -1
    if width < 2:
        raise _error(source, f"'{prefix}.freqs' has shape {tuple(freqs.shape)}; expected "
                             f"({count}, W) with W >= 2")
    f = _array(tables, f"{prefix}.freqs", (count, width), "int", source).astype(np.int64)
    offsets = _array(tables, f"{prefix}.offsets", (count,), "int", source).astype(np.int64)
    lengths = _array(tables, f"{prefix}.lengths", (count,), "int", source).astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > width - 1))
    if bad.size:
        raise _error(source, f"'{prefix}.lengths' of table {bad[0]} is {lengths[bad[0]]}, "
                             f"outside 1..{width - 1} (the padded width less the escape entry)")
    if (np.abs(offsets) > MAX_OFFSET).any() or (np.abs(offsets + lengths) > MAX_OFFSET).any():
        raise _error(source, f"'{prefix}.offsets' reach beyond +-2**31")
    # Symbols are values less their median or mean: every table covers 0, its likeliest.
    bad = np.flatnonzero((offsets > 0) | (offsets + lengths <= 0))
    if bad.size:
        raise _error(source, f"table {bad[0]} of '{prefix}' covers {offsets[bad[0]]}.."
                             f"{offsets[bad[0]] + lengths[bad[0]] - 1}, not 0")
    if symmetric and ((offsets != -(lengths // 2)).any() or (lengths % 2 == 0).any()):
        raise _error(source, f"the '{prefix}' tables (zero-mean Gaussians) must be symmetric "
                             "around 0")
    used = np.arange(width)[None, :] <= lengths[:, None]  # symbols and the escape entry
    bad = np.flatnonzero(((f < 1) & used).any(1) | ((f != 0) & ~used).any(1))
    if bad.size:
        raise _error(source, f"'{prefix}.freqs' of table {bad[0]}: each of its "
                             f"{lengths[bad[0]] + 1} entries must be >= 1 and the padding 0")
    total = f.sum(1)
    bad = np.flatnonzero(total != 2**PRECISION)
    if bad.size:
        raise _error(source, f"'{prefix}.freqs' of table {bad[0]} sum to {total[bad[0]]}, not "
                             f"2**{PRECISION}")


def _check_integer_network(state: dict[str, Tensor], net: nn.Module, prefix: str,
                           source: str) -> None:
    """An ``IntegerNetwork.state()`` of the float stack ``net``: layer for layer the same
    convolutions (weight shapes, ReLUs) and pixel shuffles, integers in exact range."""
    layers = _float_layers(net)
    names = {"input_bits", "levels"}
    for i, (weight_shape, _, _) in enumerate(layers):
        names |= {f"{i}.meta"} | ({f"{i}.weight", f"{i}.bias"} if weight_shape else set())
    extra, missing = sorted(set(state) - names), sorted(names - set(state))
    if extra or missing:
        detail = "; ".join(([f"missing {', '.join(missing[:3])}"] if missing else [])
                           + ([f"unexpected {', '.join(extra[:3])}"] if extra else []))
        raise _error(source, f"integer network '{prefix}' does not match the model's "
                             f"{len(layers)} layers ({detail})")
    bits = _array(state, "input_bits", (), "int", source, prefix)
    if abs(int(bits)) > MAX_INPUT_BITS:
        raise _error(source, f"'{prefix}.input_bits' is {int(bits)}, beyond +-{MAX_INPUT_BITS}")
    levels = _array(state, "levels", (), "int", source, prefix)
    if int(levels) != SCALE_LEVELS:
        raise _error(source, f"'{prefix}.levels' is {int(levels)}; the y tables are "
                             f"{SCALE_LEVELS}")
    for i, (weight_shape, relu, upscale) in enumerate(layers):
        shift, is_relu, scale = (int(v) for v in _array(state, f"{i}.meta", (3,), "int",
                                                         source, prefix))
        if weight_shape is None:
            if (shift, is_relu, scale) != (0, 0, upscale):
                raise _error(source, f"'{prefix}.{i}.meta' must be a pixel shuffle by {upscale}")
            continue
        if not 0 <= shift <= MAX_SHIFT or is_relu != int(relu) or scale != 0:
            raise _error(source, f"'{prefix}.{i}.meta' ({shift}, {is_relu}, {scale}) is not a "
                                 f"convolution{' with ReLU' if relu else ''} shifting by "
                                 f"0..{MAX_SHIFT}")
        w = _array(state, f"{i}.weight", weight_shape, "int", source, prefix)
        b = _array(state, f"{i}.bias", weight_shape[:1], "int", source, prefix)
        if (np.abs(w) >= 2**WEIGHT_BITS).any():
            raise _error(source, f"'{prefix}.{i}.weight' exceeds +-2**{WEIGHT_BITS}")
        if (np.abs(b) > MAX_BIAS).any():
            raise _error(source, f"'{prefix}.{i}.bias' exceeds +-2**52")


def _float_layers(net: nn.Module) -> list[tuple[tuple[int, ...] | None, bool, int]]:
    """(weight shape or None, ReLU after it, pixel-shuffle factor) of each layer that
    ``integer.quantize_network`` makes from ``net``."""
    leaves = [m for m in net.modules()
              if not list(m.children()) and not isinstance(m, (nn.Identity, nn.ReLU))]
    relus = [m for m in net.modules() if not list(m.children())]
    out = []
    for m in leaves:
        if isinstance(m, nn.PixelShuffle):
            out.append((None, False, m.upscale_factor))
        elif isinstance(m, nn.Conv2d):
            after = [k for k in relus[relus.index(m) + 1:]
                     if not isinstance(k, (nn.PixelShuffle, nn.Identity))]
            out.append((tuple(m.weight.shape), bool(after) and isinstance(after[0], nn.ReLU), 0))
        else:  # a layer the integer conversion cannot make: a programming error, not the file
            raise TypeError(f"no integer form for {type(m).__name__}")
    return out


def _array(tables: dict[str, Tensor], key: str, shape: tuple[int, ...], dtype: str,
           source: str, prefix: str = "") -> np.ndarray:
    """``tables[key]`` as numpy, checked for shape and dtype ("int": any integer type)."""
    t = tables[key]
    name = f"{prefix}.{key}" if prefix else key
    if tuple(t.shape) != tuple(shape):
        raise _error(source, f"'{name}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
    ok = (t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
          if dtype == "int" else t.dtype == getattr(torch, dtype))
    if not ok:
        want = "an integer dtype" if dtype == "int" else dtype
        raise _error(source, f"'{name}' has dtype {t.dtype}, expected {want}")
    return t.numpy()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _error(source: str, what: str) -> ModelFileError:
    return ModelFileError(f"'{source}': its coding tables are damaged: {what}")
