"""Training: one flat loop on Lightning Fabric (CPU, one GPU, or DDP over many).

``train(config)`` reads top to bottom: set up -> (resume) -> for each step: loss, backward,
skip non-finite or exploding updates, clip, step, EMA -> log -> checkpoint. Everything random
in a step is seeded from (seed, step, rank), and the batches of a step depend only on
(seed, step), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from clearvae import checkpoint
from clearvae.config import Config
from clearvae.errors import ConfigError, TrainingError
from clearvae.files import atomic_write
from clearvae.models import VAE, build_model, model_config_from_dict, vae_loss
from clearvae.models.conv import ConvVAEConfig

CHECKPOINT_NAME = "checkpoints/last.safetensors"
MODEL_NAME = "model.safetensors"
MAX_SKIPS_IN_A_ROW = 50
SHOWN = ("loss", "rd", "elbo", "kl", "bpp", "psnr")  # metrics on the progress bar, when present


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Where the training images come from and how they are cut to size."""

    train: str = "synthetic-digits"  # folder, MNIST IDX folder, digits CSV, or synthetic-digits
    val: str | None = None  # evaluated at the end (and every eval_every steps)
    size: tuple[int, int] | None = None  # crop / resize to (H, W); None keeps the data's size
    mode: Literal["crop", "resize", "full"] = "crop"
    channels: int | None = None  # 1 = gray, 3 = RGB, None = as the data is
    on_error: Literal["raise", "skip"] = "raise"  # unreadable image: stop, or warn and skip
    preload: bool = False  # image folders: decode every file once and keep it in memory
    num_workers: int = 0


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(Config):
    """The training objective: -ELBO with beta (beta-VAE), KL warm-up and free bits."""

    beta: float = 1.0
    kl_warmup_steps: int = 0  # beta ramps linearly from 0 over this many steps
    free_bits: float = 0.0  # nats per KL group below which the KL is not pushed down

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
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every", "devices"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.devices:
            raise ConfigError(f"batch_size {self.batch_size} must divide by devices {self.devices}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"'{self.precision}'")


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
    if config.compile:  # in place: parameter names, and so checkpoints, stay as they are
        model.compile(dynamic=False)
    model, optimizer = fabric.setup(model, optimizer)
    ema.to(fabric.device)

    d = config.data
    source = d.train if dataset is None else "in memory"
    if dataset is None:
        dataset = open_dataset(d.train, "train", size=d.size, mode=d.mode, channels=d.channels,
                               on_error=d.on_error, preload=d.preload)
    sampler = StepBatches(len(dataset), config.batch_size, config.seed, start, config.max_steps,
                          fabric.global_rank, fabric.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         num_workers=d.num_workers)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    info = {"data": source, "data_images": len(dataset), "world_size": fabric.world_size}

    logger = MetricsLog(out, start, enabled=fabric.global_rank == 0)
    bar = _progress(fabric, start, config.max_steps, progress)
    skipped_in_a_row, t0, last = 0, time.perf_counter(), config.max_steps
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
        bar.update(1)
        if config.max_minutes and (step + 1) % config.log_every == 0:
            over = time.perf_counter() - t0 > 60 * config.max_minutes
            if fabric.broadcast(over):  # rank 0's clock decides for everyone
                last = step + 1
        if (step + 1) % config.log_every == 0 or step + 1 == last:
            metrics["steps_per_s"] = (step + 1 - start) / (time.perf_counter() - t0)
            logger.log(step + 1, metrics)
            shown = {k: f"{metrics[k]:.3f}" for k in SHOWN if k in metrics}
            bar.set_postfix(shown)
            if bar.disable:  # no live bar (not a terminal): a line per log interval instead
                eta = (config.max_steps - step - 1) / metrics["steps_per_s"]
                fabric.print(f"step {step + 1}/{config.max_steps}  "
                             + "  ".join(f"{k} {v}" for k, v in shown.items())
                             + f"  {metrics['steps_per_s']:.2f} steps/s  eta {eta:.0f}s")
        if config.eval_every and (step + 1) % config.eval_every == 0 and d.val and is_vae:
            logger.log(step + 1, _val_metrics(ema, config, fabric))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == last:
            info["replica_fingerprints"] = _check_replicas(fabric, model)
            if fabric.global_rank == 0:
                save_checkpoint(ckpt_path, config, model, ema, optimizer, step + 1, info)
        if step + 1 == last:
            break
    bar.close()
    logger.close()

    info["steps"] = last
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    if d.val and is_vae:
        info["val"] = _val_metrics(ema, config, fabric)
    model_path = out / MODEL_NAME
    if fabric.global_rank == 0:
        checkpoint.save_file(model_path, "model", ema.state_dict(), config.model.to_dict(), info)
        fabric.print(f"model written to {model_path}")
    fabric.barrier()
    return model_path


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
        dataset = open_dataset(d.train, "train", channels=d.channels, on_error=d.on_error)
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
    loaded = checkpoint.load_file(path, expect="checkpoint")
    saved = TrainConfig.from_dict(json.loads(loaded.metadata["train_config"]))
    if saved.model != config.model:
        raise TrainingError(f"'{path}' was trained with a different model config; resume with "
                            "the same model settings or start a new run in another --out")
    model.load_state_dict(loaded.section("model"))
    ema.load_state_dict(loaded.section("ema"))
    groups = loaded.metadata["optimizer"]
    checkpoint.load_optimizer_state(optimizer, loaded.section("optim"), groups)
    return int(loaded.info["step"])


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
    """Appends metrics to ``metrics.csv`` and TensorBoard (``tensorboard/``) on rank 0."""

    def __init__(self, out: Path, start_step: int, enabled: bool = True) -> None:
        self.enabled, self.path = enabled, out / "metrics.csv"
        self.tb = None
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            self._forget_after(start_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)
            except ImportError:  # tensorboard is optional: CSV is always written
                self.tb = None

    def _forget_after(self, step: int) -> None:
        """A resumed run drops the rows its interrupted predecessor logged past ``step``."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["step", "name", "value"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, text.getvalue().encode())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rows = [{"step": step, "name": k, "value": v} for k, v in metrics.items()]
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "name", "value"])
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _progress(fabric: Any, start: int, total: int, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=start, disable=not enabled or fabric.global_rank != 0,
                unit="step", dynamic_ncols=True)
