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
from clearvae.codec import validation
from clearvae.codec.codec import Codec, CodingTables, model_id
from clearvae.codec.model import HyperpriorCodec
from clearvae.errors import ModelFileError

DEFAULT_MODEL = "codec-default.safetensors"
GRAY_MODEL = "codec-mri.safetensors"  # 12/16-bit gray: DICOM, NIfTI, 16-bit PNG / TIFF


def default_model_path(gray: bool = False) -> Path:
    """The codec model that ships inside the package: for photos, or for gray 12/16-bit
    (medical) images."""
    return Path(str(resources.files("clearvae") / "weights" / (GRAY_MODEL if gray
                                                                 else DEFAULT_MODEL)))


def save_codec(codec: Codec, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write weights and tables atomically."""
    tensors = dict(codec.model.state_dict())
    tensors |= {f"tables.{k}": v for k, v in codec.tables.state().items()}
    return checkpoint.save_file(path, "model", tensors, codec.model.config.to_dict(),
                                {**(info or {}), "model_id": codec.id.hex()})


def load_codec(path: str | os.PathLike | None = None, gray: bool = False) -> Codec:
    """A codec from a model file or training checkpoint; ``None``: the bundled default (the
    MRI codec for ``gray``: 12/16-bit gray images).

    The file is checked completely before use: its metadata, every weight against a model
    of its config, its coding tables (``validation``) and their model id. Anything wrong is
    one ModelFileError naming the file and what is wrong."""
    if path is None:
        path = default_model_path(gray)
        if not path.exists():
            raise ModelFileError(f"this clearvae install has no bundled {'MRI ' if gray else ''}"
                                 f"codec model ({path}): train one with `clearvae train` and "
                                 "pass --model")
    loaded = checkpoint.read_file(path)
    if loaded.model_config.get("kind") != "hyperprior":
        raise ModelFileError(f"'{path}' holds a {loaded.model_config.get('kind')} model, not an "
                             "image codec (kind hyperprior)")
    # Checked against a model without memory first: a config claiming huge sizes is refused
    # before anything is allocated for it.
    checkpoint.check_tensors(loaded, path)
    model = HyperpriorCodec(checkpoint.model_config(loaded, path))
    model.load_state_dict(loaded.weights())  # fits: checked above
    state = loaded.section("tables")
    tables = None
    if state:
        validation.check_tables(state, model, str(path))
        tables = CodingTables.from_state(state)
        # the weights and tables as stored must give the stored id: edits that kept them valid
        validation.check_model_id(loaded.info, model_id(model, tables), str(path))
    codec = Codec(model, tables, name=Path(path).name)  # builds the tables of a checkpoint
    if tables is None and "model_id" in loaded.info:  # tables removed from a saved codec
        validation.check_model_id(loaded.info, codec.id, str(path))
    return codec
