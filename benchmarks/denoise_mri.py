"""MRI denoising under Rician noise: NLM, BM3D, BM4D and our denoisers on the same volumes.

    python benchmarks/denoise_mri.py                       # -> runs/denoise-mri-bench
    ... --quick --methods noisy,nlm,bm3d,bm4d --levels 5    # a quick check (11 slices)
    ... --methods ours --model runs/denoise-mri/model.safetensors
    ... --methods ours_noisy_only --noisy-only-minutes 30 --noisy-only-levels 5

Protocol, the same for every method:

    volumes = the units denoised together, from ../shared/data/mri/test (--data):
              vanderbilt_b0  read_volume(dicom/vanderbilt_dti_ax).values[0:40], the b = 0
                             volume (40 slices, 80x80, 12-bit); all 40 are denoised, the first
                             20 (the png/vanderbilt_b0_*.png slices) evaluated
              emri           read_volume(dicom_single/emri_small.dcm).values: 10 frames 64x64
              singles        png/pydicom_mr2_shoulder.png (1024x1024),
                             png/pydicom_siemens_abdomen.png (484x484), png/msd_brain_3.png,
                             png/msd_brain_4.png (240x240): each a 1-slice volume
              34 evaluated slices in all (--quick: emri and msd_brain_3, 11 slices)
    clean   = the stored values as float64; peak = max(clean volume), the image's own range
    noisy   = clearvae.noise.add_rician_noise(clean, sigma), sigma = level / 100 * peak, then
              rounded to integers and clipped at 0 (stored values are integers); the noise is
              fixed by (--seed, volume index, level), so every method sees the same volume
    output  = method(noisy volume), clipped at 0 (a magnitude), not rounded
    PSNR    = 10 log10(peak^2 / MSE) per evaluated slice, MSE over the slice; means over the
              slices, per method and level and per group (vanderbilt_b0 / emri / singles)
    SSIM    = skimage.metrics.structural_similarity(clean, output, data_range=peak) per slice
    seconds = time.perf_counter around the method on the whole volume / its slices; the cell's
              s / slice is the MEDIAN over its evaluated slices (each counts its volume's)

Every method is told the true sigma except ours (bundled or --model), which estimates it.

    noisy       the input itself
    nlm         skimage denoise_nl_means slice by slice on noisy / peak: h = 0.8 sigma, sigma,
                patch_size 5, patch_distance 6, fast_mode (sigma on that scale), times peak
    bm3d        bm3d.bm3d(noisy / peak, sigma_psd=sigma / peak) slice by slice, times peak
    bm4d        bm4d.bm4d(volume / peak, sigma_psd=sigma / peak) on the volume as one 3-D
                array. bm4d takes (H, W, Z), slices on the LAST axis (a 2-D array becomes
                (H, W, 1), and its profile picks 3-D blocks from z.shape[2] >= 5), so the
                (S, H, W) volume goes in as np.moveaxis(volume, 0, -1). A single slice has no
                volume: bm4d runs bm3d.bm3d on it, recorded per volume as its algorithm
    <x>+unbias  for x = nlm, bm3d, bm4d: the same output through clearvae.noise.rician_unbias
                (these assume Gaussian noise, so they estimate the Rician mean, biased upward
                where the signal is low; the correction maps it back). Its seconds include x's
    ours        clearvae.restore.denoise.denoise_volume(noisy_u, model, samples=0), model =
                load_denoiser(--model, medical=True), noisy_u = noisy / (2^bits - 1), bits =
                max(1, max(noisy).bit_length()) (the scale of the gray codec and `clearvae
                denoise`), output mean * (2^bits - 1). Blind; where it finds no background to
                estimate sigma from (DataError) it is given sigma / (2^bits - 1) * 255, and the
                volume records sigma_given
    ours_x8     ours, each slice also denoised flipped and turned (8 ways) and the 8 estimates
                averaged after turning back (`clearvae denoise --ensemble`); 8 x the time
    ours_noisy_only   per level in --noisy-only-levels: the denoise-noisy preset trained for
                --noisy-only-minutes on the noisy volumes of that level alone (Rician noise of
                the true sigma, 2.5-D: context_slices 1, random 64x64 crops of every slice
                between its neighbours), then denoised as ours, with sigma given. One model has
                one sigma, but sigma / (2^bits - 1) differs by 2x between these volumes, so
                each volume is divided by scale = sigma / u instead, u = min over the volumes
                of sigma / (2^bits - 1): every volume then has noise u (<= 1 after scaling,
                since scale >= 2^bits - 1 >= max(noisy)). Training time is recorded apart, not
                in s / slice. ema_decay is 0.99, not the preset's 0.999: a CPU budget of
                minutes is a few hundred steps, where a 0.999 average would still hold most of
                the random initial weights (--noisy-only-set overrides it, or any setting)

A method that cannot run (a package or model missing, a level the model refuses, a failure
inside it) is recorded as skipped with the reason, not a crash. Writes OUT/denoise_mri.json
(command, date, machine, protocol; per method and level: means, per-group means, per-volume
and per-slice numbers, seconds) and OUT/denoise_mri.md, after every finished method, so an
interrupted run keeps what it measured. Run it from the repo root as a script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from machine import machine_info
from skimage.metrics import structural_similarity
from skimage.restoration import denoise_nl_means

from clearvae import checkpoint
from clearvae.data.images import fit_to_size, split_key, used_bits
from clearvae.data.medical import read_volume
from clearvae.errors import ClearvaeError, DataError
from clearvae.files import atomic_write
from clearvae.noise import add_rician_noise, rician_unbias

if TYPE_CHECKING:
    from clearvae.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
METHODS = ["noisy", "nlm", "bm3d", "bm4d", "ours", "ours_x8", "ours_noisy_only"]
DEFAULT_METHODS = METHODS[:-1]
UNBIASED = ("nlm", "bm3d", "bm4d")  # Gaussian denoisers that also get a +unbias row
GROUPS = ("vanderbilt_b0", "emri", "singles")
# name, group, file or folder under --data, slices taken, slices evaluated (None: all)
VOLUMES = [("vanderbilt_b0", "vanderbilt_b0", "dicom/vanderbilt_dti_ax", 40, 20),
           ("emri", "emri", "dicom_single/emri_small.dcm", None, None),
           ("pydicom_mr2_shoulder", "singles", "png/pydicom_mr2_shoulder.png", None, None),
           ("pydicom_siemens_abdomen", "singles", "png/pydicom_siemens_abdomen.png", None, None),
           ("msd_brain_3", "singles", "png/msd_brain_3.png", None, None),
           ("msd_brain_4", "singles", "png/msd_brain_4.png", None, None)]
QUICK = ("emri", "msd_brain_3")

# (S, H, W) noisy volume on the stored scale, sigma and peak on that scale
#   -> (S, H, W) estimate on that scale, notes about this volume (e.g. sigma given)
VolumeDenoiser = Callable[[np.ndarray, float, float], tuple[np.ndarray, dict]]


@dataclasses.dataclass
class BenchVolume:
    """One unit denoised together; its first ``evaluated`` slices are scored."""

    name: str
    group: str
    clean: np.ndarray  # (S, H, W) float64, the stored values
    evaluated: int

    @property
    def peak(self) -> float:
        return float(self.clean.max())


@dataclasses.dataclass
class Run:
    """One method's output on one volume."""

    estimate: np.ndarray  # (S, H, W) on the stored scale
    seconds: float
    notes: dict


@dataclasses.dataclass
class Cell:
    """One method at one noise level: means over the slices, or the reason it did not run."""

    method: str
    level: int  # sigma in percent of the clean volume's max
    psnr: float | None = None
    ssim: float | None = None
    seconds_per_slice: float | None = None  # median over the evaluated slices
    count: int = 0
    groups: dict[str, dict] = dataclasses.field(default_factory=dict)  # psnr, ssim, count
    volumes: list[dict] = dataclasses.field(default_factory=list)  # seconds, notes
    slices: list[dict] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. the training record


# --- data, noise and metrics -----------------------------------------------------------------

def load_volumes(data: Path, quick: bool) -> list[BenchVolume]:
    """The test volumes of the protocol (module doc), as float64 stored values."""
    if not data.is_dir():
        raise SystemExit(f"error: no MRI test data at '{data}': pass --data with the folder "
                         "holding dicom/, dicom_single/ and png/ (../shared/data/mri/test), "
                         "or set CLEARVAE_DATA")
    volumes = []
    for name, group, path, taken, evaluated in VOLUMES:
        if quick and name not in QUICK:
            continue
        try:
            values = read_volume(data / path).values[:taken]
        except DataError as exc:
            raise SystemExit(f"error: cannot read the test volume {name}: {exc}") from None
        volumes.append(BenchVolume(name, group, values.astype(np.float64),
                                   evaluated or len(values)))
    return volumes


def add_noise(clean: np.ndarray, level: int, seed: int, index: int) -> np.ndarray:
    """Rician noise of sigma = level % of the volume's max, rounded to integers, >= 0; fixed
    by (seed, volume index, level)."""
    sigma = level / 100 * float(clean.max())
    noise_seed = int(np.random.SeedSequence([seed, index, level]).generate_state(1)[0])
    noisy = add_rician_noise(clean, sigma, noise_seed).astype(np.float64)
    return np.maximum(np.rint(noisy), 0.0)


def psnr(mse: float, peak: float) -> float:
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak**2 / mse))


def score(method: str, level: int, volumes: list[BenchVolume], runs: list[Run]) -> Cell:
    """PSNR, SSIM and seconds of a method's outputs, per slice, group and overall."""
    cell = Cell(method, level)
    for v, run in zip(volumes, runs):
        out = np.maximum(np.asarray(run.estimate, np.float64).reshape(v.clean.shape), 0.0)
        per_slice = run.seconds / len(v.clean)
        cell.volumes.append({"volume": v.name, "group": v.group, "slices": len(v.clean),
                             "evaluated": v.evaluated, "seconds": run.seconds,
                             "seconds_per_slice": per_slice, **run.notes})
        for i in range(v.evaluated):
            mse = float(np.mean((out[i] - v.clean[i]) ** 2))
            ssim = structural_similarity(v.clean[i], out[i], data_range=v.peak)
            cell.slices.append({"volume": v.name, "group": v.group, "slice": i, "mse": mse,
                                "psnr": psnr(mse, v.peak), "ssim": float(ssim),
                                "seconds": per_slice})
    cell.count = len(cell.slices)
    cell.psnr, cell.ssim = (float(np.mean([r[k] for r in cell.slices])) for k in ("psnr", "ssim"))
    cell.seconds_per_slice = float(np.median([r["seconds"] for r in cell.slices]))
    for group in GROUPS:
        rows = [r for r in cell.slices if r["group"] == group]
        if rows:
            cell.groups[group] = {"psnr": float(np.mean([r["psnr"] for r in rows])),
                                  "ssim": float(np.mean([r["ssim"] for r in rows])),
                                  "count": len(rows)}
    groups = "  ".join(f"{g} {c['psnr']:.2f}" for g, c in cell.groups.items())
    print(f"{method:>16} {level:>2} %  PSNR {cell.psnr:6.2f} dB  SSIM {cell.ssim:.4f}  "
          f"{cell.seconds_per_slice:8.4f} s/slice  ({groups})", flush=True)
    return cell


def skip(method: str, level: int, reason: str) -> Cell:
    print(f"{method:>16} {level:>2} %  skipped: {reason}", flush=True)
    return Cell(method, level, skipped=reason)


# --- methods: (S, H, W) noisy, sigma, peak on the stored scale -> estimate, notes ------------

def slice_by_slice(fn: Callable[[np.ndarray, float], np.ndarray]) -> VolumeDenoiser:
    """A 2-D denoiser of (H, W) images on the [0, 1]-ish scale noisy / peak, run per slice."""
    def run(noisy: np.ndarray, sigma: float, peak: float) -> tuple[np.ndarray, dict]:
        out = [np.asarray(fn(y / peak, sigma / peak)).reshape(y.shape) for y in noisy]
        return np.stack(out) * peak, {}

    return run


def nlm(y: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_nl_means(y, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True)


def bm3d_slice(y: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d  # benchmark-only dependency: pip install -e ".[bench]"

    return bm3d.bm3d(y, sigma_psd=sigma)


_BM3D_DONE: dict[tuple, np.ndarray] = {}  # BM3D outputs of this run, for bm4d's single slices


def bm3d_volume(noisy: np.ndarray, sigma: float, peak: float) -> tuple[np.ndarray, dict]:
    """BM3D slice by slice; kept, so that bm4d's single slices do not run it twice."""
    key = (noisy.shape, sigma, peak, hash(noisy.tobytes()))
    if key in _BM3D_DONE:
        out, seconds = _BM3D_DONE[key]
        return out.copy(), {"seconds_of_bm3d": seconds}
    t0 = time.perf_counter()
    out, _ = slice_by_slice(bm3d_slice)(noisy, sigma, peak)
    _BM3D_DONE[key] = out, time.perf_counter() - t0
    return out.copy(), {}


def bm4d_volume(noisy: np.ndarray, sigma: float, peak: float) -> tuple[np.ndarray, dict]:
    """BM4D on the volume (bm4d wants (H, W, Z)); BM3D on a single slice (the bm3d method's
    own output when it ran in this run: its seconds are then bm3d's, not measured again)."""
    if len(noisy) == 1:
        out, notes = bm3d_volume(noisy, sigma, peak)
        return out, {"algorithm": "bm3d.bm3d (one slice: no volume)", **notes}
    import bm4d  # benchmark-only dependency: pip install bm4d

    out = bm4d.bm4d(np.moveaxis(noisy / peak, 0, -1), sigma_psd=sigma / peak)  # (H, W, S)
    return np.moveaxis(np.asarray(out).reshape(*noisy.shape[1:], -1), -1, 0) * peak, \
        {"algorithm": "bm4d.bm4d (H, W, S)"}


CLASSICAL: dict[str, VolumeDenoiser] = {
    "noisy": lambda noisy, sigma, peak: (noisy.copy(), {}),
    "nlm": slice_by_slice(nlm), "bm3d": bm3d_volume, "bm4d": bm4d_volume}


def ours(model: torch.nn.Module, ensemble: bool = False) -> VolumeDenoiser:
    """Our (blind) MRI denoiser on the used-bits scale; given sigma where it finds none.
    ``ensemble``: averaged over the 8 flips and quarter turns (``denoise --ensemble``)."""
    from clearvae.restore.denoise import denoise_volume

    def run(noisy: np.ndarray, sigma: float, peak: float) -> tuple[np.ndarray, dict]:
        top = float(2 ** used_bits(noisy) - 1)
        x = (noisy / top).astype(np.float32)
        notes: dict = {"sigma_true_255": sigma / top * 255, "sigma_given": False}
        try:
            out = denoise_volume(x, model, samples=0, ensemble=ensemble)
        except DataError as exc:  # e.g. no background: told the true sigma (recorded)
            out = denoise_volume(x, model, samples=0, sigma=sigma / top * 255,
                                 ensemble=ensemble)
            notes.update(sigma_given=True, why_sigma_given=str(exc))
        notes["sigma_255"] = out.sigma  # as estimated (or given), on the 0-255 scale of x
        return out.mean.astype(np.float64) * top, notes

    return run


def ours_scaled(model: torch.nn.Module, unit_sigma: float) -> VolumeDenoiser:
    """A model trained for one noise sigma (``unit_sigma``, [0, 1] scale) on each volume
    divided by sigma / unit_sigma, so that its noise is that sigma; given sigma."""
    from clearvae.restore.denoise import denoise_volume

    def run(noisy: np.ndarray, sigma: float, peak: float) -> tuple[np.ndarray, dict]:
        scale = sigma / unit_sigma
        out = denoise_volume((noisy / scale).astype(np.float32), model, samples=0,
                             sigma=255 * unit_sigma)
        return out.mean.astype(np.float64) * scale, {"scale": scale, "sigma_given": True}

    return run


class NoisyStacks(torch.utils.data.Dataset):
    """Every slice of some volumes as a (2k + 1, H, W) float32 stack, between its k neighbours
    on each side in its volume (repeated at the ends), cut to ``size``: the contract of
    ``MedicalSlices(context=k)`` for volumes held in memory. Keys: ``index`` (centre crop) or
    ``(index, seed)`` (a crop placed by the seed)."""

    def __init__(self, volumes: list[np.ndarray], size: tuple[int, int] | None,
                 context: int = 1) -> None:
        self.volumes = [np.asarray(v, np.float32) for v in volumes]  # each (S, H, W)
        self.slices = [(v, i) for v, vol in enumerate(self.volumes) for i in range(len(vol))]
        self.size, self.context = size, context

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = split_key(key, len(self))
        v, i = self.slices[index]
        volume = self.volumes[v]
        around = np.clip(np.arange(i - self.context, i + self.context + 1), 0, len(volume) - 1)
        x = fit_to_size(volume[around], self.size, "crop", seed)  # (2k + 1, h, w)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def noisy_only_config(args: argparse.Namespace, level: int, unit_sigma: float) -> TrainConfig:
    """The denoise-noisy preset for Rician noise of ``unit_sigma`` ([0, 1] scale), 2.5-D,
    for --noisy-only-minutes, with the --noisy-only-set settings on top."""
    from clearvae.config import parse_override, set_nested
    from clearvae.restore.presets import preset
    from clearvae.training import TrainConfig  # training pulls in Fabric: only here

    data = preset("denoise-noisy")
    data["model"]["noise"] = {"kind": "rician", "sigma": 255 * unit_sigma}
    data["model"]["backbone"]["context_slices"] = 1
    data["data"]["train"] = "in memory"
    data.update(out=str(args.out / f"noisy-only-{level}"), max_minutes=args.noisy_only_minutes,
                max_steps=10**9, ema_decay=0.99)  # the time is the budget; 0.99: module doc
    for text in args.noisy_only_set:
        set_nested(data, *parse_override(text))
    return TrainConfig.from_dict(data)


def fit_noisy_only(args: argparse.Namespace, level: int, noisy: list[np.ndarray],
                   sigmas: list[float]) -> tuple[VolumeDenoiser, dict]:
    """Train on this level's noisy volumes alone (module doc); the denoiser and its record."""
    from clearvae.restore.denoise import load_denoiser
    from clearvae.training import CHECKPOINT_NAME, train

    unit_sigma = min(s / (2 ** used_bits(y) - 1) for y, s in zip(noisy, sigmas))
    config = noisy_only_config(args, level, unit_sigma)
    if (Path(config.out) / CHECKPOINT_NAME).exists():  # train() would suggest its --resume
        raise DataError(f"'{config.out}' already holds a training run: remove it, or pass "
                        "another --out")
    scaled = [y / (s / unit_sigma) for y, s in zip(noisy, sigmas)]
    dataset = NoisyStacks(scaled, config.data.size, config.model.backbone.context_slices)
    t0 = time.perf_counter()
    path = train(config, dataset=dataset, progress=False)
    info = {"train_seconds": time.perf_counter() - t0, "train_minutes_budget":
            args.noisy_only_minutes, "model": str(path), "train_slices": len(dataset),
            "unit_sigma_255": 255 * unit_sigma, "train_settings": list(args.noisy_only_set)}
    trained = checkpoint.read_file(path).info  # keep_best: which step's weights it kept
    info |= {k: trained[k] for k in ("steps", "val_images", "best_step", "best_val_mse")
             if k in trained}
    return ours_scaled(load_denoiser(path), unit_sigma), info


# --- running ---------------------------------------------------------------------------------

def run_volumes(method: str, fn: VolumeDenoiser, volumes: list[BenchVolume],
                noisy: list[np.ndarray], sigmas: list[float], level: int) -> list[Run]:
    runs = []
    for v, y, sigma in zip(volumes, noisy, sigmas):
        t0 = time.perf_counter()
        out, notes = fn(y, sigma, v.peak)
        seconds = notes.pop("seconds_of_bm3d", None)  # reused, not rerun: its own seconds
        runs.append(Run(out, time.perf_counter() - t0 if seconds is None else seconds, notes))
        print(f"{method} {level} % {v.name} ({len(y)} slices): {runs[-1].seconds:.2f} s",
              flush=True)
    return runs


def unbiased(run: Run, sigma: float) -> Run:
    """The same output mapped from the Rician mean to the signal; seconds include both."""
    t0 = time.perf_counter()
    out = rician_unbias(np.maximum(run.estimate, 0.0), sigma)
    return Run(out, run.seconds + time.perf_counter() - t0, run.notes)


def measure(method: str, fn: VolumeDenoiser, volumes: list[BenchVolume],
            noisy: list[np.ndarray], sigmas: list[float], level: int) -> list[Cell]:
    """The method's cell at this level (and its +unbias cell), or why it could not run."""
    names = [method, f"{method}+unbias"] if method in UNBIASED else [method]
    try:
        runs = run_volumes(method, fn, volumes, noisy, sigmas, level)
    except Exception as exc:  # any failure inside a method is recorded, not a crash
        return [skip(name, level, f"{type(exc).__name__}: {exc}") for name in names]
    cells = [score(method, level, volumes, runs)]
    if len(names) == 2:
        cells.append(score(names[1], level, volumes,
                           [unbiased(r, s) for r, s in zip(runs, sigmas)]))
    return cells


def run_ours(args: argparse.Namespace, volumes: list[BenchVolume], noisy: list[np.ndarray],
             sigmas: list[float], level: int, cache: dict, name: str = "ours") -> list[Cell]:
    """The bundled (or --model) MRI denoiser, loaded once for every level; ``name`` ours_x8:
    with the x8 self-ensemble."""
    if name not in cache:
        try:
            from clearvae.restore.denoise import load_denoiser

            cache[name] = ours(load_denoiser(args.model, medical=True),
                               ensemble=name == "ours_x8")
        except (ImportError, ClearvaeError) as exc:
            cache[name] = f"{type(exc).__name__}: {exc}"
    if isinstance(cache[name], str):
        return [skip(name, level, cache[name])]
    return measure(name, cache[name], volumes, noisy, sigmas, level)


def run_noisy_only(args: argparse.Namespace, volumes: list[BenchVolume],
                   noisy: list[np.ndarray], sigmas: list[float], level: int) -> list[Cell]:
    name = "ours_noisy_only"
    if level not in args.noisy_only_levels:
        return [skip(name, level, "not run: only at --noisy-only-levels "
                                  f"{','.join(map(str, args.noisy_only_levels))} (CPU cost)")]
    print(f"{name} {level} %: training for up to {args.noisy_only_minutes:g} min on "
          f"{len(volumes)} noisy volumes", flush=True)
    try:
        fn, info = fit_noisy_only(args, level, noisy, sigmas)
    except Exception as exc:  # as in measure: a failed training is recorded, not a crash
        return [skip(name, level, f"{type(exc).__name__}: {exc}")]
    cells = measure(name, fn, volumes, noisy, sigmas, level)
    cells[0].extra.update(info)
    return cells


# --- report ----------------------------------------------------------------------------------

def rows(methods: list[str]) -> list[str]:
    """The table's rows: every method, each Gaussian denoiser followed by its +unbias."""
    return [r for m in methods for r in ([m, f"{m}+unbias"] if m in UNBIASED else [m])]


def markdown(result: dict, cells: list[Cell]) -> str:
    m, levels = result["machine"], result["levels"]
    by = {(c.method, c.level): c for c in cells}
    groups = [g for g in GROUPS if any(v["group"] == g for v in result["volumes"])]
    lines = [f"### MRI, Rician noise: {result['evaluated_slices']} slices of "
             f"{len(result['volumes'])} volumes ({result['date'][:10]})", "",
             f"Machine: {m['cpu_model'] or m['processor'] or 'unknown CPU'} ({m['platform']}), "
             f"{m['cpu_count']} CPUs, {m['torch_threads']} torch thread(s); scikit-image "
             f"{m['scikit-image']}, bm3d {m['bm3d']}, bm4d {m['bm4d']}, torch {m['torch']}.", "",
             f"Command: `{result['command']}`", "",
             "| method | " + " | ".join(f"{f} % PSNR / SSIM" for f in levels) + " | s / slice |",
             "|---|" + "---:|" * (len(levels) + 1)]
    notes: list[str] = []
    for method in rows(result["methods"]):
        text, times = [], []
        for f in levels:
            c = by.get((method, f))
            if c is None:
                text.append("")
            elif c.skipped:
                text.append("skipped")
                notes.append(f"- {method}, {f} %: {c.skipped}")
            else:
                text.append(f"{c.psnr:.2f} / {c.ssim:.4f}")
                times.append(c.seconds_per_slice)
        lines.append(f"| {method} | " + " | ".join(text) +
                     f" | {f'{np.mean(times):.4f}' if times else ''} |")
    lines += ["", "PSNR in dB on each volume's own peak (max of the clean volume), SSIM with "
              "that data range: means over the evaluated slices. Noise: Rician, sigma = level "
              "× peak, rounded to integers. s / slice: the median over the slices of seconds "
              "on the volume / its slices, averaged over the levels that ran (per level in "
              "the JSON).", "", "PSNR per group (dB):", "",
              "| method | " + " | ".join(f"{f} % {g}" for f in levels for g in groups) + " |",
              "|---|" + "---:|" * (len(levels) * len(groups))]
    for method in rows(result["methods"]):
        text = []
        for f in levels:
            c = by.get((method, f))
            text += [f"{c.groups[g]['psnr']:.2f}" if c and g in c.groups else "" for g in groups]
        lines.append(f"| {method} | " + " | ".join(text) + " |")
    counts = ", ".join(f"{v['name']} {v['evaluated']} of {v['slices']}"
                       for v in result["volumes"])
    lines += ["", f"Slices evaluated: {counts}."]
    given = sorted({f"- {c.method}, {c.level} %: {v['volume']}" for c in cells
                    for v in c.volumes if c.method == "ours" and v.get("sigma_given")})
    if given:
        lines += ["", "Sigma given to ours (no background to estimate it from):", "", *given]
    singles = sorted({f"{c.method}: {v['volume']} by {v['algorithm']}" for c in cells
                      for v in c.volumes if c.method == "bm4d"
                      and v.get("algorithm", "").startswith("bm3d")})
    if singles:
        lines += ["", "Single slices, no volume: " + "; ".join(singles) + "."]
    trained = [f"- {c.method}, {c.level} %: trained {c.extra['train_seconds']:.0f} s on "
               f"{c.extra['train_slices']} noisy slices" + _kept_step(c.extra) for c in cells
               if "train_seconds" in c.extra]
    if trained:
        lines += ["", "Training (not in s / slice):", "", *trained]
    if notes:
        lines += ["", "Skipped:", "", *notes]
    return "\n".join(lines).rstrip() + "\n"


def _kept_step(extra: dict) -> str:
    """What keep_best kept, for the training line: the step of the weights used."""
    if "best_step" not in extra:
        return ""
    return (f" ({extra['val_images']} of them held out: the weights of step "
            f"{extra['best_step']} of {extra['steps']}, validation error "
            f"{extra['best_val_mse']:.3g})")


def write(args: argparse.Namespace, result: dict, cells: list[Cell]) -> None:
    """Write the JSON and the markdown as they stand (called after every finished method)."""
    result["results"] = [dataclasses.asdict(c) for c in cells]
    atomic_write(args.out / "denoise_mri.json", json.dumps(result, indent=1).encode())
    atomic_write(args.out / "denoise_mri.md", markdown(result, cells).encode())


# --- command line ----------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or any(not 0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers 1..99 (percent), got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}; choose from "
                                         f"{','.join(METHODS)} (x+unbias comes with x)")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "denoise-mri-bench",
                   help="folder for the json and md (default: runs/denoise-mri-bench)")
    p.add_argument("--data", type=Path, default=SHARED / "mri" / "test",
                   help="the MRI test folder (default: %(default)s)")
    p.add_argument("--levels", type=_ints, default=[3, 5, 9],
                   help="Rician sigma in percent of each volume's max (default 3,5,9)")
    p.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                   help=f"comma list of {','.join(METHODS)} (default: "
                        f"{','.join(DEFAULT_METHODS)})")
    p.add_argument("--model", help="our MRI denoiser's model file or checkpoint (default: the "
                                   "bundled one)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help=f"only {' and '.join(QUICK)} (11 slices), for a check")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--noisy-only-minutes", type=float, default=10.0,
                   help="training time per level for ours_noisy_only (default 10)")
    p.add_argument("--noisy-only-levels", type=_ints, default=[5],
                   help="levels at which ours_noisy_only is trained (default 5)")
    p.add_argument("--noisy-only-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for ours_noisy_only (as clearvae train --set), "
                        "e.g. precision=bf16-mixed; repeatable")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.noisy_only_minutes <= 0:
        p.error(f"--noisy-only-minutes must be > 0, got {args.noisy_only_minutes}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    volumes = load_volumes(args.data, args.quick)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "benchmarks/denoise_mri.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine_info(("numpy", "scikit-image", "bm3d", "bm4d", "pydicom")),
              "data": str(args.data), "levels": args.levels, "methods": args.methods,
              "seed": args.seed, "model": args.model or "bundled MRI denoiser",
              "protocol": __doc__.split("Protocol, the same for every method:")[1].strip(),
              "evaluated_slices": sum(v.evaluated for v in volumes),
              "volumes": [{"name": v.name, "group": v.group, "shape": list(v.clean.shape),
                           "slices": len(v.clean), "evaluated": v.evaluated, "peak": v.peak}
                          for v in volumes]}
    cells: list[Cell] = []
    cache: dict = {}
    for level in args.levels:
        noisy = [add_noise(v.clean, level, args.seed, i) for i, v in enumerate(volumes)]
        sigmas = [level / 100 * v.peak for v in volumes]
        for method in args.methods:
            if method in CLASSICAL:
                cells += measure(method, CLASSICAL[method], volumes, noisy, sigmas, level)
            elif method in ("ours", "ours_x8"):
                cells += run_ours(args, volumes, noisy, sigmas, level, cache, method)
            else:
                cells += run_noisy_only(args, volumes, noisy, sigmas, level)
            write(args, result, cells)
    print(f"wrote {args.out}/denoise_mri.json, denoise_mri.md", flush=True)


if __name__ == "__main__":
    main()
