"""The models the service offers, by name: the bundled ones and the files under ``--models``.

A client names a model (``codec``, ``denoiser``, ``my-vae``), never a path. Each name maps to
a file whose kind comes from its own metadata (``clearvae.checkpoint.read_file``), and the
kind says which tasks may use it; a model of the wrong kind for a task is a 409, an unknown
name a 404. Models are loaded with the library's loaders on first use and a few are kept.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clearvae import checkpoint
from clearvae.codec.storage import default_model_path, load_codec
from clearvae.errors import ClearvaeError
from clearvae.models import MODELS
from clearvae.restore.denoise import default_denoiser_path, load_denoiser
from clearvae.service.errors import ServiceError, client_errors

log = logging.getLogger("clearvae.service")

VAE_TASKS = ("sample", "interpolate", "inpaint")
TASKS = {"hyperprior": ("compress", "decompress"), "denoiser": ("denoise", "inpaint"),
         **{kind: VAE_TASKS for kind in MODELS}}
LOADED = 4  # models kept in memory (least recently used dropped first)


def bundled() -> dict[str, Path]:
    """The models that ship inside the package, by the name the API gives them."""
    return {"codec": default_model_path(), "codec-mri": default_model_path(gray=True),
            "denoiser": default_denoiser_path(), "denoiser-mri": default_denoiser_path(True)}


# the default model of each task (of a 16-bit gray image: "codec-mri", "denoiser-mri")
DEFAULTS = {"compress": "codec", "decompress": "codec", "denoise": "denoiser",
            "inpaint": "denoiser"}


@dataclass(frozen=True)
class ModelEntry:
    """A model file as the API knows it."""

    name: str
    kind: str  # the model family (hyperprior, denoiser, dense, conv, hierarchical)
    path: Path
    bundled: bool
    channels: int  # 1 gray, 3 RGB
    model_id: str | None  # codecs: the id stored in the files they write (hex)

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS.get(self.kind, ())

    def describe(self) -> dict[str, Any]:
        """What a client may see (no path)."""
        return {"name": self.name, "kind": self.kind, "tasks": list(self.tasks),
                "bundled": self.bundled, "channels": self.channels, "model_id": self.model_id,
                "bytes": self.path.stat().st_size}


class ModelRegistry:
    """Names -> model files (bundled, then ``folder/*.safetensors``), loaded on demand."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder).resolve() if folder is not None else None
        self._lock = threading.Lock()  # the two tables below
        self._loading = threading.Lock()  # one model loads at a time
        self._entries: dict[Path, tuple[tuple[int, int], ModelEntry | None]] = {}
        self._loaded: OrderedDict[str, tuple[ModelEntry, Any]] = OrderedDict()

    @property
    def folders(self) -> list[Path]:
        """Server folders that error messages must not show."""
        weights = default_model_path().parent
        return [weights, weights.resolve()] + ([self.folder] if self.folder else [])

    def entries(self) -> list[ModelEntry]:
        """Every usable model, bundled first; files that cannot be read are logged, skipped."""
        found = {name: path for name, path in bundled().items() if path.is_file()}
        if self.folder is not None:
            for path in sorted(self.folder.glob("*.safetensors")):
                name = path.name[: -len(".safetensors")]
                if name in found:
                    log.warning("model file %s is not offered: the name '%s' is taken by a "
                                "bundled model; rename the file", path, name)
                    continue
                found[name] = path
        out = [self._entry(name, path, name in bundled()) for name, path in found.items()]
        return [e for e in out if e is not None]

    def get(self, name: str | None, task: str, gray: bool = False) -> ModelEntry:
        """The model a request names (None: the task's default) for ``task``: 404 when no
        model has that name, 409 when it cannot do the task."""
        default = name is None
        if default:
            if task not in DEFAULTS:
                raise ServiceError(422, f"{task} needs a model: give model=NAME (see "
                                   "/api/models)")
            name = DEFAULTS[task]
            if gray:  # 16-bit gray (MRI): the bundled MRI models, as the CLI chooses
                name = {"compress": "codec-mri", "denoise": "denoiser-mri",
                        "inpaint": "denoiser-mri"}.get(task, name)
        entries = {e.name: e for e in self.entries()}
        entry = entries.get(name)
        if entry is None:
            able = sorted(e.name for e in entries.values() if task in e.tasks)
            what = (f"this server has no bundled '{name}' model" if default
                    else f"no model named '{name}'")
            raise ServiceError(404 if not default else 409,
                               f"{what}; models for {task}: {', '.join(able) or 'none'}",
                               {"models": able})
        if task not in entry.tasks:
            raise ServiceError(409, f"'{name}' is a {entry.kind} model; {task} needs "
                               f"{_kinds_for(task)}", {"kind": entry.kind})
        return entry

    def codec_for(self, model_id: bytes) -> ModelEntry | None:
        """The codec whose files carry ``model_id``, if this server has it."""
        return next((e for e in self.entries() if e.kind == "hyperprior"
                     and e.model_id == model_id.hex()), None)

    def load(self, entry: ModelEntry) -> Any:
        """The model of ``entry``, loaded by the library's loader for its kind (cached)."""
        with self._loading:
            with self._lock:
                cached = self._loaded.get(entry.name)
                if cached is not None and cached[0] == entry:
                    self._loaded.move_to_end(entry.name)
                    return cached[1]
            with client_errors(self.folders):
                if entry.kind == "hyperprior":
                    model = load_codec(entry.path)
                    model.name = entry.name  # its messages name it as the API does
                elif entry.kind == "denoiser":
                    model = load_denoiser(entry.path)
                else:
                    from clearvae.generate import load

                    model = load(entry.path)
            with self._lock:
                self._loaded[entry.name] = (entry, model)
                while len(self._loaded) > LOADED:
                    self._loaded.popitem(last=False)
            return model

    def _entry(self, name: str, path: Path, is_bundled: bool) -> ModelEntry | None:
        """The entry of a file from its metadata, read again only when the file changed."""
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            known = self._entries.get(path)
        if known is not None and known[0] == key:
            return known[1]
        entry = None
        try:
            loaded = checkpoint.read_file(path)
            config = checkpoint.model_config(loaded, path)
            model_id = loaded.info.get("model_id") if config.kind == "hyperprior" else None
            entry = ModelEntry(name, config.kind, path, is_bundled, config.image_channels,
                               model_id if isinstance(model_id, str) else None)
        except ClearvaeError as exc:
            log.warning("model file %s is not offered: %s", path, exc)
        with self._lock:
            self._entries[path] = (key, entry)
        return entry


def _kinds_for(task: str) -> str:
    kinds = [k for k, tasks in TASKS.items() if task in tasks]
    return "a " + " or ".join(kinds) + " model"
