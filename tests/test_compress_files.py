"""compress / decompress on files as a user runs them: batches, odd images, failing writes."""

import errno

import numpy as np
import pytest
import torch
from PIL import Image

from clearvae import cli
from clearvae.codec.codec import Codec
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.codec.storage import save_codec


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    codec = Codec(HyperpriorCodec(HyperpriorCodecConfig(channels_n=8, channels_m=8)))
    return str(save_codec(codec, tmp_path_factory.mktemp("m") / "codec.safetensors"))


def _photo(path, seed=0, size=(40, 56)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_decompress_force_never_replaces_the_original(model_file, tmp_path, capsys):
    photo = _photo(tmp_path / "photo.png")
    original = photo.read_bytes()
    assert cli.main(["compress", str(photo), "--model", model_file]) == 0
    cvae = str(tmp_path / "photo.cvae")
    assert cli.main(["decompress", cvae, "--model", model_file, "--force"]) == 2
    assert "not written by clearvae" in capsys.readouterr().err
    assert photo.read_bytes() == original
    out = tmp_path / "decoded.png"
    assert cli.main(["decompress", cvae, "--model", model_file, "-o", str(out)]) == 0
    # a decode of ours next to its .cvae may be replaced with --force
    (tmp_path / "photo.png").unlink()
    assert cli.main(["decompress", cvae, "--model", model_file]) == 0
    assert cli.main(["decompress", cvae, "--model", model_file, "--force"]) == 0


def test_a_batch_reports_each_failure_and_goes_on(model_file, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(folder / "a.png", 1)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _photo(folder / "c.png", 2)
    gif = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 128)]
    gif[0].save(folder / "d.gif", save_all=True, append_images=gif[1:])
    Image.fromarray(np.zeros((16, 16), np.float32)).save(folder / "e.tif")
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(["compress", str(folder), str(folder / "d.gif"), "-o", str(out),
                     "--model", model_file])  # a folder gives its .png/.tif; the .gif by name
    err = capsys.readouterr().err
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.cvae", "c.cvae"]
    assert "3 of 5 inputs failed" in err and "b.png" in err
    assert "2 frames" in err and "floating-point" in err


def test_a_failing_write_is_a_message_and_leaves_nothing(model_file, tmp_path, capsys,
                                                         monkeypatch):
    photo = _photo(tmp_path / "p.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("clearvae.compress.atomic_write", full)
    assert cli.main(["compress", str(photo), "--model", model_file]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.cvae").exists()


def test_an_interrupted_encode_writes_nothing(model_file, tmp_path, monkeypatch):
    photo = _photo(tmp_path / "p.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clearvae.codec.refine.refine", interrupted)
    assert cli.main(["compress", str(photo), "--model", model_file, "--effort", "2"]) == 130
    assert list(tmp_path.iterdir()) == [photo]


def test_targets_from_the_command_line(model_file, tmp_path, capsys):
    photo = _photo(tmp_path / "p.png", size=(64, 64))
    assert cli.main(["compress", str(photo), "--model", model_file, "--max-bytes", "700"]) == 0
    assert (tmp_path / "p.cvae").stat().st_size <= 700
    assert "quality" in capsys.readouterr().out
    assert cli.main(["compress", str(photo), "--model", model_file, "--max-bytes", "20",
                     "--force"]) == 2
    assert "smallest file" in capsys.readouterr().err
