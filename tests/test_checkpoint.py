"""Model files: round trip, safety and clear errors for bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file as raw_save

from clearvae import checkpoint
from clearvae.errors import ModelFileError
from clearvae.generate import load
from clearvae.models import ConvVAEConfig, build_model

CONFIG = ConvVAEConfig(widths=(8, 16), latent_channels=2)


def _save_model(path):
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    checkpoint.save_file(path, "model", model.state_dict(), CONFIG.to_dict(), {"steps": 3})
    return model


def test_model_file_round_trip_gives_identical_outputs(tmp_path):
    model = _save_model(tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.config == CONFIG
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)


def test_metadata_describes_the_file(tmp_path):
    _save_model(tmp_path / "m.safetensors")
    f = checkpoint.load_file(tmp_path / "m.safetensors")
    assert f.kind == "model" and f.info == {"steps": 3}
    assert f.metadata["format"] == "clearvae" and f.model_config["kind"] == "conv"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_header"])
def test_corrupt_model_files_give_a_clear_error(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    _save_model(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"\x00\x17" * 100)
    else:
        data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    raw_save({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not a clearvae model file"):
        load(tmp_path / "other.safetensors")


def test_a_pickle_is_never_unpickled(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "evil.pt")  # a pickle, as torch writes them
    with pytest.raises(ModelFileError, match="not a readable clearvae model file"):
        load(tmp_path / "evil.pt")


def test_newer_format_version_asks_to_upgrade(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save_file(path, "model", {}, CONFIG.to_dict(), extra={"format_version": "99"})
    with pytest.raises(ModelFileError, match="upgrade clearvae"):
        load(path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    other = ConvVAEConfig(widths=(8, 16, 16), latent_channels=2)
    checkpoint.save_file(path, "model", build_model(other).state_dict(), CONFIG.to_dict())
    with pytest.raises(ModelFileError, match="do not fit"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "nope.safetensors")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    _save_model(tmp_path / "m.safetensors")
    _save_model(tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, groups = checkpoint.optimizer_tensors(opt)
    json.loads(groups)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    checkpoint.load_optimizer_state(opt2, tensors, groups)
    assert opt2.param_groups[0]["lr"] == 0.1
    for a, b in zip(opt.state.values(), opt2.state.values()):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_a_write_interrupted_midway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    """Simulates a kill between writing the new file and moving it into place."""
    path = tmp_path / "m.safetensors"
    model = _save_model(path)
    before = path.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clearvae.files.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_file(path, "model", {k: v + 1 for k, v in model.state_dict().items()},
                             CONFIG.to_dict())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
