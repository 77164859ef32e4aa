"""Training: one flat loop on Lightning Fabric (CPU, one GPU, or DDP over many).

``train(config)`` reads top to bottom: set up -> (resume) -> for each step: loss, backward,
skip non-finite or exploding updates, clip, step, EMA -> log -> checkpoint. Everything random
in a step is seeded from (seed, step, rank), and the batches of a step depend only on
(seed, step), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import ctypes
import dataclasses
import io
import itertools
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from clearvae import checkpoint
from clearvae.config import Config, check_range
from clearvae.errors import ConfigError, ModelFileError, TrainingError
from clearvae.files import atomic_write, remove_stale_temporaries
from clearvae.models import VAE, build_model, model_config_from_dict, vae_loss
from clearvae.models.conv import ConvVAEConfig

CHECKPOINT_NAME = "checkpoints/last.safetensors"
BEST_NAME = "checkpoints/best.safetensors"  # keep_best: the weights of the best evaluation
MODEL_NAME = "model.safetensors"
MAX_SKIPS_IN_A_ROW = 50
MAX_CROP_PIXELS = 4096 * 4096  # data.size: a larger crop times a batch outgrows any memory
SHOWN = ("loss", "rd", "elbo", "kl", "bpp", "psnr")  # metrics on the progress bar, when present


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Where the training images come from and how they are cut to size."""

    train: str = "synthetic-digits"  # folder, MNIST IDX folder, digits CSV, or synthetic-digits
    val: str | None = None  # evaluated at the end (and every eval_every steps)
    # denoisers: this share of the training images held out to validate on (early stopping)
    val_share: float = 0.0
    size: tuple[int, int] | None = None  # crop / resize to (H, W); None keeps the data's size
    mode: Literal["crop", "resize", "full"] = "crop"
    channels: int | None = None  # 1 = gray, 3 = RGB, None = as the data is
    on_error: Literal["raise", "skip"] = "raise"  # unreadable image: stop, or warn and skip
    preload: bool = False  # image folders: decode every file once and keep it in memory
    num_workers: int = 0
    # "used": integer images divided by 2**bits - 1 for the bits they use (12-bit MRI in a
    # 16-bit PNG spans [0, 1], as the gray codec sees it); "container": by 255 / 65535
    value_range: Literal["container", "used"] = "container"
    scale: tuple[float, float] | None = None  # crops of image folders: random downscaling
    flat_share: float = 0.0  # share of training crops replaced by flat and smooth images

    def validate(self) -> None:
        from clearvae.data.images import check_scale

        check_scale(self.scale)
        check_range("data.flat_share", self.flat_share, 0, finite=True)
        if self.flat_share > 1:
            raise ConfigError(f"data.flat_share is a share of the crops, in [0, 1]; got "
                              f"{self.flat_share}")
        if not 0 <= self.val_share < 1:
            raise ConfigError(f"data.val_share is the share of the training images held out, "
                              f"in [0, 1); got {self.val_share}")
        if self.value_range not in ("container", "used"):
            raise ConfigError(f"data.value_range must be 'container' or 'used', got "
                              f"{self.value_range!r}")
        check_range("data.num_workers", self.num_workers, 0, what=" (0: load in the training "
                    "process)")
        if self.size is not None:
            h, w = self.size
            if min(h, w) < 1 or h * w > MAX_CROP_PIXELS:
                raise ConfigError(f"data.size must be (height, width) with both >= 1 and at "
                                  f"most {MAX_CROP_PIXELS} pixels (4096x4096) per crop, so "
                                  f"that a batch fits in memory; got {list(self.size)}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(Config):
    """The training objective: -ELBO with beta (beta-VAE), KL warm-up and free bits."""

    beta: float = 1.0
    kl_warmup_steps: int = 0  # beta ramps linearly from 0 over this many steps
    free_bits: float = 0.0  # nats per KL group below which the KL is not pushed down

    def validate(self) -> None:
        check_range("objective.beta", self.beta, 0, finite=True)
        check_range("objective.kl_warmup_steps", self.kl_warmup_steps, 0)
        check_range("objective.free_bits", self.free_bits, 0, finite=True)

    def beta_at(self, step: int) -> float:
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.kl_warmup_steps)


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")  # Fabric's


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Everything that defines a training run. Stored inside every checkpoint."""

    model: Config = dataclasses.field(default_factory=ConvVAEConfig)  # any family's config
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    out: str = "runs/vae"
    max_steps: int = 2000
    batch_size: int = 64  # global: split over devices
    lr: float = 1e-3
    lr_warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float | None = 200.0  # max gradient norm (None: no clipping)
    skip_threshold: float | None = None  # skip updates whose gradient norm exceeds this
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    eval_every: int = 0  # 0: evaluate only at the end
    eval_images: int = 1000
    # the model file holds the averaged weights of the evaluation with the lowest validation
    # error (denoisers with data.val_share), not the last: early stopping from noisy images
    keep_best: bool = False
    init_from: str | None = None  # start from the weights of this model file or checkpoint
    max_minutes: float | None = None  # also stop after this much wall time (equal budgets)
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # Fabric's; "bf16-mixed": codec training 1.7x faster (AVX512-BF16)
    compile: bool = False  # torch.compile the model (needs a C++ compiler; first step slow)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        data = dict(data or {})
        if isinstance(data.get("model"), dict):
            model = {"kind": "conv", **data["model"]}
            data["model"] = model_config_from_dict(model)
        return super().from_dict(data)

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every", "devices",
                     "eval_images"):
            check_range(name, getattr(self, name), 1)
        for name in ("lr_warmup_steps", "eval_every", "seed"):
            check_range(name, getattr(self, name), 0)
        check_range("lr", self.lr, 0, low_open=True, finite=True)
        check_range("weight_decay", self.weight_decay, 0, finite=True)
        check_range("grad_clip", self.grad_clip, 0, low_open=True, what=" (null: no clipping)")
        check_range("skip_threshold", self.skip_threshold, 0, low_open=True,
                    what=" (null: skip only non-finite updates)")
        check_range("max_minutes", self.max_minutes, 0, low_open=True, what=" (null: no limit)")
        if self.batch_size % self.devices:
            raise ConfigError(f"batch_size {self.batch_size} must divide by devices {self.devices}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no averaging), got "
                              f"{self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"'{self.precision}'")
        if self.data.val_share and not (self.model.kind == "denoiser"
                                        and self.model.conditional):
            raise ConfigError("data.val_share holds out images to validate a conditional "
                              "denoiser on; a VAE is validated on data.val")
        if self.keep_best and not (self.data.val_share and self.eval_every):
            raise ConfigError("keep_best needs a validation error during the run: set "
                              "data.val_share (e.g. 0.15) and eval_every (e.g. 250)")


class StepBatches(torch.utils.data.Sampler):
    """Batches of (index, seed) keys; the batch of step s depends only on (seed, s).

    Epoch e visits a permutation drawn from (seed, e); each rank takes its share of the
    global batch. The per-item seed drives random crops in the dataset.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, max_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start_step, max_steps, rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = max(1, self.n // self.batch)  # drop the last partial batch of each epoch
        perm, epoch = None, -1
        for step in range(self.start, self.stop):
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g).repeat(-(-self.batch // self.n))
            i = (step % per_epoch) * self.batch
            idx = perm[i : i + self.batch].tolist()
            keys = [(j, hash((self.seed, step, k)) & 0x7FFFFFFF) for k, j in enumerate(idx)]
            yield keys[self.rank :: self.world]


def train(config: TrainConfig, resume: bool = False, progress: bool | None = None,
          dataset: torch.utils.data.Dataset | None = None) -> Path:
    """Train (or resume) a model; returns the path of the final model file.

    ``dataset`` (items: keys ``(index, seed)`` -> (C, H, W) tensors) replaces ``data.train``,
    for images held in memory."""
    from lightning_fabric import Fabric  # imported here: slow, and only training needs it

    from clearvae.data import open_dataset

    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    _keep_freed_memory()
    fabric = Fabric(accelerator=config.accelerator, devices=config.devices,
                    strategy=config.strategy, precision=config.precision)
    fabric.launch()
    fabric.seed_everything(config.seed, verbose=False)  # the same initial weights everywhere

    config = _fit_to_data(config, dataset)
    model = build_model(config.model)
    is_vae = isinstance(model, VAE)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    start = 0
    if config.init_from and not resume:
        _init_weights(Path(config.init_from), config, model, ema)
    if resume:
        start = _restore(ckpt_path, config, model, ema, optimizer)
    elif ckpt_path.exists():
        raise TrainingError(f"'{out}' already holds a training run: pass --resume to continue "
                            "it, or choose another --out")
    if fabric.global_rank == 0:
        _remove_stale_temporaries(out)
        if (warning := _ema_warning(config)) is not None:
            warnings.warn(warning, UserWarning, stacklevel=2)
    if config.compile:  # in place: parameter names, and so checkpoints, stay as they are
        model.compile(dynamic=False)
    model, optimizer = fabric.setup(model, optimizer)
    ema.to(fabric.device)

    d = config.data
    source = d.train if dataset is None else "in memory"
    if dataset is None:
        dataset = open_dataset(d.train, "train", size=d.size, mode=d.mode, channels=d.channels,
                               on_error=d.on_error, preload=d.preload,
                               value_range=d.value_range, scale=d.scale,
                               context=_slice_context(config.model))
        if d.flat_share:
            from clearvae.data.registry import WithFlat

            dataset = WithFlat(dataset, d.flat_share)
    val_set = None
    if d.val_share:
        from clearvae.data.registry import hold_out

        dataset, val_set = hold_out(dataset, d.val_share, config.seed)
    sampler = StepBatches(len(dataset), config.batch_size, config.seed, start, config.max_steps,
                          fabric.global_rank, fabric.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         num_workers=d.num_workers)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    info = {"data": source, "data_images": len(dataset), "world_size": fabric.world_size}
    if val_set is not None:
        info["val_images"] = len(val_set)
    best = _best_so_far(out / BEST_NAME) if resume else None  # (step, error) or None
    validates = bool(d.val and is_vae or val_set is not None)
    val_at: tuple[int, dict[str, float]] | None = None  # the latest evaluation: (step, metrics)

    saved = start if resume else None  # the step of the checkpoint on disk (None: none yet)
    with _writing("the training log in", out, ckpt_path, saved):
        logger = MetricsLog(out, start, enabled=fabric.global_rank == 0)
    bar = _progress(fabric, start, config.max_steps, progress)
    skipped_in_a_row, t0, last, done = 0, time.perf_counter(), config.max_steps, start
    with _CtrlC() as ctrl_c:
        try:
            for step, x in zip(range(start, config.max_steps), loader):
                torch.manual_seed(hash((config.seed, step, fabric.global_rank)) & 0x7FFFFFFF)
                for group in optimizer.param_groups:
                    group["lr"] = _lr(config, step)
                metrics = train_step(fabric, model, optimizer, x, config, step)
                if metrics["skipped"]:
                    skipped_in_a_row += 1
                    fabric.print(f"step {step}: skipped the update (gradient norm "
                                 f"{metrics['grad_norm']:.3g}, loss {metrics['loss']:.4g})")
                    if skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
                        raise TrainingError(_diverged_message(config, step))
                else:
                    skipped_in_a_row = 0
                    _update_ema(ema, model, config.ema_decay)
                done = step + 1
                bar.update(1)
                if config.max_minutes and done % config.log_every == 0:
                    over = time.perf_counter() - t0 > 60 * config.max_minutes
                    if fabric.broadcast(over):  # rank 0's clock decides for everyone
                        last = done
                if done % config.log_every == 0 or done == last:
                    metrics["steps_per_s"] = (done - start) / (time.perf_counter() - t0)
                    with _writing("the metrics", logger.path, ckpt_path, saved):
                        logger.log(done, metrics)
                    _show(fabric, bar, metrics, done, config.max_steps)
                if config.eval_every and done % config.eval_every == 0 and validates:
                    val = _validate(ema, config, fabric, val_set)
                    val_at = done, val
                    with _writing("the metrics", logger.path, ckpt_path, saved):
                        logger.log(done, val)
                    if config.keep_best and fabric.global_rank == 0:
                        best = _keep_if_best(out / BEST_NAME, config, ema, done, val, best,
                                             ckpt_path, saved)
                if done % config.checkpoint_every == 0 or done == last:
                    info["replica_fingerprints"] = _check_replicas(fabric, model)
                    if fabric.global_rank == 0:
                        with _writing("the checkpoint", ckpt_path, ckpt_path, saved):
                            save_checkpoint(ckpt_path, config, model, ema, optimizer, done, info)
                    saved = done
                if done == last:
                    break
                if ctrl_c.pressed(fabric):  # the first Ctrl-C: stop after a whole step
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            logger.close(quiet=True)
            if fabric.global_rank == 0:
                _checkpoint_on_interrupt(ckpt_path, config, model, ema, optimizer, done, saved,
                                         info, forced=ctrl_c.forced)
            raise
    bar.close()
    with _writing("the metrics", logger.path, ckpt_path, saved):
        logger.close()

    info["steps"] = last
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    if validates:  # the last step's evaluation, unless the loop has just made it
        fresh = val_at is None or val_at[0] != last
        info["val"] = _validate(ema, config, fabric, val_set) if fresh else val_at[1]
    model_path = out / MODEL_NAME
    if config.keep_best and fabric.global_rank == 0:
        best = _keep_if_best(out / BEST_NAME, config, ema, last, info["val"], best, ckpt_path,
                             saved)
        if best[0] != last:  # the model file: the best weights, not the last
            ema.load_state_dict(checkpoint.load_file(out / BEST_NAME).tensors)
        info |= {"best_step": best[0], "best_val_mse": best[1]}
        fabric.print(f"keep_best: the weights of step {best[0]} (validation error "
                     f"{best[1]:.6g}; step {last}: {info['val']['val_mse']:.6g})")
    if fabric.global_rank == 0:
        with _writing("the model", model_path, ckpt_path, saved):
            checkpoint.save_file(model_path, "model", ema.state_dict(), config.model.to_dict(),
                                 info)
        fabric.print(f"model written to {model_path}")
    fabric.barrier()
    return model_path


def _show(fabric: Any, bar: Any, metrics: dict[str, float], step: int, total: int) -> None:
    """Metrics on the progress bar, or a line per log interval where there is no live bar."""
    shown = {k: f"{metrics[k]:.3f}" for k in SHOWN if k in metrics}
    bar.set_postfix(shown)
    if bar.disable:
        eta = (total - step) / metrics["steps_per_s"]
        fabric.print(f"step {step}/{total}  " + "  ".join(f"{k} {v}" for k, v in shown.items())
                     + f"  {metrics['steps_per_s']:.2f} steps/s  eta {eta:.0f}s")


def vae_objective(model: VAE, x: Tensor, objective: ObjectiveConfig,
                  step: int) -> tuple[Tensor, dict[str, float]]:
    """-ELBO with beta warm-up and free bits, per pixel value (so the lr does not depend on
    the image size), and the metrics to log (per image, in nats)."""
    target = model.likelihood.target(x)  # dynamic binarization for Bernoulli
    terms = vae_loss(model(x, target), objective.beta_at(step), objective.free_bits)
    metrics = {k: v.item() for k, v in terms._asdict().items()}
    return terms.loss / model.dims, metrics


def codec_objective(model: Any, x: Tensor, objective: ObjectiveConfig,
                    step: int) -> tuple[Tensor, dict[str, float]]:
    """Rate-distortion loss of the image codec at a random quality per image."""
    from clearvae.codec.model import rd_loss

    return rd_loss(model, x)


def denoiser_objective(model: Any, x: Tensor, objective: ObjectiveConfig,
                       step: int) -> tuple[Tensor, dict[str, float]]:
    """-ELBO of the denoising VAE under its noise model."""
    from clearvae.models.denoiser import denoise_objective

    return denoise_objective(model, x, objective, step)


# The loss of each model family: (model, batch, objective, step) -> (loss, metrics).
OBJECTIVES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {
    "dense": vae_objective, "conv": vae_objective, "hierarchical": vae_objective,
    "denoiser": denoiser_objective, "hyperprior": codec_objective,
}


def train_step(fabric: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
               config: TrainConfig, step: int) -> dict[str, float]:
    """One update. A non-finite or (with ``skip_threshold``) exploding gradient skips it."""
    model.train()
    loss, metrics = OBJECTIVES[config.model.kind](model, x, config.objective, step)
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    # Gradients are already all-reduced, so every rank reaches the same decision.
    norm, aux_norm = _clip_gradients(fabric, model, optimizer, config.grad_clip)
    skip = not math.isfinite(norm + aux_norm) or (
        config.skip_threshold is not None and norm > config.skip_threshold)
    if skip:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return {**metrics, "grad_norm": norm, "aux_grad_norm": aux_norm,
            "lr": optimizer.param_groups[0]["lr"], "skipped": float(skip)}


def _clip_gradients(fabric: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    max_norm: float | None) -> tuple[float, float]:
    """Clip the gradients to ``max_norm`` (None: no clipping); return their norm before
    clipping and that of the auxiliary parameters, which are left out of both. A model
    names these in ``auxiliary_parameters()``: parameters moved by a loss of their own (the
    codec's prior quantiles), whose gradient would otherwise dominate the norm (the codec's
    grew to ~3000 while its rate-distortion gradients stayed far below) and so decide what
    the clip and ``skip_threshold`` see."""
    auxiliary = getattr(model, "auxiliary_parameters", None)
    aux_ids = {id(p) for p in auxiliary()} if auxiliary is not None else set()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    main = [p for p in params if id(p) not in aux_ids]
    aux = [p for p in params if id(p) in aux_ids]
    fabric.strategy.precision.unscale_gradients(optimizer)  # what fabric.clip_gradients does
    norm = torch.nn.utils.clip_grad_norm_(main, max_norm or math.inf, error_if_nonfinite=False)
    # an infinite max_norm only measures (torch.nn.utils.get_total_norm needs torch 2.6)
    aux_norm = float(torch.nn.utils.clip_grad_norm_(aux, math.inf)) if aux else 0.0
    return float(norm), aux_norm


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of unmapping it: every training step allocates
    the same large tensors again, and re-mapping them made CPU steps 1.4-1.7x slower here.
    Does nothing where glibc's ``mallopt`` is not available."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap, not mmap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: do not give the heap back eagerly
    except (OSError, AttributeError):
        pass


def _lr(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant."""
    return config.lr * min(1.0, (step + 1) / max(1, config.lr_warmup_steps))


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _check_replicas(fabric: Any, model: torch.nn.Module) -> list[float]:
    """Every replica's weight fingerprint; raise if they differ (replicas out of sync)."""
    with torch.no_grad():
        fingerprint = sum(float(p.double().abs().sum()) * (i + 1)
                          for i, p in enumerate(model.parameters()))
    everyone = fabric.all_gather(torch.tensor(fingerprint, dtype=torch.float64,
                                              device=fabric.device)).reshape(-1).tolist()
    if any(f != everyone[0] for f in everyone):
        raise TrainingError(f"replicas diverged: weight fingerprints {everyone}")
    return everyone


def save_checkpoint(path: Path, config: TrainConfig, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int, info: dict[str, Any]) -> None:
    """Write everything needed to resume, atomically."""
    opt_tensors, groups = checkpoint.optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    tensors |= {f"optim.{k}": v for k, v in opt_tensors.items()}
    checkpoint.save_file(path, "checkpoint", tensors, config.model.to_dict(),
                         {**info, "step": step},
                         extra={"train_config": json.dumps(config.to_dict()), "optimizer": groups})


def _kept(ckpt_path: Path, saved: int | None) -> str:
    """What a stopped run leaves to continue from."""
    if saved is None or saved == 0:
        return "No checkpoint was written yet, so no training steps are kept."
    return (f"The last good checkpoint (step {saved}) is kept in '{ckpt_path}': run the same "
            "command with --resume to continue from it.")


@contextlib.contextmanager
def _writing(what: str, path: Path, ckpt_path: Path, saved: int | None) -> Iterator[None]:
    """Turn an OSError while writing ``what`` (a full disk, a read-only folder, a missing
    permission) into a TrainingError that says what was kept."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TrainingError(f"cannot write {what} '{path}': {reason}. {_kept(ckpt_path, saved)} "
                            "Free some space or fix the folder's permissions first.") from None


class _CtrlC:
    """While training, the first Ctrl-C asks to stop after the current step, which is then
    checkpointed (a step cut in the middle could leave the optimizer half-updated); a second
    Ctrl-C stops at once. Only in the main thread, and only where Python's own handler is in
    place (else a KeyboardInterrupt arrives as usual and the last whole step is kept)."""

    def __init__(self) -> None:
        self.requested = self.forced = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _CtrlC:
        # SIGTERM (kill, a scheduler, a session ending) stops the same way: a run started in
        # the background ignores SIGINT, and its work must not be lost either
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        if threading.current_thread() is threading.main_thread():
            for sig, default in defaults.items():
                if signal.getsignal(sig) is default:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{what}: stopping after this step, with a checkpoint ({what} again to stop "
              "at once, without one)", file=sys.stderr, flush=True)

    def pressed(self, fabric: Any) -> bool:
        """Whether to stop now; with several processes, rank 0's Ctrl-C decides for all."""
        return bool(fabric.broadcast(self.requested)) if fabric.world_size > 1 else self.requested


def _checkpoint_on_interrupt(ckpt_path: Path, config: TrainConfig, model: torch.nn.Module,
                             ema: torch.nn.Module, optimizer: torch.optim.Optimizer, done: int,
                             saved: int | None, info: dict[str, Any], forced: bool) -> None:
    """Keep the ``done`` whole steps of an interrupted run in a checkpoint, and say how to
    continue."""
    if forced:
        message = f"stopped at once. {_kept(ckpt_path, saved)}"
    elif done == (saved or 0):
        message = f"interrupted at step {done}. {_kept(ckpt_path, saved)}"
    else:
        try:
            save_checkpoint(ckpt_path, config, model, ema, optimizer, done, info)
            message = f"interrupted at step {done}. {_kept(ckpt_path, done)}"
        except OSError as exc:
            message = (f"interrupted at step {done}, and the checkpoint could not be written "
                       f"({exc.strerror or exc}). {_kept(ckpt_path, saved)}")
    print(message, file=sys.stderr, flush=True)


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files that an earlier run killed mid-write left in ``out`` (only the exact
    names ``atomic_write`` gives them for the files training writes)."""
    for path in (out / CHECKPOINT_NAME, out / BEST_NAME, out / MODEL_NAME, out / MetricsLog.NAME):
        for stale in remove_stale_temporaries(path.parent, path.name):
            print(f"removed '{stale}', left by an interrupted write", file=sys.stderr)


def _ema_warning(config: TrainConfig) -> str | None:
    """A warning when the run is too short for ``ema_decay``: the averaged weights, which
    become the model file, would still hold much of the random initialisation."""
    d, n = config.ema_decay, config.max_steps
    if d == 0 or n >= 3 / (1 - d):
        return None
    share = d**n  # weight of the initial weights in the average after n steps
    most = math.floor((1 - 3 / n) * 1e4) / 1e4  # averages over at most a third of the run
    advice = (f"Set ema_decay to at most {most:g} (e.g. --set ema_decay={most:g}), or 0 to "
              "keep the last weights." if most > 0 else
              "Set ema_decay to 0 (--set ema_decay=0) to keep the last weights.")
    return (f"ema_decay {d:g} averages the weights over ~{1 / (1 - d):.0f} steps, but the run "
            f"is only max_steps {n} long: {share:.0%} of the saved model (the averaged "
            f"weights) would still be its random initial weights"
            + (", so it would sample noise. " if share > 0.5 else ". ") + advice)


def _slice_context(model: Config) -> int:
    """Neighbouring slices on each side that a 2.5-D denoiser's data must stack (a codec's
    ``context_slices`` are latent channel slices, not image slices)."""
    return model.context_slices if model.kind == "denoiser" else 0


def _fit_to_data(config: TrainConfig, dataset: Any = None) -> TrainConfig:
    """``config`` with the model parameters that come from the training data filled in: the
    noise level of a denoiser trained on noisy images, estimated from (up to 200 of) them.
    Deterministic, so a resumed run estimates the same values and matches its checkpoint."""
    from clearvae.data import open_dataset
    from clearvae.noise import fit_noise

    model = config.model
    if model.kind != "denoiser" or model.noise.known:
        return config
    d = config.data
    if dataset is None:  # whole images, not crops
        dataset = open_dataset(d.train, "train", channels=d.channels, on_error=d.on_error,
                               value_range=d.value_range)
    images = [_hwc(dataset[i]) for i in range(min(len(dataset), 200))]
    noise = fit_noise(model.noise, images)
    print(f"noise model estimated from {len(images)} training images: "  # every rank: same
          f"{ {k: round(v, 6) for k, v in noise.to_dict().items() if isinstance(v, float)} }")
    return dataclasses.replace(config, model=dataclasses.replace(model, noise=noise))


def _hwc(x: Tensor) -> Any:
    return x.permute(1, 2, 0).numpy()


def _restore(path: Path, config: TrainConfig, model: torch.nn.Module, ema: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint into the fresh objects; returns the step to continue from."""
    if not path.exists():
        raise TrainingError(f"nothing to resume: '{path}' does not exist (train without --resume)")
    loaded = checkpoint.load_file(path, expect="checkpoint")  # checked against its config
    try:
        saved = TrainConfig.from_dict(json.loads(loaded.metadata["train_config"]))
    except ConfigError as exc:
        raise ModelFileError(f"'{path}' holds a training config this clearvae cannot use: "
                             f"{exc}") from None
    if saved.model != config.model:
        raise TrainingError(f"'{path}' was trained with a different model config; resume with "
                            "the same model settings or start a new run in another --out")
    model.load_state_dict(loaded.section("model"))
    ema.load_state_dict(loaded.section("ema"))
    try:
        checkpoint.load_optimizer_state(optimizer, loaded.section("optim"),
                                        loaded.metadata["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # groups of another model
        raise ModelFileError(f"'{path}': its optimizer state does not fit the model ({exc}): "
                             "the file is damaged") from None
    return loaded.info["step"]


def _init_weights(path: Path, config: TrainConfig, model: torch.nn.Module,
                  ema: torch.nn.Module) -> None:
    """Warm start: the (averaged) weights of an earlier run with the same model config, or
    with one that differs only in parts the new config adds (its ``ADDABLE`` keys, e.g. a
    codec's ``context_slices``): those parts keep their initialisation."""
    loaded = checkpoint.load_file(path)
    old = model_config_from_dict(loaded.model_config)
    new = config.model
    addable = getattr(new, "ADDABLE", {})  # config key -> prefix of the weights it adds
    same_but_added = type(old) is type(new) and all(
        getattr(old, f.name) == getattr(new, f.name)
        for f in dataclasses.fields(new) if f.name not in addable)
    if old != new and not same_but_added:
        raise TrainingError(f"init_from '{path}' holds a model with another config; use a "
                            "model config identical to the one it was trained with"
                            + (f" (or differing only in {', '.join(addable)})" if addable
                               else ""))
    weights = loaded.weights()
    added = tuple(addable[k] for k in addable if getattr(old, k) != getattr(new, k))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=not added)
    except RuntimeError as exc:  # e.g. parts of another size
        raise TrainingError(f"init_from '{path}': its weights do not fit the model "
                            f"({str(exc).splitlines()[-1].strip()})") from None
    if unexpected or any(not key.startswith(added) for key in missing):
        raise TrainingError(f"init_from '{path}': its weights do not fit the model "
                            f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
    ema.load_state_dict(model.state_dict())


def _validate(ema: torch.nn.Module, config: TrainConfig, fabric: Any,
              val_set: torch.utils.data.Dataset | None) -> dict[str, float]:
    """Validation metrics: a VAE's on data.val, a denoiser's on its held-out images."""
    if val_set is None:
        return _val_metrics(ema, config, fabric)
    return _denoiser_val_metrics(ema, config, fabric, val_set)


@torch.no_grad()
def _denoiser_val_metrics(ema: torch.nn.Module, config: TrainConfig, fabric: Any,
                          val_set: torch.utils.data.Dataset) -> dict[str, float]:
    """``val_mse``: the denoiser's validation error (``models.denoiser.validation_error``)
    on the held-out images, each cropped, flipped and noised the same way at every
    evaluation (its seeds are fixed), so that two evaluations differ only by the weights."""
    from clearvae.models.denoiser import validation_error

    n = min(len(val_set), config.eval_images)
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 0x7A1)
        for i in range(0, n, config.batch_size):
            keys = range(i, min(n, i + config.batch_size))
            x = torch.stack([val_set[(j, config.seed + j)] for j in keys]).to(fabric.device)
            total += validation_error(ema, x).item() * len(keys)
    return {"val_mse": total / n}


def _best_so_far(path: Path) -> tuple[int, float] | None:
    """(step, validation error) of the best weights a resumed run kept, or None."""
    if not path.exists():
        return None
    info = checkpoint.load_file(path, expect="model").info
    return info["step"], info["val_mse"]


def _keep_if_best(path: Path, config: TrainConfig, ema: torch.nn.Module, step: int,
                  val: dict[str, float], best: tuple[int, float] | None, ckpt_path: Path,
                  saved: int | None) -> tuple[int, float]:
    """Write the averaged weights to ``path`` when their validation error is the lowest yet;
    the (step, error) of the best."""
    if best is not None and best[1] <= val["val_mse"]:
        return best
    with _writing("the best weights", path, ckpt_path, saved):
        checkpoint.save_file(path, "model", ema.state_dict(), config.model.to_dict(),
                             {"step": step, "val_mse": val["val_mse"]})
    return step, val["val_mse"]


def _val_metrics(ema: VAE, config: TrainConfig, fabric: Any) -> dict[str, float]:
    from clearvae.evaluate import evaluate_spec

    d = config.data
    result = evaluate_spec(ema, d.val, size=d.size, mode=d.mode, channels=d.channels,
                           limit=config.eval_images, iw_samples=0, device=fabric.device)
    return {f"val_{k}": v for k, v in result.items() if isinstance(v, float)}


def _diverged_message(config: TrainConfig, step: int) -> str:
    return (f"training diverged: {MAX_SKIPS_IN_A_ROW} updates in a row had non-finite or "
            f"exploding gradients (at step {step}). Lower lr (now {config.lr}), raise "
            "lr_warmup_steps or kl_warmup_steps, or set grad_clip; then --resume from the last "
            "checkpoint.")


class MetricsLog:
    """Appends metrics to ``metrics.csv`` and TensorBoard (``tensorboard/``) on rank 0. Both
    are written in this thread (not TensorBoard's background one), so that a failed write is
    an OSError here, which ``train`` reports with what was kept."""

    NAME = "metrics.csv"
    FIELDS = ("step", "name", "value")

    def __init__(self, out: Path, start_step: int, enabled: bool = True) -> None:
        self.enabled, self.path = enabled, out / self.NAME
        self.tb: _EventFile | None = None
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            self._forget_after(start_step)
            self.tb = _EventFile.open(out / "tensorboard", purge_step=start_step or None)

    def _forget_after(self, step: int) -> None:
        """A resumed run drops the rows its interrupted predecessor logged past ``step`` (and
        a row cut short by a full disk or a kill)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f)
                    if _whole_row(r) and int(r["step"]) <= step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, text.getvalue().encode())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rows = [{"step": step, "name": k, "value": v} for k, v in metrics.items()]
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if self.tb is not None:
            self.tb.scalars(step, metrics)

    def close(self, quiet: bool = False) -> None:
        """Close the TensorBoard file (``quiet``: ignoring a failure, when already stopping)."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with contextlib.suppress(OSError) if quiet else contextlib.nullcontext():
                tb.close()


def _whole_row(row: dict[str, Any]) -> bool:
    step, name, value = (row.get(k) for k in MetricsLog.FIELDS)
    return isinstance(step, str) and step.isdecimal() and bool(name) and value is not None


class _EventFile:
    """A TensorBoard event file written synchronously (what SummaryWriter writes, without
    its writer thread, whose errors would surface as a traceback of their own)."""

    _count = itertools.count()

    def __init__(self, file: Any, pb: Any) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._file, self._pb, self._records = file, pb, RecordWriter(file)

    @classmethod
    def open(cls, folder: Path, purge_step: int | None) -> _EventFile | None:
        """A new event file in ``folder``; None without tensorboard (the CSV is enough).
        ``purge_step``: TensorBoard drops what earlier files logged from this step on."""
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
        except ImportError:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(cls._count)}")
        events = cls(open(folder / name, "ab"), (event_pb2, summary_pb2))
        events._write(file_version="brain.Event:2")
        if purge_step is not None:  # as SummaryWriter(purge_step=...) marks a restart
            events._write(step=purge_step, session_log=event_pb2.SessionLog(
                status=event_pb2.SessionLog.START))
        events._file.flush()
        return events

    def _write(self, **fields: Any) -> None:
        event = self._pb[0].Event(wall_time=time.time(), **fields)
        self._records.write(event.SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._pb[1].Summary
        for tag, value in values.items():
            self._write(step=step, summary=summary(value=[summary.Value(
                tag=tag, simple_value=float(value))]))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _progress(fabric: Any, start: int, total: int, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=start, disable=not enabled or fabric.global_rank != 0,
                unit="step", dynamic_ncols=True)
