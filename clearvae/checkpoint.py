"""Self-describing model and checkpoint files (safetensors: tensors + JSON metadata).

A file holds only tensors and strings, so loading one never runs code from it. Metadata keys:

- ``format`` = "clearvae", ``format_version``, ``clearvae_version``
- ``kind``: "model" (weights to use) or "checkpoint" (everything needed to resume training)
- ``model_config``: the model's config as JSON (its ``kind`` names the family)
- ``info``: JSON with the training data, steps, metrics and anything else worth keeping
- checkpoints also: ``train_config`` and ``optimizer`` (JSON hyper-parameters of the groups)

Tensor names: a model file holds the model's ``state_dict``; a checkpoint prefixes them with
``model.`` (live weights), ``ema.`` (averaged weights) and ``optim.<param>.<state>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from clearvae import __version__
from clearvae.errors import ModelFileError
from clearvae.files import atomic_write

FORMAT_VERSION = 1
FileKind = Literal["model", "checkpoint"]


@dataclass
class Loaded:
    """The contents of a clearvae file."""

    kind: FileKind
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    model_config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def weights(self, which: Literal["ema", "live"] = "ema") -> dict[str, torch.Tensor]:
        """The network weights to use: a model file's own (without its coding tables), or a
        checkpoint's averaged (``ema``) or current (``live``) ones."""
        if self.kind == "checkpoint":
            return self.section("model" if which == "live" else "ema")
        return {k: v for k, v in self.tensors.items() if not k.startswith("tables.")}


def save_file(path: str | os.PathLike, kind: FileKind, tensors: dict[str, torch.Tensor],
              model_config: dict[str, Any], info: dict[str, Any] | None = None,
              extra: dict[str, str] | None = None) -> Path:
    """Write a clearvae file atomically."""
    metadata = {
        "format": "clearvae", "format_version": str(FORMAT_VERSION),
        "clearvae_version": __version__, "kind": kind,
        "model_config": json.dumps(model_config), "info": json.dumps(info or {}),
        **(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, st_save(tensors, metadata=metadata))


def load_file(path: str | os.PathLike, expect: FileKind | None = None) -> Loaded:
    """Read and check a clearvae file; every problem is a ModelFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(
            f"'{path}' is not a readable clearvae model file (corrupt, truncated or another "
            f"format): {exc}"
        ) from None
    if metadata.get("format") != "clearvae":
        raise ModelFileError(f"'{path}' is a safetensors file but not a clearvae model file")
    version = int(metadata.get("format_version", "0") or 0)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' uses file format {version}, written by clearvae "
            f"{metadata.get('clearvae_version')}; this clearvae ({__version__}) reads format "
            f"{FORMAT_VERSION}: upgrade clearvae"
        )
    kind = metadata.get("kind")
    if expect is not None and kind != expect:
        raise ModelFileError(f"'{path}' is a clearvae {kind} file, expected a {expect} file")
    try:
        model_config = json.loads(metadata.get("model_config", "{}"))
        info = json.loads(metadata.get("info", "{}"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"'{path}' has corrupt metadata: {exc}") from None
    return Loaded(kind, tensors, metadata, model_config, info)  # type: ignore[arg-type]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer's state into named tensors plus its param groups as JSON."""
    state = optimizer.state_dict()
    tensors = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{pid}.{name}"] = t
    return tensors, json.dumps(state["param_groups"])


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         groups_json: str) -> None:
    """Inverse of ``optimizer_tensors``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})
