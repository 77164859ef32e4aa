"""The ``clearvae`` command. Each sub-command parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clearvae.errors import ClearvaeError, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClearvaeError as exc:
        print(f"clearvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clearvae {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clearvae", description=__doc__)
    from clearvae import __version__

    p.add_argument("--version", action="version", version=f"clearvae {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="train a small VAE on generated digits, write a PNG; "
                       "compress and decompress a generated picture")
    s.add_argument("--out", default="clearvae-demo", help="output folder (default %(default)s)")
    s.add_argument("--steps", type=int, default=600, help="training steps (default %(default)s)")
    s.add_argument("--codec", help="codec model file for the compression part (default: the "
                   "bundled one)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("compress", help="compress images (photos; DICOM, NIfTI, 16-bit gray) "
                       "to .cvae files")
    s.add_argument("inputs", nargs="+", help="image files, DICOM files or series folders, "
                   "NIfTI files, or folders of them")
    s.add_argument("-o", "--output", help="output file (one input) or folder")
    s.add_argument("-q", "--quality", type=float, help="1 (smallest) .. 8 (best), "
                   "fractions allowed (steps of 1/16), default 4 (with --max-error: the "
                   "smallest file)")
    s.add_argument("-e", "--effort", type=int, default=0, help="0 (fast, default) .. 3: "
                   "more encode time for a smaller file at the same quality (about 6 / 20 / "
                   "60 s for a 768x512 image on 2 cores); decoding is unchanged")
    target = s.add_mutually_exclusive_group()
    target.add_argument("--target-bpp", type=float, metavar="B",
                        help="choose the quality of each image to get B bits per pixel")
    target.add_argument("--max-bytes", type=int, metavar="N",
                        help="the best quality whose file has at most N bytes")
    target.add_argument("--target-psnr", type=float, metavar="P",
                        help="the smallest file with a PSNR of at least P dB")
    target.add_argument("--max-error", type=int, metavar="K", help="12/16-bit gray images "
                        "(DICOM, NIfTI, 16-bit PNG): every decoded value within +-K")
    target.add_argument("--lossless", action="store_const", const=0, dest="max_error",
                        help="12/16-bit gray images: decode to exactly the stored values")
    s.add_argument("--model", help="codec model file (default: the bundled one; for DICOM, "
                   "NIfTI and 16-bit gray images the bundled MRI codec)")
    s.add_argument("--tile", type=int, default=0, help="block size in pixels for large "
                   "images (multiple of 64; default automatic)")
    s.add_argument("--drop-alpha", action="store_true", help="code images with transparency "
                   "without their alpha channel")
    s.add_argument("--force", action="store_true", help="overwrite existing outputs")
    s.add_argument("--key-file", metavar="K", help="seal each file with the secret key in K "
                   "(HMAC-SHA256; at least 16 bytes, e.g. from /dev/urandom), so that any later "
                   "change is detected; decompress then needs the same --key-file")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("decompress", help="decompress .cvae files to PNG, or to the DICOM, "
                       "NIfTI or 16-bit PNG they came from")
    s.add_argument("inputs", nargs="+", help=".cvae files or folders")
    s.add_argument("-o", "--output", help="output file (one input) or folder")
    s.add_argument("--model", help="codec model file (default: the bundled one)")
    s.add_argument("--max-pixels", type=int, default=2**28, help="refuse files that claim "
                   "a larger image (default %(default)s, 16384 x 16384)")
    s.add_argument("--force", action="store_true", help="overwrite existing outputs (never "
                   "an image that clearvae did not write: give -o for that)")
    s.add_argument("--key-file", metavar="K", help="check each file's seal with the key in "
                   "K before decoding: a changed file, another key or an unsealed file is an "
                   "error")
    s.add_argument("--slices", metavar="LIST", help="volumes: decode only these slices "
                   "(e.g. 0,5,10-12; the others are not decoded), each to a gray PNG "
                   "NAME_s0005.png (-o: a folder)")
    s.set_defaults(func=cmd_decompress)

    s = sub.add_parser("denoise", help="denoise images with a denoising VAE")
    s.add_argument("inputs", nargs="+", help="image files or folders, DICOM files or series "
                   "folders, NIfTI volumes")
    s.add_argument("-o", "--output", help="output file (one input) or folder (default: "
                   "NAME_denoised beside each input: PNG for photos, the input's own format "
                   "for DICOM / NIfTI / 16-bit gray)")
    s.add_argument("--model", help="denoiser model file (default: the bundled photo denoiser, "
                   "or the bundled MRI denoiser for DICOM, NIfTI and 16-bit gray input)")
    s.add_argument("-k", "--samples", type=int, default=8,
                   help="posterior samples: averaged into the estimate, or with a conditional "
                   "model such as the bundled one, only the spread for --std (default "
                   "%(default)s)")
    s.add_argument("--save-samples", type=int, default=0, metavar="N",
                   help="also write N individual samples (NAME_sample{k}.png)")
    s.add_argument("--std", action="store_true", help="also write the per-pixel standard "
                   "deviation of the samples (NAME_std.png)")
    s.add_argument("--sigma", type=float, help="noise std on the 0-255 scale of the image "
                   "(medical: of its used bits), for the check against the model's trained "
                   "range and a noisy-only Rician model's bias correction; the bundled "
                   "denoisers are blind and read the noise from the image itself (default: "
                   "estimated; Rician: from the background)")
    s.add_argument("--tile", type=int, help="tile size for large images (default: the "
                   "model's own, 256 for the bundled denoisers)")
    s.add_argument("--ensemble", action="store_true", help="average over the 8 flips and "
                   "quarter turns of the image: a little better, 8 times slower")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ignore-noise-level", action="store_true",
                   help="denoise even images far noisier than the model was trained for")
    s.add_argument("--force", action="store_true", help="overwrite existing outputs")
    s.set_defaults(func=cmd_denoise)

    s = sub.add_parser("inpaint", help="fill the masked pixels of an image")
    s.add_argument("input", help="image file, or a 16-bit gray image, DICOM file or series, "
                   "NIfTI volume (its known values are kept exactly; the mask applies to every "
                   "slice)")
    s.add_argument("--mask", required=True, help="image of the same size, white (nonzero) "
                   "where pixels are to be filled")
    s.add_argument("-o", "--output", help="output file (default NAME_inpainted.png, or the "
                   "input's own format for medical images)")
    s.add_argument("--model", help="denoiser or VAE model file (default: the bundled denoiser; "
                   "the bundled MRI denoiser for medical images)")
    s.add_argument("-n", "--samples", type=int, default=1,
                   help="number of different fillings (the others as OUTPUT_sample{k}.png)")
    s.add_argument("--iterations", type=int, default=20,
                   help="sampling sweeps (default 20; more: fillings wander further)")
    s.add_argument("--tile", type=int, default=256, help="tile size for large images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="overwrite existing outputs")
    s.set_defaults(func=cmd_inpaint)

    s = sub.add_parser("train", help="train a model from a YAML config and/or flags")
    s.add_argument("--config", help="YAML file with a TrainConfig (keys: model, data, ...)")
    s.add_argument("--preset", help="start from a built-in config: denoise-noisy (a folder "
                   "of noisy images, or of noisy DICOM / NIfTI volumes: then Rician and 2.5-D), "
                   "denoise-synthetic (clean images + Gaussian noise, the bundled denoiser's "
                   "recipe), denoise-mri (clean MRI + Rician noise, 2.5-D: the bundled MRI "
                   "denoiser's recipe), or denoise-noisy-hdn / denoise-synthetic-hdn (the same "
                   "data, the earlier HDN model)")
    s.add_argument("--data", help="training data: image folder, MNIST IDX folder, digits CSV, "
                   "or synthetic-digits")
    s.add_argument("--val", help="held-out data evaluated at the end")
    s.add_argument("--out", help="output folder for checkpoints, logs and the model")
    s.add_argument("--model", help="model family: dense, conv, hierarchical or hyperprior")
    s.add_argument("--max-steps", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--devices", type=int, help="number of devices / processes (DDP if > 1)")
    s.add_argument("--accelerator", help="cpu, gpu, auto ...")
    s.add_argument("--strategy", help="auto, ddp ...")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set model.latent_dim=16 --set objective.beta=4")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress bar (default: when the output is a terminal)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="ELBO, importance-weighted NLL, PSNR and SSIM as JSON")
    s.add_argument("model", help="model file or checkpoint")
    s.add_argument("--data", required=True, help="evaluation data (see train --data)")
    s.add_argument("--split", default="test", help="split for MNIST folders (default test)")
    s.add_argument("--iw-samples", type=int, default=1000, help="importance samples k (0: skip)")
    s.add_argument("--limit", type=int, help="evaluate only the first N images")
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", help="also write the JSON to this file")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="a PNG grid of samples from the model")
    s.add_argument("model")
    s.add_argument("-n", "--count", type=int, default=64)
    s.add_argument("-t", "--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", help="HxW for models that take any size (default: training size)")
    s.add_argument("-o", "--output", default="samples.png")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("reconstruct", help="originals above their reconstructions, as a PNG")
    s.add_argument("model")
    s.add_argument("images", nargs="*", help="image files (or use --data)")
    s.add_argument("--data", help="take the first -n images of this dataset instead")
    s.add_argument("-n", "--count", type=int, default=16)
    s.add_argument("-o", "--output", default="reconstructions.png")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("interpolate", help="a PNG strip between two images in latent space")
    s.add_argument("model")
    s.add_argument("a", help="image file, or an index into --data")
    s.add_argument("b", help="image file, or an index into --data")
    s.add_argument("--data", help="dataset that a and b index into")
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("-o", "--output", default="interpolation.png")
    s.set_defaults(func=cmd_interpolate)

    s = sub.add_parser("serve", help="serve the library over HTTP (a REST API; needs the "
                       "serve extra)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "%(default)s: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default %(default)s")
    s.add_argument("--models", help="folder of model files (*.safetensors) offered by name "
                   "besides the bundled ones")
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /api (default: "
                   "the CLEARVAE_TOKEN environment variable; none: no token)")
    s.add_argument("--workers", type=int, help="jobs computed at once (default: cores, at "
                   "most 2)")
    s.add_argument("--queue", type=int, default=8, help="jobs that may wait; more are "
                   "refused with 429 (default %(default)s)")
    s.add_argument("--max-upload-mb", type=float, default=32, help="largest request body "
                   "(default %(default)s)")
    s.add_argument("--max-pixels", type=int, default=2**22, help="largest image, checked from "
                   "its header (default %(default)s, 2048 x 2048)")
    s.add_argument("--timeout", type=float, default=120, help="seconds a request or job may "
                   "take before it is cancelled (default %(default)s)")
    s.add_argument("--cors", nargs="+", default=[], metavar="ORIGIN", help="web origins "
                   "allowed to call the API from a browser (default: none, CORS off)")
    s.set_defaults(func=cmd_serve)
    return p


def build_train_config(args: argparse.Namespace) -> Any:
    """YAML (or the checkpoint's own config when resuming), then flags, then --set."""
    import yaml

    from clearvae.config import parse_override, set_nested
    from clearvae.training import CHECKPOINT_NAME, TrainConfig

    data: dict[str, Any] = {}
    if args.preset:
        from clearvae.restore.presets import preset

        data = preset(args.preset)
    if args.config:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config '{args.config}': {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config '{args.config}' must be a mapping of keys to values")
        if args.preset:
            raise ConfigError("give --config or --preset, not both (override a preset's "
                              "keys with --set)")
    elif args.resume and args.out:
        from clearvae.checkpoint import load_file

        loaded = load_file(Path(args.out) / CHECKPOINT_NAME, expect="checkpoint")
        data = json.loads(loaded.metadata["train_config"])
    flags = {
        "data.train": args.data, "data.val": args.val, "out": args.out, "model.kind": args.model,
        "max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "devices": args.devices, "accelerator": args.accelerator,
        "strategy": args.strategy,
    }
    for key, value in flags.items():
        if value is not None:
            set_nested(data, key.split("."), value)
    if args.preset:
        from clearvae.restore.presets import fit_preset_to_data

        data = fit_preset_to_data(args.preset, data)
    for text in args.set:
        set_nested(data, *parse_override(text))
    return TrainConfig.from_dict(data)


def cmd_train(args: argparse.Namespace) -> None:
    from clearvae.training import train

    config = build_train_config(args)
    train(config, resume=args.resume, progress=args.progress)


def cmd_eval(args: argparse.Namespace) -> None:
    from clearvae.evaluate import evaluate_spec
    from clearvae.files import atomic_write
    from clearvae.generate import load

    model = load(args.model)
    result = evaluate_spec(model, args.data, split=args.split, limit=args.limit,
                           batch_size=args.batch_size, iw_samples=args.iw_samples, seed=args.seed)
    text = json.dumps({"model": args.model, **result}, indent=2)
    print(text)
    if args.output:
        atomic_write(args.output, text.encode() + b"\n")


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must look like HxW (e.g. 64x64), got {text!r}") from None
    return h, w


def cmd_sample(args: argparse.Namespace) -> None:
    from clearvae.data import write_image
    from clearvae.generate import load, sample_grid

    model = load(args.model)
    grid = sample_grid(model, args.count, args.temperature, args.seed, _size(args.size))
    write_image(args.output, grid)
    print(f"{args.count} samples (temperature {args.temperature}) written to {args.output}")


def _read_inputs(model: Any, files: list[str], data: str | None, picks: list[int]) -> Any:
    """Images from files, or the images at ``picks`` in dataset ``data``, as one batch."""
    import torch

    from clearvae.data import open_dataset, read_image
    from clearvae.generate import to_tensor

    c = model.config.image_channels
    if data:
        dataset = open_dataset(data, "test", mode="full", channels=c)
        for i in picks:
            if not 0 <= i < len(dataset):
                raise ConfigError(f"index {i} is outside the {len(dataset)} images of '{data}'")
        images = [dataset[i] for i in picks]
    else:
        images = [to_tensor(read_image(f, channels=c)) for f in files]
    if len({tuple(x.shape) for x in images}) > 1:
        raise ConfigError("the images have different sizes: give images of one size")
    return torch.stack(images)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from clearvae.data import write_image
    from clearvae.generate import load, reconstruction_grid

    if bool(args.images) == bool(args.data):
        raise ConfigError("give image files or --data (one of the two)")
    model = load(args.model)
    x = _read_inputs(model, args.images, args.data, list(range(args.count)))
    write_image(args.output, reconstruction_grid(model, x))
    print(f"{x.shape[0]} reconstructions written to {args.output}")


def cmd_interpolate(args: argparse.Namespace) -> None:
    from clearvae.data import write_image
    from clearvae.generate import interpolation_strip, load

    model = load(args.model)
    if args.data:
        try:
            picks = [int(args.a), int(args.b)]
        except ValueError:
            raise ConfigError("with --data, a and b are image indices (integers)") from None
        x = _read_inputs(model, [], args.data, picks)
    else:
        x = _read_inputs(model, [args.a, args.b], None, [])
    write_image(args.output, interpolation_strip(model, x[0], x[1], args.steps))
    print(f"interpolation in {args.steps} steps written to {args.output}")


MEDICAL_SUFFIXES = (".dcm", ".nii", ".nii.gz")


def _pairs(inputs: list[str], output: str | None, suffixes: tuple[str, ...],
           new_suffix: str, rename=None) -> list[tuple[Path, Path]]:
    """(source, target) for each input file, or each matching file in input folders (a
    folder of DICOM files is one input: a series)."""
    from clearvae.data.medical import is_medical

    def named(s: Path) -> Path:
        return rename(s) if rename else s.with_suffix(new_suffix)

    sources: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and ".dcm" in suffixes and is_medical(item):
            sources.append(item)
        elif item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.name.lower().endswith(suffixes))
            if not found:
                raise ConfigError(f"no {'/'.join(suffixes)} files in folder '{item}'")
            sources += found
        elif item.exists():
            sources.append(item)
        else:
            raise ConfigError(f"'{item}' does not exist")
    if output and len(sources) > 1 or output and Path(output).is_dir():
        out = Path(output)
        return [(s, out / named(s).name) for s in sources]
    if output:
        return [(sources[0], Path(output))]
    return [(s, named(s)) for s in sources]


class _Codecs:
    """The codec for each input: ``--model`` for all, else the bundled photo or MRI codec,
    loaded when first needed."""

    def __init__(self, model: str | None) -> None:
        self.model, self.loaded = model, {}

    def __call__(self, gray: bool):
        from clearvae.codec.storage import load_codec

        key = None if self.model else gray
        if key not in self.loaded:
            self.loaded[key] = load_codec(self.model, gray=gray)
        return self.loaded[key]


def cmd_compress(args: argparse.Namespace) -> int:
    from clearvae.codec.signing import read_key
    from clearvae.compress import Settings, compress_file, is_gray_volume, target_for
    from clearvae.data import IMAGE_EXTENSIONS

    codecs = _Codecs(args.model)
    key = read_key(args.key_file) if args.key_file else None
    settings = Settings(args.quality, args.effort, args.tile, args.target_bpp, args.max_bytes,
                        args.target_psnr, args.max_error)
    pairs = _pairs(args.inputs, args.output, IMAGE_EXTENSIONS + MEDICAL_SUFFIXES, ".cvae",
                   target_for)
    total_bytes = total_pixels = 0
    failed = []
    for source, target in pairs:
        try:
            codec = codecs(is_gray_volume(source))
            r = compress_file(codec, source, target, settings, args.drop_alpha,
                              overwrite=args.force, progress=_EncodeProgress(source),
                              key=key)
        except ClearvaeError as exc:
            print(f"clearvae compress: error: {exc}", file=sys.stderr)
            failed.append(source)
            continue
        total_bytes, total_pixels = total_bytes + r.compressed_bytes, total_pixels + r.pixels
        print(f"{source} -> {target}: {_bytes_of(source)} -> {r.compressed_bytes} bytes, "
              f"{r.bpp:.3f} bpp (quality {r.quality:g}, effort {r.effort})")
    if len(pairs) > 1 and total_pixels:
        print(f"{len(pairs) - len(failed)} images: {total_bytes} bytes, "
              f"{8 * total_bytes / total_pixels:.3f} bpp")
    return _batch_status("compress", failed, len(pairs))


def _bytes_of(path: Path) -> int:
    """Bytes of a file, or of the files of a folder (a DICOM series)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _slice_list(text: str) -> list[int]:
    """'0,5,10-12' -> [0, 5, 10, 11, 12]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise ConfigError(f"--slices takes numbers and ranges like 0,5,10-12; got {text!r}") \
            from None
    if len(out) > 1 << 20:
        raise ConfigError(f"--slices {text!r} asks for more than {1 << 20} slices")
    return out


def cmd_decompress(args: argparse.Namespace) -> int:
    from clearvae.codec.signing import read_key
    from clearvae.compress import decompress_file, is_volume_file

    codecs = _Codecs(args.model)
    key = read_key(args.key_file) if args.key_file else None
    pairs = _pairs(args.inputs, args.output, (".cvae",), ".png")
    failed = []
    for source, target in pairs:
        try:
            with open(source, "rb") as f:
                gray = is_volume_file(f.read(32))
            # no -o: the default name, which --force may not take from an image not ours
            r = decompress_file(codecs(gray), source, (target if not args.slices else
                                                       Path(args.output)) if args.output else None,
                                overwrite=args.force, max_pixels=args.max_pixels, key=key,
                                slices=_slice_list(args.slices) if args.slices else None)
        except OSError as exc:
            print(f"clearvae decompress: error: cannot read '{source}': {exc.strerror}",
                  file=sys.stderr)
            failed.append(source)
            continue
        except ClearvaeError as exc:
            print(f"clearvae decompress: error: {exc}", file=sys.stderr)
            failed.append(source)
            continue
        print(f"{source} -> {r.target}: {r.compressed_bytes} bytes, {r.bpp:.3f} bpp")
    return _batch_status("decompress", failed, len(pairs))


def _batch_status(command: str, failed: list[Path], total: int) -> int:
    """Exit status of a batch that went on past its failures: 0, or 2 (as for any error)
    after listing them."""
    if not failed:
        return 0
    if total > 1:
        print(f"clearvae {command}: {len(failed)} of {total} inputs failed: "
              f"{', '.join(map(str, failed))}", file=sys.stderr)
    return 2


class _EncodeProgress:
    """Progress of a refining encode on stderr, about twice a second; silent when fast."""

    def __init__(self, source: Path) -> None:
        import time

        self.source, self.clock, self.start, self.shown = source, time.monotonic, None, 0.0

    def __call__(self, done: int, total: int, bpp: float, psnr: float) -> None:
        now = self.clock()
        self.start = self.start if self.start is not None and done > 1 else now
        if now - self.shown < 0.5 and done < total:
            return
        self.shown = now
        end = "\n" if done == total else ""
        print(f"\r{self.source.name}: refining {done}/{total}, about {bpp:.3f} bpp, "
              f"{psnr:.2f} dB ({now - self.start:.0f} s; Ctrl-C stops, writing nothing)",
              end=end, file=sys.stderr, flush=True)


def cmd_denoise(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from clearvae.data import IMAGE_EXTENSIONS
    from clearvae.restore.denoise import load_denoiser
    from clearvae.restore.files import denoise_file, denoised_name, is_volume_input

    models: dict[bool | None, Any] = {}  # --model for all, else photo / MRI, loaded once

    def model_for(source: Path) -> Any:
        key = None if args.model else is_volume_input(source)
        if key not in models:
            models[key] = load_denoiser(args.model, medical=bool(key))
        return models[key]

    pairs = _pairs(args.inputs, args.output, IMAGE_EXTENSIONS + MEDICAL_SUFFIXES, ".png",
                   denoised_name)
    failed = []
    for source, target in tqdm(pairs, unit="image", disable=len(pairs) < 2):
        try:
            written, result = denoise_file(
                model_for(source), source, target, samples=args.samples,
                save_samples=args.save_samples, std_map=args.std, sigma=args.sigma,
                tile=args.tile, seed=args.seed, force_noise=args.ignore_noise_level,
                overwrite=args.force, ensemble=args.ensemble)
        except ClearvaeError as exc:
            print(f"clearvae denoise: error: {exc}", file=sys.stderr)
            failed.append(source)
            continue
        extra = f" (+ {', '.join(map(str, written.extras))})" if written.extras else ""
        print(f"{source} -> {target}{extra}: noise sigma {result.sigma:.1f} "
              f"({'given' if args.sigma else 'estimated'})")
    return _batch_status("denoise", failed, len(pairs))


def cmd_inpaint(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from clearvae.restore.files import inpaint_file
    from clearvae.restore.inpaint import load_restorer

    with tqdm(desc=f"inpainting {Path(args.input).name}", unit="step", file=sys.stderr,
              leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        model = load_restorer(args.model) if args.model else None  # None: photo or MRI default
        written, _ = inpaint_file(model, args.input, args.mask,
                                  args.output, samples=args.samples,
                                  iterations=args.iterations, tile=args.tile, seed=args.seed,
                                  overwrite=args.force, progress=progress)
    extra = f" (+ {len(written.extras)} more samples)" if written.extras else ""
    print(f"{args.input} -> {written.target}{extra}")


def serve_settings(args: argparse.Namespace) -> Any:
    """The service's settings from ``clearvae serve``'s flags (the token also from the
    environment)."""
    import os

    from clearvae.service.settings import TOKEN_ENV, ServiceSettings, default_workers

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    return ServiceSettings(
        host=args.host, port=args.port, models=Path(args.models) if args.models else None,
        token=token, workers=args.workers if args.workers is not None else default_workers(),
        queue=args.queue, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
        timeout=args.timeout, cors=tuple(args.cors))


def cmd_serve(args: argparse.Namespace) -> None:
    settings = serve_settings(args)
    try:
        from clearvae.service.server import serve
    except ImportError as exc:
        raise ConfigError(f"clearvae serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'clearvae[serve]'") from None
    serve(settings)


def cmd_demo(args: argparse.Namespace) -> None:
    from clearvae.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, codec=args.codec)


if __name__ == "__main__":
    sys.exit(main())
