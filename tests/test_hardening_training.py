"""Training under trouble: Ctrl-C, a full disk or read-only folder, files left by a kill,
and config values out of range."""

import errno
import math
import warnings

import pytest
import torch

from clearvae import checkpoint, training
from clearvae.errors import ConfigError, TrainingError
from clearvae.training import TrainConfig, train


def _config(out, **changes):
    base = {
        "model": {"kind": "conv", "widths": [8, 16], "latent_channels": 2, "attention": False},
        "data": {"train": "synthetic-digits:64"},
        "out": str(out), "max_steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 2,
        "lr_warmup_steps": 2, "ema_decay": 0.0,
    }
    return TrainConfig.from_dict({**base, **changes})


def _weights(path):
    return checkpoint.load_file(path).tensors


def _interrupt_at(monkeypatch, k):
    """train_step raises KeyboardInterrupt (as Ctrl-C would) when it starts step ``k``."""
    real = training.train_step

    def step(fabric, model, optimizer, x, config, i):
        if i == k:
            raise KeyboardInterrupt
        return real(fabric, model, optimizer, x, config, i)

    monkeypatch.setattr(training, "train_step", step)
    return real


def test_ctrl_c_before_the_first_checkpoint_keeps_the_steps_and_resume_continues(
        tmp_path, monkeypatch, capsys):
    """Interrupted in step 2 of 8 (checkpoints every 5): the 2 whole steps are checkpointed,
    and --resume then ends with the very weights of an uninterrupted run."""
    straight = train(_config(tmp_path / "a", max_steps=8, checkpoint_every=5))
    real = _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "b", max_steps=8, checkpoint_every=5))
    err = capsys.readouterr().err
    assert "interrupted at step 2" in err and "--resume" in err
    ckpt = tmp_path / "b" / training.CHECKPOINT_NAME
    assert checkpoint.load_file(ckpt, expect="checkpoint").info["step"] == 2
    assert not (tmp_path / "b" / "model.safetensors").exists()
    monkeypatch.setattr(training, "train_step", real)
    resumed = train(_config(tmp_path / "b", max_steps=8, checkpoint_every=5), resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ctrl_c_in_the_first_step_writes_nothing_to_resume(tmp_path, monkeypatch, capsys):
    """No whole step yet: nothing is kept, and the folder stays free for a fresh run."""
    _interrupt_at(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path))
    assert "no training steps are kept" in capsys.readouterr().err
    assert not (tmp_path / training.CHECKPOINT_NAME).exists()


def test_the_first_ctrl_c_finishes_the_step_and_checkpoints_it(tmp_path, monkeypatch, capsys):
    """A real SIGINT handler is in place during the loop: pressing once lets the step finish
    (the optimizer never stops half-way), then the run stops with that step checkpointed."""
    import os
    import signal

    real = training.train_step

    def step(fabric, model, optimizer, x, config, i):
        if i == 3:  # Ctrl-C arriving while step 3 runs
            os.kill(os.getpid(), signal.SIGINT)
        return real(fabric, model, optimizer, x, config, i)

    monkeypatch.setattr(training, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, checkpoint_every=100, max_steps=10))
    assert checkpoint.load_file(tmp_path / training.CHECKPOINT_NAME).info["step"] == 4
    assert "interrupted at step 4" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_also_finishes_the_step_and_checkpoints_it(tmp_path, monkeypatch, capsys):
    """kill (SIGTERM), as a scheduler or an ending session sends it, loses no work either."""
    import os
    import signal

    real = training.train_step

    def step(fabric, model, optimizer, x, config, i):
        if i == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(fabric, model, optimizer, x, config, i)

    monkeypatch.setattr(training, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, checkpoint_every=100, max_steps=10))
    assert checkpoint.load_file(tmp_path / training.CHECKPOINT_NAME).info["step"] == 3
    assert "SIGTERM: stopping after this step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def _fail_replace(monkeypatch, target_name, code=errno.ENOSPC):
    """os.replace of ``target_name`` (as atomic_write does) fails as on a full disk."""
    import os

    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(target_name):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst)

    monkeypatch.setattr("clearvae.files.os.replace", replace)


def test_a_full_disk_at_a_checkpoint_says_what_was_kept(tmp_path, monkeypatch):
    """The checkpoint of step 3 is written; at step 6 the disk is full: a TrainingError
    names the file, the reason and the kept step; the temporary file is gone."""
    real = training.save_checkpoint

    def save(path, config, model, ema, optimizer, step, info):
        if step == 6:
            _fail_replace(monkeypatch, "last.safetensors")
        return real(path, config, model, ema, optimizer, step, info)

    monkeypatch.setattr(training, "save_checkpoint", save)
    with pytest.raises(TrainingError) as err:
        train(_config(tmp_path))
    message = str(err.value)
    assert "last.safetensors" in message and "No space left on device" in message
    assert "checkpoint (step 3) is kept" in message and "--resume" in message
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["last.safetensors"]  # no temporary left
    assert checkpoint.load_file(folder / "last.safetensors").info["step"] == 3


def test_an_unwritable_metrics_file_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    """metrics.csv can no longer be opened (read-only folder) after step 3's checkpoint."""
    from pathlib import Path

    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        if self.name == "metrics.csv" and "a" in mode and self.exists() and \
                (tmp_path / training.CHECKPOINT_NAME).exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(TrainingError, match=r"cannot write the metrics .*metrics\.csv.*"
                                            r"Read-only file system.*\(step 3\) is kept"):
        train(_config(tmp_path))


def test_a_failing_tensorboard_file_is_a_clear_error(tmp_path, monkeypatch):
    def full(self, step, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training._EventFile, "scalars", full)
    with pytest.raises(TrainingError, match="No space left.*No checkpoint was written yet"):
        train(_config(tmp_path))


def test_an_unwritable_model_file_keeps_the_final_checkpoint(tmp_path, monkeypatch):
    _fail_replace(monkeypatch, "model.safetensors", errno.EACCES)
    with pytest.raises(TrainingError, match=r"cannot write the model .*Permission denied.*"
                                            r"\(step 6\) is kept"):
        train(_config(tmp_path))
    monkeypatch.undo()
    path = train(_config(tmp_path), resume=True)  # writes the model from the checkpoint
    assert checkpoint.load_file(path).info["steps"] == 6


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write the training log"):
        train(_config(blocker / "run"))


def test_temporary_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path, capsys):
    train(_config(tmp_path, max_steps=3))
    stale = [tmp_path / "checkpoints" / ".last.safetensors.ab3_x9k2.tmp",
             tmp_path / ".model.safetensors.q0w9e8r7.tmp", tmp_path / ".metrics.csv.zz99zz99.tmp"]
    kept = [tmp_path / "checkpoints" / ".last.safetensors.tmp",  # not atomic_write's pattern
            tmp_path / "checkpoints" / ".last.safetensors.TOOLONG12.tmp",
            tmp_path / ".other.safetensors.abcdefgh.tmp", tmp_path / "notes.tmp"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    train(_config(tmp_path, max_steps=4), resume=True)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert "left by an interrupted write" in capsys.readouterr().err


def test_a_metrics_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    train(_config(tmp_path, max_steps=3))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,lo")  # the disk filled up mid-row
    train(_config(tmp_path, max_steps=4), resume=True)
    text = (tmp_path / "metrics.csv").read_text()
    assert "4,lo\n" not in text and "4,loss," in text


@pytest.mark.parametrize("changes, message", [
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
    ({"lr": math.inf}, "lr must be a finite number > 0, got inf"),
    ({"lr": -1e-3}, "lr must be a finite number > 0"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"data": {"num_workers": -1}}, "data.num_workers must be an integer >= 0"),
    ({"grad_clip": -1}, "grad_clip must be a number > 0 .null: no clipping., got -1"),
    ({"grad_clip": 0}, "grad_clip must be a number > 0"),
    ({"objective": {"beta": -1}}, "objective.beta must be a finite number >= 0, got -1"),
    ({"objective": {"free_bits": math.nan}}, "objective.free_bits must be"),
    ({"data": {"size": [100000, 100000]}}, r"data.size .*\(4096x4096\).*\[100000, 100000\]"),
    ({"data": {"size": [0, 64]}}, "data.size"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"log_every": 0}, "log_every must be an integer >= 1"),
    ({"checkpoint_every": -5}, "checkpoint_every must be an integer >= 1"),
    ({"max_minutes": 0}, "max_minutes must be a number > 0"),
    ({"skip_threshold": -1}, "skip_threshold must be a number > 0"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0"),
    ({"ema_decay": math.nan}, r"ema_decay must be in \[0, 1\)"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps must be an integer >= 0"),
])
def test_config_values_out_of_range_name_the_key_value_and_range(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **changes)


def test_nan_in_any_float_of_any_config_is_refused():
    from clearvae.codec.model import HyperpriorCodecConfig

    with pytest.raises(ConfigError, match="lambdas: NaN"):
        HyperpriorCodecConfig(lambdas=(0.01, math.nan))


def test_optional_values_may_be_off(tmp_path):
    config = _config(tmp_path, grad_clip=None, skip_threshold=None, max_minutes=None,
                     data={"train": "synthetic-digits:64", "size": [4096, 4096]})
    assert config.grad_clip is None and config.data.size == (4096, 4096)


def test_a_run_too_short_for_its_ema_decay_warns_once_naming_the_key(tmp_path):
    with pytest.warns(UserWarning, match=r"ema_decay 0.999 .* max_steps 6 .*--set ema_decay=0.5")\
            as caught:
        train(_config(tmp_path / "a", ema_decay=0.999))
    assert len([w for w in caught if "ema_decay" in str(w.message)]) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_config(tmp_path / "b", ema_decay=0.5, max_steps=6))  # long enough for 0.5
    assert not [w for w in caught if "ema_decay" in str(w.message)]


def test_atomic_write_removes_its_temporary_file_when_the_disk_is_full(tmp_path, monkeypatch):
    from clearvae.files import atomic_write

    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("clearvae.files.os.fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
