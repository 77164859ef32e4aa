"""Codec model files: weights + coding tables in one safetensors file, and the bundled default.

Tables are built when a codec is saved (``save_codec``), so the decoder never recomputes
anything that picks probabilities; a file without tables (a training checkpoint) gets them
built on load, and its model id then names those tables too.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from clearvae import checkpoint
from clearvae.codec.codec import Codec, CodingTables
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.errors import ModelFileError

DEFAULT_MODEL = "codec-default.safetensors"


def default_model_path() -> Path:
    """The codec model that ships inside the package."""
    return Path(str(resources.files("clearvae") / "weights" / DEFAULT_MODEL))


def save_codec(codec: Codec, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write weights and tables atomically."""
    tensors = dict(codec.model.state_dict())
    tensors |= {f"tables.{k}": v for k, v in codec.tables.state().items()}
    return checkpoint.save_file(path, "model", tensors, codec.model.config.to_dict(),
                                {**(info or {}), "model_id": codec.id.hex()})


def load_codec(path: str | os.PathLike | None = None) -> Codec:
    """A codec from a model file or training checkpoint; ``None``: the bundled default."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise ModelFileError(f"this clearvae install has no bundled codec model ({path}): "
                                 "train one with `clearvae train` and pass --model")
    loaded = checkpoint.load_file(path)
    if loaded.model_config.get("kind") != "hyperprior":
        raise ModelFileError(f"'{path}' holds a {loaded.model_config.get('kind')} model, not an "
                             "image codec (kind hyperprior)")
    config = HyperpriorCodecConfig.from_dict(loaded.model_config)
    model = HyperpriorCodec(config)
    weights = loaded.weights()
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelFileError(f"'{path}': its weights do not fit this clearvae's codec "
                             f"({str(exc).splitlines()[0]})") from None
    tables = loaded.section("tables")
    return Codec(model, CodingTables.from_state(tables) if tables else None,
                 name=Path(path).name)
