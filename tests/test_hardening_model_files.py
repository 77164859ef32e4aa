"""Damaged and tampered model files: every one is a single ModelFileError naming the file and
what is wrong, never a traceback or a silently bad codec (issue 20's fuzz findings)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file as raw_load
from safetensors.torch import save_file as raw_save

from clearvae import checkpoint
from clearvae.codec.codec import Codec
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.codec.storage import load_codec, save_codec
from clearvae.errors import ModelFileError
from clearvae.generate import load
from clearvae.models import ConvVAEConfig, build_model, vae_loss

CODEC = HyperpriorCodecConfig(channels_n=8, channels_m=8, context_slices=2)


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    """A small randomly initialised codec with channel context, saved with its tables."""
    torch.manual_seed(0)
    codec = Codec(HyperpriorCodec(CODEC).eval())
    return save_codec(codec, tmp_path_factory.mktemp("codec") / "codec.safetensors")


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    return raw_load(str(path)), metadata


def _forged_id(tensors):
    """The model id of the tensors as they are (what a tamperer would recompute)."""
    from clearvae.codec.codec import state_digest

    return state_digest({k.removeprefix("tables."): v for k, v in tensors.items()}).hex()


def _tamper(src, dst, edit, forge_id=True):
    """Copy a model file with ``edit(tensors, metadata)`` applied; ``forge_id``: store the
    model id of the edited contents, so that only the content checks can catch the edit."""
    tensors, metadata = _read(src)
    info = metadata.get("info", "")
    edit(tensors, metadata)
    if forge_id and "model_id" in info and metadata.get("info") == info:  # not edited
        info = json.loads(metadata["info"])
        metadata["info"] = json.dumps({**info, "model_id": _forged_id(tensors)})
    raw_save(tensors, str(dst), metadata=metadata)
    return dst


def _set(key, fn):
    def edit(tensors, metadata):
        tensors[key] = fn(tensors[key].clone())
    return edit


def _pop(*keys):
    def edit(tensors, metadata):
        for key in [k for k in tensors if k.startswith(keys)]:
            del tensors[key]
    return edit


def _meta(key, value):
    def edit(tensors, metadata):
        metadata[key] = value
    return edit


def _bump(t, index, delta):
    t[index] += delta
    return t


# (edit, what the message must say); the comment names the crash or bad output it caused.
CODEC_CASES = {
    "missing z freqs": (_pop("tables.z.freqs"), "missing table tensors z.freqs"),  # KeyError
    "negative frequency": (_set("tables.y.freqs", lambda t: _bump(t, (3, 0), -70000)),
                           r"y.freqs' of table 3: each .* must be >= 1"),  # ValueError
    "nan inverse gain": (_set("tables.inverse_gain_z", lambda t: t * math.nan),
                         "inverse_gain_z' must be finite"),  # IndexError -2**63
    "inf inverse gain": (_set("tables.inverse_gain_z", lambda t: t * math.inf),
                         "inverse_gain_z' must be finite"),  # a 9-bpp file
    "scaled inverse gain": (_set("tables.inverse_gain_z", lambda t: t * 1e8),
                            "inverse_gain_z' is not the model's"),  # a silently huge file
    "wrong scale-head weight shape": (_set("tables.scale_head.0.weight", lambda t: t[:-1]),
                                      r"scale_head.0.weight' has shape"),  # pixel_shuffle
    "text format version": (_meta("format_version", "two"),
                            "invalid format_version 'two'"),  # int() ValueError
    "shifted y offsets": (_set("tables.y.offsets", lambda t: t + 100),
                          "covers .* not 0"),  # every symbol an escape: a huge file
    "asymmetric y table": (_set("tables.y.offsets", lambda t: _bump(t, 5, -1)), "symmetric"),
    "shifted z offsets": (_set("tables.z.offsets", lambda t: t + 1000), "covers"),
    "huge median": (_set("tables.median", lambda t: t + 1e12), "median' must be finite"),
    "frequencies off by one": (_set("tables.y.freqs", lambda t: _bump(t, (7, 0), 1)),
                               "sum to 65537, not 2..16"),
    "padding not zero": (_set("tables.y.freqs", lambda t: _bump(t, (0, -1), 1)), "padding 0"),
    "rolled frequencies": (_set("tables.y.freqs", lambda t: t.roll(5, 1)), "must be >= 1"),
    "length beyond the width": (_set("tables.z.lengths", lambda t: t + 10**6), "lengths"),
    "zero length": (_set("tables.z.lengths", lambda t: t * 0), "lengths"),
    "float frequencies": (_set("tables.z.freqs", lambda t: t.double()), "integer dtype"),
    "offsets of another count": (_set("tables.y.offsets", lambda t: t[:-1]), "y.offsets"),
    "levels": (_set("tables.scale_head.levels", lambda t: t * 0 + 1000), "levels' is 1000"),
    "huge shift": (_set("tables.scale_head.0.meta", lambda t: torch.tensor([2000, 1, 0])),
                   "0.meta"),  # OverflowError
    "huge input bits": (_set("tables.scale_head.input_bits", lambda t: t * 0 + 2000),
                        "input_bits"),  # OverflowError
    "weights beyond 10 bits": (_set("tables.scale_head.4.weight",
                                    lambda t: _bump(t, (0, 0, 0, 0), 2000)),
                               "exceeds"),
    "no relu": (_set("tables.scale_head.0.meta", lambda t: _bump(t, 1, -1)), "with ReLU"),
    "shuffle factor": (_set("tables.scale_head.1.meta", lambda t: _bump(t, 2, 1)),
                       "pixel shuffle by 2"),
    "missing context network": (_pop("tables.context.0."), "integer network 'context.0'"),
    "extra context network": (
        lambda t, m: t.update({k.replace("context.0.", "context.1."): v.clone()
                               for k, v in list(t.items()) if "context.0." in k}),
        "unexpected table tensors"),  # IndexError
    "rows that differ": (_set("tables.index_offset", lambda t: t[:-1]), "index_offset"),
    "fewer rows than qualities": (
        lambda t, m: [t.__setitem__(k, t[k][:3]) for k in ("tables.inverse_gain_z",
                                                           "tables.index_offset")],
        "R >= 8"),
    "index offset beyond the gains": (_set("tables.index_offset", lambda t: t - 1000),
                                      "index_offset' is not the model's"),
    "nan weight": (_set("g_s.net.0.0.weight", lambda t: t * math.nan), "NaN or infinite"),
    "missing weight": (_pop("h_a."), "do not fit .*missing h_a"),
    "integer weight": (_set("g_a.net.0.bias", lambda t: t.long()), "dtype torch.int64"),
    "unexpected tensor": (lambda t, m: t.update({"extra.weight": torch.zeros(2)}),
                          "unexpected extra.weight"),
    "model id not hex": (_meta("info", json.dumps({"model_id": "zz" * 8})), "valid model_id"),
    "model id a number": (_meta("info", json.dumps({"model_id": 7})), "valid model_id"),
    "info not an object": (_meta("info", "[1, 2]"), "'info' must be a JSON object"),
    "config not json": (_meta("model_config", "{kind: hyper"), "corrupt metadata"),
    "config out of range": (_meta("model_config", json.dumps(
        {**CODEC.to_dict(), "lambdas": [-1.0]})), "cannot build.*lambdas"),
    "unknown kind of file": (_meta("kind", "weights"), "invalid kind 'weights'"),
}


@pytest.mark.parametrize("case", CODEC_CASES, ids=list(CODEC_CASES))
def test_a_tampered_codec_file_is_one_clear_error(codec_file, tmp_path, case):
    edit, message = CODEC_CASES[case]
    path = _tamper(codec_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ModelFileError, match=message) as err:
        load_codec(path)
    assert "bad.safetensors" in str(err.value)


def test_an_edit_that_leaves_the_tables_valid_is_caught_by_the_model_id(codec_file, tmp_path):
    """Two entries of a y table swapped (still a valid distribution), or a weight nudged:
    decodable, but not the model that coded the files (the silently bad output of issue 20)."""
    def swap(tensors, metadata):
        f, middle = tensors["tables.y.freqs"], int(tensors["tables.y.lengths"][10]) // 2
        f[10, [0, middle]] = f[10, [middle, 0]].clone()

    for edit in (swap, _set("g_s.net.0.0.weight", lambda t: t + 1e-3)):
        path = _tamper(codec_file, tmp_path / "edited.safetensors", edit, forge_id=False)
        with pytest.raises(ModelFileError, match="altered after it was saved"):
            load_codec(path)


def test_an_intact_codec_file_loads_and_codes(codec_file):
    codec = load_codec(codec_file)
    image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    assert codec.decompress(codec.compress(image, quality=3)).shape == (40, 40, 3)


def test_tables_with_as_many_rows_as_qualities_are_accepted(codec_file, tmp_path):
    """R >= Q rows of gains and offsets are valid (tables for whole qualities only, or a
    finer grid of quality steps)."""
    def whole_qualities(tensors, metadata):
        for key in ("tables.inverse_gain_z", "tables.index_offset"):
            tensors[key] = tensors[key][: CODEC.qualities].clone()

    path = _tamper(codec_file, tmp_path / "rows.safetensors", whole_qualities)
    assert load_codec(path).qualities == CODEC.qualities


def test_a_codec_checkpoint_without_tables_gets_them_built(tmp_path):
    torch.manual_seed(0)
    model = HyperpriorCodec(CODEC)
    state = model.state_dict()
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors |= {f"ema.{k}": v.clone() for k, v in state.items()}
    path = checkpoint.save_file(tmp_path / "c.safetensors", "checkpoint", tensors,
                                CODEC.to_dict(), {"step": 0},
                                extra={"train_config": "{}", "optimizer": "[]"})
    assert load_codec(path).id == Codec(model.eval()).id


# The generic loader (clearvae.load and the restorers): VAE and checkpoint files.

VAE = ConvVAEConfig(widths=(8, 16), latent_channels=2)


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    return checkpoint.save_file(path, "model", build_model(VAE).state_dict(), VAE.to_dict())


def _first(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim > 1)


VAE_CASES = {
    "nan weight": (lambda t, m: t.__setitem__(_first(t), t[_first(t)] * math.nan),
                   "NaN or infinite"),
    "wrong shape": (lambda t, m: t.__setitem__(_first(t), t[_first(t)][:1]), "has shape"),
    "missing weight": (lambda t, m: t.pop(_first(t)), "do not fit .*missing"),
    "tables in a vae": (lambda t, m: t.update({"tables.median": torch.zeros(2)}),
                        "unexpected tensors tables.median"),
    "text format version": (_meta("format_version", "two"), "invalid format_version"),
    "no format version": (lambda t, m: m.pop("format_version"), "invalid format_version None"),
    "model config a list": (_meta("model_config", "[]"), "must be a JSON object"),
    "no model kind": (_meta("model_config", "{}"), "without a model kind"),
    "unknown model kind": (_meta("model_config", json.dumps({"kind": "gan"})), "cannot build"),
}


@pytest.mark.parametrize("case", VAE_CASES, ids=list(VAE_CASES))
def test_a_damaged_vae_file_is_one_clear_error(vae_file, tmp_path, case):
    edit, message = VAE_CASES[case]
    path = _tamper(vae_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ModelFileError, match=message) as err:
        load(path)
    assert "bad.safetensors" in str(err.value)


def _checkpoint_file(path):
    torch.manual_seed(0)
    model = build_model(VAE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    vae_loss(model(torch.rand(2, 1, 16, 16))).loss.backward()
    opt.step()
    optim, groups = checkpoint.optimizer_tensors(opt)
    state = model.state_dict()
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors |= {f"ema.{k}": v.clone() for k, v in state.items()}
    tensors |= {f"optim.{k}": v for k, v in optim.items()}
    return checkpoint.save_file(path, "checkpoint", tensors, VAE.to_dict(), {"step": 1},
                                extra={"train_config": "{}", "optimizer": groups})


CHECKPOINT_CASES = {
    "moment of another shape": (lambda t, m: t.__setitem__("optim.0.exp_avg",
                                                           t["optim.0.exp_avg"][:1]),
                                "optim.0.exp_avg' has shape"),
    "state of no parameter": (lambda t, m: t.update({"optim.999.exp_avg": torch.zeros(1)}),
                              "unexpected optimizer state 'optim.999.exp_avg'"),
    "nan moment": (lambda t, m: t.__setitem__("optim.0.exp_avg_sq",
                                              t["optim.0.exp_avg_sq"] * math.nan), "NaN"),
    "nan ema weight": (lambda t, m: t.__setitem__(_first(t), t[_first(t)] * math.inf), "NaN"),
    "no step": (_meta("info", "{}"), "without a valid step"),
    "text step": (_meta("info", json.dumps({"step": "ten"})), "without a valid step"),
    "no train config": (lambda t, m: m.pop("train_config"), "lacks the metadata field"),
    "optimizer not a list": (_meta("optimizer", "{}"), "'optimizer' must be a JSON list"),
    "stray tensor": (lambda t, m: t.update({"other.x": torch.zeros(1)}), "unexpected tensors"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=list(CHECKPOINT_CASES))
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, case):
    edit, message = CHECKPOINT_CASES[case]
    good = _checkpoint_file(tmp_path / "good.safetensors")
    checkpoint.load_file(good, expect="checkpoint")  # the intact one passes
    path = _tamper(good, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ModelFileError, match=message):
        checkpoint.load_file(path, expect="checkpoint")
