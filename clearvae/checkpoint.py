"""Self-describing model and checkpoint files (safetensors: tensors + JSON metadata).

A file holds only tensors and strings, so loading one never runs code from it. Metadata keys:

- ``format`` = "clearvae", ``format_version``, ``clearvae_version``
- ``kind``: "model" (weights to use) or "checkpoint" (everything needed to resume training)
- ``model_config``: the model's config as JSON (its ``kind`` names the family)
- ``info``: JSON with the training data, steps, metrics and anything else worth keeping
- checkpoints also: ``train_config`` and ``optimizer`` (JSON hyper-parameters of the groups)

Tensor names: a model file holds the model's ``state_dict``; a checkpoint prefixes them with
``model.`` (live weights), ``ema.`` (averaged weights) and ``optim.<param>.<state>``.

``load_file`` checks a whole file before anything uses it: the metadata fields and their
types, then every tensor against a model built (on the meta device, without memory) from the
file's own config. A damaged or edited file is one ModelFileError naming the file and what is
wrong, never a traceback from deep inside the model.
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
from clearvae.errors import ClearvaeError, ModelFileError
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
    """Read a clearvae file and check all of it: its metadata (``read_file``) and its tensors
    against the model its config describes (``check_tensors``). Every problem is a
    ModelFileError naming the file."""
    loaded = read_file(path, expect)
    check_tensors(loaded, path)
    return loaded


def read_file(path: str | os.PathLike, expect: FileKind | None = None) -> Loaded:
    """Read a clearvae file and check its metadata (kinds, versions, JSON fields and their
    types), not yet its tensors: for loaders that first look at the model kind."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(
            f"'{path}' is not a readable clearvae model file (corrupt, truncated or another "
            f"format): {exc}"
        ) from None
    if metadata.get("format") != "clearvae":
        raise ModelFileError(f"'{path}' is a safetensors file but not a clearvae model file")
    version = metadata.get("format_version")
    if not (isinstance(version, str) and version.isdecimal() and version.isascii()):
        raise ModelFileError(f"'{path}' has an invalid format_version {version!r} (a whole "
                             "number such as '1' is expected): the file is damaged")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' uses file format {version}, written by clearvae "
            f"{metadata.get('clearvae_version')}; this clearvae ({__version__}) reads format "
            f"{FORMAT_VERSION}: upgrade clearvae"
        )
    kind = metadata.get("kind")
    if kind not in ("model", "checkpoint"):
        raise ModelFileError(f"'{path}' has an invalid kind {kind!r} (expected 'model' or "
                             "'checkpoint'): the file is damaged")
    if expect is not None and kind != expect:
        raise ModelFileError(f"'{path}' is a clearvae {kind} file, expected a {expect} file")
    model_config = _json_field(path, metadata, "model_config", dict)
    info = _json_field(path, metadata, "info", dict)
    if not isinstance(model_config.get("kind"), str):
        raise ModelFileError(f"'{path}' has a model_config without a model kind: the file is "
                             "damaged")
    if kind == "checkpoint":
        _json_field(path, metadata, "train_config", dict)
        _json_field(path, metadata, "optimizer", list)
        step = info.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ModelFileError(f"'{path}' is a checkpoint without a valid step in its info "
                                 f"(got {step!r}): the file is damaged")
    return Loaded(kind, tensors, metadata, model_config, info)  # type: ignore[arg-type]


def _json_field(path: Path, metadata: dict[str, str], key: str, kind: type) -> Any:
    """Metadata ``key`` parsed as JSON, which must be a ``kind`` (dict: an object)."""
    try:
        value = json.loads(metadata[key])
    except KeyError:
        raise ModelFileError(f"'{path}' lacks the metadata field '{key}': the file is damaged "
                             "or was not written by clearvae") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"'{path}' has corrupt metadata in '{key}': {exc}") from None
    if not isinstance(value, kind):
        expected = "a JSON object" if kind is dict else "a JSON list"
        raise ModelFileError(f"'{path}' has corrupt metadata: '{key}' must be {expected}, got "
                             f"{type(value).__name__}")
    return value


def model_config(loaded: Loaded, path: str | os.PathLike) -> Any:
    """The config object of the model a file holds (a ModelFileError if it cannot be built)."""
    from clearvae.models import model_config_from_dict  # here: the models import this module

    try:
        return model_config_from_dict(loaded.model_config)
    except ClearvaeError as exc:
        raise ModelFileError(f"'{path}' holds a model config this clearvae cannot build: "
                             f"{exc}") from None


def check_tensors(loaded: Loaded, path: str | os.PathLike,
                  model: torch.nn.Module | None = None) -> None:
    """Check a file's tensors against ``model`` (default: one built, without memory, from the
    file's own config): every weight it needs present with its shape, a dtype of its kind and
    finite values, nothing unexpected; a checkpoint's optimizer state too. A codec's coding
    tables (``tables.``) are checked by ``clearvae.codec.validation``."""
    from clearvae.models import build_model

    if model is None:
        config = model_config(loaded, path)
        with torch.device("meta"):  # names, shapes and dtypes, no memory
            model = build_model(config)
    expected = model.state_dict()
    kind = loaded.model_config.get("kind")
    if loaded.kind == "model":
        sections = {"": loaded.weights()}
        other = [k for k in loaded.tensors if k.startswith("tables.") and kind != "hyperprior"]
    else:
        sections = {"model.": loaded.section("model"), "ema.": loaded.section("ema")}
        other = [k for k in loaded.tensors if not k.startswith(("model.", "ema.", "optim."))]
        _check_optimizer(path, loaded.section("optim"), model)
    if other:
        raise ModelFileError(f"'{path}': its weights do not fit a {kind} model (unexpected "
                             f"tensors {_few(other)})")
    for prefix, tensors in sections.items():
        _check_weights(path, prefix, tensors, expected, kind)


def _check_weights(path: str | os.PathLike, prefix: str, tensors: dict[str, torch.Tensor],
                   expected: dict[str, torch.Tensor], kind: Any) -> None:
    missing = [prefix + k for k in expected if k not in tensors]
    unexpected = [prefix + k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_few(missing)}"] if missing else []) + (
            [f"unexpected {_few(unexpected)}"] if unexpected else [])
        raise ModelFileError(f"'{path}': its weights do not fit a {kind} model of the config "
                             f"stored in it ({'; '.join(parts)})")
    for name, want in expected.items():
        t = tensors[name]
        if t.shape != want.shape:
            raise ModelFileError(f"'{path}': its weights do not fit a {kind} model of the config "
                                 f"stored in it ('{prefix}{name}' has shape {tuple(t.shape)}, "
                                 f"the model needs {tuple(want.shape)})")
        if t.dtype != want.dtype and not (t.is_floating_point() and want.is_floating_point()):
            raise ModelFileError(f"'{path}': tensor '{prefix}{name}' has dtype {t.dtype}, the "
                                 f"model needs {want.dtype}: the file is damaged")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"'{path}': tensor '{prefix}{name}' holds NaN or infinite "
                                 "values (a damaged file, or weights saved from a diverged run)")


def _check_optimizer(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     model: torch.nn.Module) -> None:
    """Optimizer state ``<param index>.<name>``: an index of a parameter, the parameter's
    shape for per-element state (moments), finite values."""
    params = list(model.parameters())
    for key, t in tensors.items():
        pid, _, name = key.partition(".")
        if not (pid.isdecimal() and pid.isascii() and name) or int(pid) >= len(params):
            raise ModelFileError(f"'{path}': unexpected optimizer state 'optim.{key}' (the model "
                                 f"has {len(params)} parameters): the file is damaged")
        if t.ndim and t.shape != params[int(pid)].shape:
            raise ModelFileError(f"'{path}': optimizer state 'optim.{key}' has shape "
                                 f"{tuple(t.shape)}, its parameter "
                                 f"{tuple(params[int(pid)].shape)}: the file is damaged")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"'{path}': optimizer state 'optim.{key}' holds NaN or "
                                 "infinite values: the file is damaged")


def _few(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
