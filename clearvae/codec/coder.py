"""Entropy coding of integer symbols with integer probability tables (numpy + constriction).

This layer knows nothing of networks. A :class:`Tables` object holds T integer frequency
tables; table t covers the symbols ``offsets[t] .. offsets[t] + lengths[t] - 1`` plus one
*escape* entry for anything outside. Every symbol is coded with the table its ``index`` names,
by rANS (constriction's ``AnsCoder``); escaped values follow in a plain varint byte stream.

Because the tables are integers stored in the model file and the per-table probabilities are
built from them with exact arithmetic, encoder and decoder see the very same probabilities on
any machine: decoding depends on no floating-point network output.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from clearvae.errors import DataError

_WORD = np.uint32
# Every stream ends in two check symbols (uniform over 256 values, 16 bits in all; the
# container derives them from the file's header): a decoder that read too many or too few
# symbols, or under another header (an edited size, a spliced stream), finds other values or
# a stream not used up, and reports the file as corrupt.
_CHECK = np.array([0xC5, 0x3A], np.int32)
_CHECK_MODEL = constriction.stream.model.Categorical(np.ones(256), perfect=False)
MAX_ESCAPES = 4096  # more escapes than this and than a quarter of the symbols: a broken model


@dataclass(frozen=True)
class Tables:
    """T integer frequency tables, padded to a common width (escape entry at ``lengths[t]``)."""

    freqs: np.ndarray  # (T, L + 1) int64, zero beyond each table's length + 1
    offsets: np.ndarray  # (T,) int64: the symbol value of entry 0
    lengths: np.ndarray  # (T,) int64: number of regular (non-escape) entries

    def __post_init__(self) -> None:
        t = self.freqs.shape[0]
        if self.offsets.shape != (t,) or self.lengths.shape != (t,):
            raise ValueError("freqs, offsets and lengths disagree on the number of tables")
        if (self.freqs < 0).any() or (self.lengths < 1).any():
            raise ValueError("frequency tables must be non-negative with at least one entry")

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray], offsets: np.ndarray, precision: int = 16) -> Tables:
        """Quantise float pmfs (without escape) to integer frequencies summing to 2**precision,
        each entry and the escape at least 1 (so every value stays codable)."""
        width = max(len(p) for p in pmfs) + 1
        freqs = np.zeros((len(pmfs), width), np.int64)
        total = 2**precision
        for t, pmf in enumerate(pmfs):
            pmf = np.clip(np.asarray(pmf, np.float64), 0, None)
            tail = max(1.0 - pmf.sum(), 0.0)
            f = np.maximum(np.round(np.append(pmf, tail) * (total - len(pmf) - 1)), 0) + 1
            f = f.astype(np.int64)
            f[np.argmax(f)] += total - f.sum()  # exact total, taken from the biggest entry
            freqs[t, : len(f)] = f
        lengths = np.array([len(p) for p in pmfs], np.int64)
        return cls(freqs, np.asarray(offsets, np.int64), lengths)

    def __getstate__(self) -> dict:  # copies and pickles leave out the model cache
        return {k: v for k, v in self.__dict__.items() if k != "_models"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def model(self, t: int) -> constriction.stream.model.Categorical:
        """Table t as constriction's model, built once (a row of many small coding calls
        would otherwise rebuild it each time)."""
        cache = self.__dict__.setdefault("_models", {})  # frozen: not a field, not compared
        if t not in cache:
            n = int(self.lengths[t]) + 1
            # Integers -> float64 exactly; constriction's quantisation of them is deterministic.
            cache[t] = constriction.stream.model.Categorical(
                self.freqs[t, :n].astype(np.float64), perfect=False)
        return cache[t]


def encode(symbols: np.ndarray, index: np.ndarray, tables: Tables,
           check: bytes = bytes(_CHECK.tolist())) -> tuple[bytes, bytes]:
    """Code integer ``symbols`` with the tables named by ``index`` (same shape).

    Returns (rANS stream, escape stream).
    """
    return encode_parts([(symbols, index)], tables, check)


def encode_parts(parts: list[tuple[np.ndarray, np.ndarray]], tables: Tables,
                 check: bytes = bytes(_CHECK.tolist())) -> tuple[bytes, bytes]:
    """Code several (symbols, index) parts into one stream that a :class:`Decoder` reads
    part by part, in order: the decoder may compute part k's index from parts 0..k-1.
    ``check``: the 2 bytes the stream ends in (the decoder must be given the same)."""
    coded, escapes = [], []  # per part: (entries, table indices), escaped values
    for symbols, index in parts:
        symbols = np.asarray(symbols, np.int64).reshape(-1)
        index = np.asarray(index, np.int64).reshape(-1)
        if symbols.shape != index.shape:
            raise ValueError(f"symbols and index differ in size ({symbols.size} vs {index.size})")
        rel = symbols - tables.offsets[index]
        escaped = (rel < 0) | (rel >= tables.lengths[index])
        coded.append((np.where(escaped, tables.lengths[index], rel).astype(np.int32), index))
        escapes.append(symbols[escaped])
    count = sum(len(e) for e in escapes)
    if count > max(MAX_ESCAPES, sum(len(i) for _, i in coded) // 4):
        raise DataError(f"{count} values fall outside the model's probability tables (a "
                        "trained model has next to none): the model file is damaged or was "
                        "edited; use another")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(_check(check), _CHECK_MODEL)  # decoded last
    for rel, index in reversed(coded):  # a stack: encode in reverse so that it decodes in order
        for t in np.unique(index)[::-1]:
            coder.encode_reverse(rel[index == t], tables.model(int(t)))
    return coder.get_compressed().tobytes(), _varints(np.concatenate(escapes))


class Decoder:
    """Reads what :func:`encode_parts` wrote: call ``decode`` once per part, in order."""

    def __init__(self, stream: bytes, escapes: bytes, tables: Tables,
                 check: bytes = bytes(_CHECK.tolist())) -> None:
        if len(stream) % 4:
            raise DataError("corrupt entropy-coded stream (length is not a whole number of "
                            "words)")
        try:
            self._coder = constriction.stream.stack.AnsCoder(
                np.frombuffer(stream, dtype=_WORD).copy())
        except Exception as exc:  # constriction rejects some invalid streams outright
            raise DataError(f"corrupt entropy-coded stream: {exc}") from None
        self._escapes, self._pos, self._tables = escapes, 0, tables
        self._check = _check(check)

    def decode(self, index: np.ndarray) -> np.ndarray:
        """The next part's symbols, shaped like its ``index``."""
        tables = self._tables
        flat = np.asarray(index, np.int64).reshape(-1)
        rel = np.empty(flat.shape, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(tables.lengths)):
            raise DataError("corrupt compressed file (table index out of range)")
        for t in np.unique(flat):
            where = flat == t
            try:
                rel[where] = self._coder.decode(tables.model(int(t)), int(where.sum()))
            except Exception as exc:  # constriction refuses some invalid states outright
                raise DataError(f"corrupt entropy-coded stream: {exc}") from None
        escaped = rel == tables.lengths[flat]
        values = rel + tables.offsets[flat]
        values[escaped], self._pos = _from_varints(self._escapes, int(escaped.sum()), self._pos)
        return values.reshape(np.shape(index))

    def finish(self) -> None:
        """Check that both streams were used up exactly: the check symbols come next, then
        nothing (a corrupt or edited file reads too many or too few symbols)."""
        try:
            check = self._coder.decode(_CHECK_MODEL, len(self._check))
        except Exception as exc:
            raise DataError(f"corrupt entropy-coded stream: {exc}") from None
        if not (np.array_equal(check, self._check) and self._coder.is_empty()):
            raise DataError("corrupt entropy-coded stream in the compressed file (it does not "
                            "end where the header says)")
        if self._pos != len(self._escapes):
            raise DataError("corrupt escape stream in the compressed file (trailing bytes)")


def decode(stream: bytes, escapes: bytes, index: np.ndarray, tables: Tables,
           check: bytes = bytes(_CHECK.tolist())) -> np.ndarray:
    """Inverse of :func:`encode`: the symbols, shaped like ``index``."""
    decoder = Decoder(stream, escapes, tables, check)
    values = decoder.decode(index)
    decoder.finish()
    return values


def _check(check: bytes) -> np.ndarray:
    if len(check) != 2:
        raise ValueError(f"check must be 2 bytes, got {len(check)}")
    return np.frombuffer(check, np.uint8).astype(np.int32)


def _varints(values: np.ndarray) -> bytes:
    """Zig-zag LEB128 varints."""
    out = bytearray()
    for v in values.tolist():
        u = (v << 1) ^ (v >> 63)
        while True:
            byte, u = u & 0x7F, u >> 7
            out.append(byte | (0x80 if u else 0))
            if not u:
                break
    return bytes(out)


def _from_varints(data: bytes, count: int, pos: int = 0) -> tuple[np.ndarray, int]:
    """``count`` values from ``data[pos:]``, and the position after them."""
    values = []
    for _ in range(count):
        u, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise DataError("corrupt escape stream in the compressed file")
            byte = data[pos]
            pos += 1
            u |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append((u >> 1) ^ -(u & 1))
    return np.array(values, np.int64), pos
