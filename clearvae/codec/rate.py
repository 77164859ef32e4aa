"""Rate control: the quality that meets a target size, rate or PSNR, for one image.

The quality is continuous (steps of 1/16 between the trained qualities) and the rate rises
with it, so each target is a bisection over the quality steps at effort 0, where a trial costs
one pass of h_a and the coder (g_a runs once per image, ``Codec.prepare``). At a higher effort
a trial costs a refinement, so the search there starts from the effort-0 answer, corrects it
by the ratio that refinement gave (it lowers the rate at the same quality, and raises the
PSNR), and tries at most ``EFFORT_TRIALS`` qualities:

    target_bpp   the trial whose real bits per pixel (header included) is nearest the target
                 (an error when even quality 1 or Q misses it by more than 10 %)
    max_bytes    the highest quality whose file has at most this many bytes (never more)
    target_psnr  the smallest file whose PSNR (8-bit, against the input) reaches the target
"""

from __future__ import annotations

import math
from collections.abc import Callable

from clearvae.codec.codec import Codec, Encoded, Prepared, Progress
from clearvae.codec.container import QUALITY_STEPS
from clearvae.errors import ConfigError, DataError

EFFORT_TRIALS = 3
REACH_TOLERANCE = 0.1  # a target_bpp further than this beyond the qualities' range: an error


class _Trials:
    """Encodings of one prepared image, by (quality steps, effort), each made once."""

    def __init__(self, codec: Codec, prep: Prepared, reconstruct: bool,
                 progress: Progress | None) -> None:
        self.codec, self.prep, self.reconstruct, self.progress = codec, prep, reconstruct, progress
        self.done: dict[tuple[int, int], Encoded] = {}
        self.psnrs: dict[tuple[int, int], float] = {}  # bisection asks for some more than once

    def __call__(self, steps: int, effort: int = 0) -> Encoded:
        if (steps, effort) not in self.done:
            self.done[steps, effort] = self.codec.encode(
                self.prep, steps, effort, reconstruct=self.reconstruct,
                progress=self.progress if effort else None)
        return self.done[steps, effort]

    def size(self, steps: int, effort: int = 0) -> int:
        return len(self(steps, effort).data)

    def psnr(self, steps: int, effort: int = 0) -> float:
        if (steps, effort) not in self.psnrs:
            self.psnrs[steps, effort] = self(steps, effort).psnr(self.prep.x)
        return self.psnrs[steps, effort]


def search(codec: Codec, prep: Prepared, effort: int, target_bpp: float | None = None,
           max_bytes: int | None = None, target_psnr: float | None = None,
           progress: Progress | None = None) -> Encoded:
    """The encoding that meets exactly one of the targets (see the module docstring)."""
    given = [k for k, v in (("target_bpp", target_bpp), ("max_bytes", max_bytes),
                            ("target_psnr", target_psnr)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give one of target_bpp, max_bytes and target_psnr, got "
                          f"{', '.join(given) or 'none'}")
    lo, hi = QUALITY_STEPS, codec.qualities * QUALITY_STEPS  # the range of quality steps
    t = _Trials(codec, prep, target_psnr is not None, progress)
    if target_bpp is not None:
        if not _positive(target_bpp):
            raise ConfigError(f"target_bpp must be a positive number, got {target_bpp!r}")
        goal = target_bpp * prep.pixels / 8  # bytes

        def nearest(size: Callable[[int], float]) -> int:
            s = _bisect(lambda s: size(s) <= goal, lo, hi)
            return min({s, min(s + 1, hi)}, key=lambda s: abs(size(s) - goal))

        for steps, side in ((lo, "lowest"), (hi, "highest")):
            reach = 8 * t.size(steps) / prep.pixels
            if (reach > target_bpp) == (side == "lowest") and \
                    abs(reach / target_bpp - 1) > REACH_TOLERANCE:
                raise DataError(f"{target_bpp} bpp is out of reach for this image: its "
                                f"{side} quality gives {reach:.3f} bpp (at effort 0)")
        best = t(nearest(t.size))
        if effort:
            tried = _follow(t, best, effort, lambda ratio: nearest(lambda s: t.size(s) * ratio),
                            lambda s: t.size(s, effort) / t.size(s))
            best = min([best, *tried], key=lambda r: (abs(len(r.data) - goal), -r.effort))
        return best
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if t.size(lo) > max_bytes:
            raise DataError(f"no quality fits in {max_bytes} bytes: the smallest file for this "
                            f"image is {t.size(lo)} bytes (quality 1)")
        best = t(_bisect(lambda s: t.size(s) <= max_bytes, lo, hi))
        if effort:
            tried = _follow(t, best, effort,
                            lambda ratio: _bisect(lambda s: t.size(s) * ratio <= max_bytes, lo,
                                                  hi),
                            lambda s: t.size(s, effort) / t.size(s))
            fits = [r for r in tried if len(r.data) <= max_bytes]
            best = max([best, *fits], key=lambda r: (len(r.data), r.effort))
        return best
    if not isinstance(target_psnr, (int, float)) or not 0 < target_psnr < 100:
        raise ConfigError(f"target_psnr must be a number of dB between 0 and 100, got "
                          f"{target_psnr!r}")

    def lowest(psnr: Callable[[int], float]) -> int:
        """The lowest quality step whose PSNR reaches the target (hi if none)."""
        if psnr(lo) >= target_psnr:
            return lo
        return min(_bisect(lambda s: psnr(s) < target_psnr, lo, hi) + 1, hi)

    if t.psnr(hi) < target_psnr:
        raise DataError(f"{target_psnr} dB is out of reach for this image: the highest quality "
                        f"gives {t.psnr(hi):.2f} dB (at effort 0)")
    best = t(lowest(t.psnr))
    if effort:  # refinement raises the PSNR: a lower quality may do at effort E
        tried = _follow(t, best, effort, lambda gain: lowest(lambda s: t.psnr(s) + gain),
                        lambda s: t.psnr(s, effort) - t.psnr(s))
        reached = [r for r in tried if r.psnr(prep.x) >= target_psnr]
        best = min([best, *reached], key=lambda r: (len(r.data), -r.effort))
    return best


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def _bisect(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest s in [lo, hi] with ok(s), for ok true up to some point and false after;
    lo when even ok(lo) is false."""
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _follow(t: _Trials, start: Encoded, effort: int, predict: Callable[[float], int],
            correction: Callable[[int], float]) -> list[Encoded]:
    """Effort-E trials: from the effort-0 answer, try the quality that the effort-0 curve,
    corrected by what refinement changed at the last trial, predicts; at most EFFORT_TRIALS."""
    steps = round(start.quality * QUALITY_STEPS)
    tried = []
    for _ in range(EFFORT_TRIALS):
        tried.append(t(steps, effort))
        nxt = predict(correction(steps))
        if (nxt, effort) in t.done:
            break
        steps = nxt
    return tried
