"""The command line, end to end on tiny data, and the README's commands."""

import json
import re
import subprocess
import sys

import pytest

from clearvae.cli import main
from tests.conftest import REPO, shared

TINY = ["--set", "model.widths=[8,16]", "--set", "model.latent_channels=2",
        "--set", "model.attention=false", "--set", "checkpoint_every=4", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", "synthetic-digits:64", "--out", str(out), "--max-steps", "6",
                 "--val", "synthetic-digits:16", *TINY])
    assert code == 0
    return out


def test_train_then_eval_prints_json(trained, tmp_path, capsys):
    assert main(["eval", str(trained / "model.safetensors"), "--data", "synthetic-digits:12",
                 "--iw-samples", "20", "-o", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["images"] == 12 and result["iw_samples"] == 20
    assert result["nll_nats"] <= result["nelbo_nats"] + 1.0  # the IW bound is the tighter one
    assert result["nll_bpd"] == pytest.approx(result["nll_nats"] / (784 * 0.6931471805599453))
    assert 0 < result["ssim"] <= 1 and result["psnr_db"] > 0
    assert json.loads(capsys.readouterr().out)["images"] == 12


def test_sample_reconstruct_interpolate_write_pngs(trained, tmp_path):
    import torch
    from PIL import Image

    from clearvae.data import write_image

    model = str(trained / "model.safetensors")
    assert main(["sample", model, "-n", "6", "-t", "0.7", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", model, "--data", "synthetic-digits:8", "-n", "4",
                 "-o", str(tmp_path / "r.png")]) == 0
    assert main(["interpolate", model, "0", "3", "--data", "synthetic-digits:8", "--steps", "5",
                 "-o", str(tmp_path / "i.png")]) == 0
    write_image(tmp_path / "a.png", torch.rand(1, 28, 28))
    write_image(tmp_path / "b.png", torch.rand(1, 30, 28))
    assert main(["interpolate", model, str(tmp_path / "a.png"), str(tmp_path / "a.png"),
                 "-o", str(tmp_path / "j.png")]) == 0
    assert main(["interpolate", model, str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "-o", str(tmp_path / "k.png")]) == 2  # different sizes: a clear error
    assert not (tmp_path / "k.png").exists()
    widths = {name: Image.open(tmp_path / name).size for name in ("s.png", "r.png", "i.png")}
    assert widths["i.png"][0] > widths["i.png"][1] * 5  # a strip of 7 images in a row
    assert widths["r.png"][1] > 2 * 28  # two rows: originals and reconstructions


def test_resume_from_the_command_line_uses_the_stored_config(trained, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "synthetic-digits:64", "--out", str(out),
                 "--max-steps", "4", *TINY]) == 0
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "6"]) == 0
    from clearvae.checkpoint import load_file

    assert load_file(out / "model.safetensors").info["steps"] == 6


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "model.latent_dmi=3"], "valid keys are"),
    (["train", "--set", "objective.beta=high"], "expected a number"),
    (["train", "--config", "/no/such.yaml"], "cannot read config"),
    (["train", "--data", "/no/such/folder", "--max-steps", "1"], "/no/such/folder"),
    (["sample", "/no/model.safetensors"], "does not exist"),
    (["sample", "README.md"], "not a readable clearvae model file"),
])
def test_user_mistakes_get_a_clear_message_and_exit_code_2(args, message, capsys, tmp_path):
    args = [a.replace("README.md", str(REPO / "README.md")) for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_on_the_shared_mnist_test_set(trained):
    mnist = shared("mnist")
    code = main(["eval", str(trained / "model.safetensors"), "--data", str(mnist),
                 "--limit", "20", "--iw-samples", "5"])
    assert code == 0


def test_readme_quick_start_commands():
    """The README's two commands: the demo runs (shortened here) and CI runs the test one."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == ("pip install torch==2.13.0 && pip install -e . "
                                 "&& clearvae demo")
    test_command = blocks[1].strip().split("&& ")[-1]
    assert test_command in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_demo_runs_as_a_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "clearvae", "demo", "--out", str(tmp_path),
                             "--steps", "30"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert "demo.png" in result.stdout
    assert "codec:" in result.stdout  # the compression part ran, or says why it could not


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    import yaml

    from clearvae.training import TrainConfig

    TrainConfig.from_dict(yaml.safe_load(path.read_text()))
