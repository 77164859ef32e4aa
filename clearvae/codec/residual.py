"""The bounded-error residual coder: every value within ±K of the original (K = 0: lossless).

Each value v is predicted from what the decoder already has: its reconstructed causal
neighbours (left L, LL; above U, UU, UL, UR, URR, ULL, UUL, UUR) and, when the slice has a
lossy layer, the exact decoder's picture p around it (p, and p left, right, above, below)::

    pred = clamp(⌊(Σ_i w_i n_i + 128) / 256⌋, 0, top)      w_i: integers, fitted per slice
    q    = sign(e) ⌊(|e| + K) / (2K + 1)⌋,  e = v - pred     (JPEG-LS's near-lossless step)
    v'   = clamp(pred + (2K + 1) q, 0, top)                  within ±K of v

The weights are a least-squares fit over the slice (what CALIC's and MRP's adaptive linear
predictors do per image), in 1/256 units, stored with the slice; with p among the regressors
the fit itself decides how much the lossy reconstruction is worth. Each context adds its bias
to the prediction (the median error over the slice, as JPEG-LS cancels biases), and q is coded
row by row with the tables of ``tables.residual_tables`` chosen per context: the bit length of
the activity above the pixel (|U - UL| + |UR - U| + |UU - U| and the prediction errors of the
pixels above), each context's table picked by its exact cost. Every quantity the decoder
computes is an integer, so the values come out the same on any machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from clearvae.codec import coder
from clearvae.errors import DataError

CONTEXTS = 16
UNIT = 256  # weights in 1/256
MAX_WEIGHT = 2**15 - 1
MAX_BIAS = 2**15 - 1  # per-context bias of q
CAUSAL = ("L", "LL", "U", "UU", "UL", "UR", "URR", "ULL", "UUL", "UUR")
LOSSY = ("p", "pL", "pR", "pU", "pD")


def encode(values: np.ndarray, top: int, k: int, p: np.ndarray | None, tables: coder.Tables,
           check: Callable[[bytes], bytes]) -> tuple[bytes, tuple[bytes, bytes]]:
    """(params, (stream, escapes)) of one slice (H, W) of integers in 0..top; the stream ends
    in the check symbols ``check(params)`` (so that edited parameters are found)."""
    v = values.astype(np.int64)
    weights = _fit(v, p)
    # each context's bias (JPEG-LS's bias cancellation): the median error of the unbiased
    # prediction, measured losslessly (contexts do not depend on the bias)
    zero = np.zeros(CONTEXTS, np.int64)
    rows = _reconstruct(v, top, 0, p, weights, zero)
    e, c = np.stack([r for r, _ in rows]), np.stack([c for _, c in rows])
    bias = zero.copy()
    for j in range(CONTEXTS):
        if (c == j).any():
            bias[j] = np.clip(np.rint(np.median(e[c == j])), -MAX_BIAS, MAX_BIAS)
    rows = _reconstruct(v, top, k, p, weights, bias)
    q, c = np.stack([r for r, _ in rows]), np.stack([c for _, c in rows])
    choice = context_costs(q, c, tables).argmin(1)  # each context's cheapest table
    params = struct.pack(f"<B{len(weights)}h{CONTEXTS}H{CONTEXTS}h", len(weights), *weights,
                         *choice, *bias)
    stream = coder.encode_parts([(q_i, choice[c_i]) for q_i, c_i in zip(q, c)], tables,
                                check(params))
    return params, stream


def decode(params: bytes, streams: tuple[bytes, bytes], shape: tuple[int, int], top: int,
           k: int, p: np.ndarray | None, tables: coder.Tables,
           check: Callable[[bytes], bytes]) -> np.ndarray:
    """The slice's values (H, W) int64 from its params and residual streams."""
    n = len(CAUSAL) + 1 + (len(LOSSY) if p is not None else 0)
    if len(params) != 1 + 2 * n + 4 * CONTEXTS or params[0] != n:
        raise DataError("corrupt compressed file (residual parameters)")
    fields = np.array(struct.unpack_from(f"<{n}h{CONTEXTS}H{CONTEXTS}h", params, 1), np.int64)
    weights, table, bias = fields[:n], fields[n : n + CONTEXTS], fields[n + CONTEXTS :]
    if (table >= len(tables.lengths)).any() or (np.abs(bias) > MAX_BIAS).any():
        raise DataError("corrupt compressed file (residual table index or bias)")
    decoder = coder.Decoder(*streams, tables, check(params))
    rows = _reconstruct(np.zeros(shape, np.int64), top, k, p, weights, bias,
                        q_rows=lambda c: decoder.decode(table[c]))
    decoder.finish()
    return np.stack([v for v, _ in rows])


def _regressors(r: np.ndarray, i: int, p: np.ndarray | None) -> dict[str, np.ndarray]:
    """The non-left regressors of row i (W,), from the reconstructed rows above it."""
    w = r.shape[1]
    up = r[i - 1] if i >= 1 else np.zeros(w, np.int64)
    out = {"U": up, "UU": r[i - 2] if i >= 2 else up}
    out["UL"] = np.concatenate([up[:1], up[:-1]]) if i >= 1 else up
    out["UR"] = np.concatenate([up[1:], up[-1:]]) if i >= 1 else up
    out["URR"] = np.concatenate([out["UR"][1:], out["UR"][-1:]])
    out["ULL"] = np.concatenate([out["UL"][:1], out["UL"][:-1]])
    uu = out["UU"]
    out["UUL"] = np.concatenate([uu[:1], uu[:-1]])
    out["UUR"] = np.concatenate([uu[1:], uu[-1:]])
    if p is not None:
        e = np.pad(p, 1, mode="edge")
        out |= {"p": p[i], "pL": e[i + 1, :-2], "pR": e[i + 1, 2:], "pU": e[i, 1:-1],
                "pD": e[i + 2, 1:-1]}
    return out


def _names(p: np.ndarray | None) -> tuple[str, ...]:
    return CAUSAL + ("1",) + (LOSSY if p is not None else ())


def _fit(v: np.ndarray, p: np.ndarray | None) -> np.ndarray:
    """Least-squares weights (in 1/UNIT, rounded) of the regressors for the slice v."""
    reg = _all_regressors(v, p)
    a = np.stack([reg[n].reshape(-1) for n in _names(p)], 1).astype(np.float64)
    weights, *_ = np.linalg.lstsq(a, v.reshape(-1).astype(np.float64), rcond=None)
    if not np.isfinite(weights).all():
        weights = np.zeros(a.shape[1])
    return np.clip(np.round(weights * UNIT), -MAX_WEIGHT, MAX_WEIGHT).astype(np.int64)


_LEVELS = 1 << np.arange(CONTEXTS - 1)  # activity thresholds 1, 2, 4, ... 2**14


def _context_of(activity: np.ndarray) -> np.ndarray:
    """Context = how many of the thresholds 1, 2, 4, ... the activity reaches (0..15)."""
    return np.searchsorted(_LEVELS, activity, side="right").astype(np.int64)


def _contexts(r: np.ndarray, err: np.ndarray, i: int, reg: dict[str, np.ndarray]) -> np.ndarray:
    """Context 0..CONTEXTS-1 of each pixel of row i, from the rows above only."""
    activity = (np.abs(reg["U"] - reg["UL"]) + np.abs(reg["UR"] - reg["U"])
                + np.abs(reg["UU"] - reg["U"]))
    if i >= 1:
        e = np.abs(err[i - 1])
        activity = activity + e + (np.concatenate([e[:1], e[:-1]])
                                   + np.concatenate([e[1:], e[-1:]])) // 2
    return _context_of(activity)


def _shift_rows(a: np.ndarray, by: int) -> np.ndarray:
    """(H, W) -> row i holds row i - by of ``a`` (rows before the first: zeros for by = 1;
    UU of row 1 is row 0, as ``_regressors`` has it: see ``_lossless_rows``)."""
    out = np.zeros_like(a)
    out[by:] = a[:-by] if by < len(a) else out[by:]
    return out


def _shift_cols(a: np.ndarray, by: int) -> np.ndarray:
    """(H, W) -> column j holds column j - by (by > 0: from the left; < 0: from the right),
    edges repeated, as the row-wise regressors pad."""
    if by > 0:
        return np.concatenate([np.repeat(a[:, :1], by, 1), a[:, :-by]], 1)[:, : a.shape[1]]
    return np.concatenate([a[:, -by:], np.repeat(a[:, -1:], -by, 1)], 1)[:, : a.shape[1]]


def _all_regressors(v: np.ndarray, p: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every regressor of every pixel (H, W) of a known slice v: what ``_regressors`` and the
    row walk give row by row (the same edges)."""
    h, w = v.shape
    up = _shift_rows(v, 1)
    uu = _shift_rows(v, 2)
    if h > 1:
        uu[1] = v[0]  # row 1's UU is its U (the row above the first is missing)
    reg = {"U": up, "UU": uu, "UL": _shift_cols(up, 1), "UR": _shift_cols(up, -1)}
    reg["URR"] = _shift_cols(reg["UR"], -1)
    reg["ULL"] = _shift_cols(reg["UL"], 1)
    reg["UUL"], reg["UUR"] = _shift_cols(uu, 1), _shift_cols(uu, -1)
    if p is not None:
        e = np.pad(p, 1, mode="edge")
        reg |= {"p": p, "pL": e[1:-1, :-2], "pR": e[1:-1, 2:], "pU": e[:-2, 1:-1],
                "pD": e[2:, 1:-1]}
    reg["1"] = np.full((h, w), UNIT // 4, np.int64)
    left = np.concatenate([up[:, :1], v[:, :-1]], 1)  # L of column 0: the value above it
    reg["L"], reg["LL"] = left, np.concatenate([left[:, :1], left[:, :-1]], 1)
    return reg


def _lossless_rows(v: np.ndarray, top: int, p: np.ndarray | None, weights: np.ndarray,
                   bias: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``_reconstruct`` for lossless encoding (k = 0, every value known), the whole slice at
    once: the same integers as the row-by-row walk (tests check it), far faster."""
    h, w = v.shape
    names = _names(p)
    reg = _all_regressors(v, p)
    acc = sum(int(weights[names.index(n)]) * reg[n] for n in names) + UNIT // 2
    raw = np.floor_divide(acc, UNIT)
    err = v - np.clip(raw, 0, top)
    activity = (np.abs(reg["U"] - reg["UL"]) + np.abs(reg["UR"] - reg["U"])
                + np.abs(reg["UU"] - reg["U"]))
    e = np.abs(_shift_rows(err, 1))  # the errors of the row above (none above row 0)
    activity = activity + e + (_shift_cols(e, 1) + _shift_cols(e, -1)) // 2
    c = _context_of(activity)
    q = v - np.clip(raw + bias[c], 0, top)
    return list(zip(q, c))


def _reconstruct(v: np.ndarray, top: int, k: int, p: np.ndarray | None, weights: np.ndarray,
                 bias: np.ndarray, q_rows=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Walk the rows as the decoder does, each value predicted as clamp(⌊...⌋ + bias of its
    context). Encoding (``q_rows`` None): ``v`` holds the values and each row gives
    (q, contexts). Decoding: ``q_rows(contexts)`` gives each row's q and each row gives
    (values, contexts). Contexts see the unbiased prediction's errors of the rows above."""
    if k == 0 and q_rows is None:
        return _lossless_rows(v, top, p, weights, bias)
    return _walk_rows(v, top, k, p, weights, bias, q_rows)


def _walk_rows(v: np.ndarray, top: int, k: int, p: np.ndarray | None, weights: np.ndarray,
               bias: np.ndarray, q_rows=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``_reconstruct`` row by row, each value after the one to its left."""
    h, w = v.shape
    names = _names(p)
    step = 2 * k + 1
    wl, wll = int(weights[names.index("L")]), int(weights[names.index("LL")])
    r = np.zeros((h, w), np.int64)  # the reconstruction v'
    err = np.zeros((h, w), np.int64)  # v' - unbiased prediction, for the contexts below
    decoding = q_rows is not None
    out = []
    for i in range(h):
        reg = _regressors(r, i, p)
        reg["1"] = np.full(w, UNIT // 4)
        base = sum(int(weights[names.index(n)]) * reg[n] for n in names if n not in ("L", "LL"))
        base = base + UNIT // 2
        c = _contexts(r, err, i, reg)
        b = bias[c]
        first = int(reg["U"][0])
        # the prediction of each value needs the value before it
        qs = q_rows(c).tolist() if decoding else [0] * w
        vi, bs, bi = v[i].tolist(), base.tolist(), b.tolist()
        l1 = l2 = first
        vals, errs = [0] * w, [0] * w
        for j in range(w):  # the hot loop: clamps written out (no min / max calls)
            raw = (bs[j] + wl * l1 + wll * l2) // UNIT
            pred = raw + bi[j]
            pred = 0 if pred < 0 else top if pred > top else pred
            if not decoding:
                e = vi[j] - pred
                qs[j] = (abs(e) + k) // step * (1 if e >= 0 else -1)
            val = pred + step * qs[j]
            val = 0 if val < 0 else top if val > top else val
            vals[j], errs[j] = val, val - (0 if raw < 0 else top if raw > top else raw)
            l2, l1 = l1, val
        r[i], err[i] = vals, errs
        out.append((r[i].copy() if decoding else np.array(qs, np.int64), c))
    return out


def context_costs(q: np.ndarray, c: np.ndarray, tables: coder.Tables) -> np.ndarray:
    """(CONTEXTS, T) bits of coding the values ``q`` of each context (``c``, same shape) with
    each table, escapes at their varint size (a context without values: 0 for every table)."""
    values, where = np.unique(q, return_inverse=True)
    counts = np.zeros((CONTEXTS, len(values)), np.int64)
    np.add.at(counts, (c.reshape(-1), where.reshape(-1)), 1)
    return counts.astype(np.float64) @ _value_bits(values, tables).T


def _value_bits(values: np.ndarray, tables: coder.Tables) -> np.ndarray:
    """(T, V) bits of each of the distinct ``values`` under each table, escapes included."""
    rel = values[None, :] - tables.offsets[:, None]  # (T, V)
    inside = (rel >= 0) & (rel < tables.lengths[:, None])
    rows = np.arange(len(tables.lengths))[:, None]
    freq = np.where(inside, tables.freqs[rows, np.clip(rel, 0, tables.freqs.shape[1] - 1)],
                    tables.freqs[rows, tables.lengths[:, None]])
    bits = -np.log2(freq / 2.0**16)
    escape = 8.0 * np.ceil((np.floor(np.log2(2 * np.abs(values) + 2)) + 1) / 7)  # varint
    return bits + np.where(inside, 0.0, escape[None, :])
