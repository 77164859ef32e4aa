"""MNIST likelihood: dense, conv and hierarchical VAEs trained with the same CPU budget.

    python benchmarks/mnist_likelihood.py --minutes 20 --out runs/mnist-bench
    ... --train /path/to/mnist   # a folder with the 60k IDX files: the full-data setting

Each family trains from its config in ``configs/`` (mnist-dense, mnist-conv, mnist-hvae) for
``--minutes`` of wall time on the training digits (default: the 5 000 digits of
``../shared/data/mnist/mnist_5k.csv.gz``), dynamically binarized, then is evaluated on the
10 000 official test digits binarized once with a fixed seed: negative ELBO and the
importance-weighted NLL bound with ``--iw-samples`` samples, in nats per image. Writes
OUT/mnist_likelihood.json and .md, and sample grids at temperatures 1.0 and 0.7 per family.
Published full-data numbers (``../shared/anchors/other.json``) are listed beside ours, labelled
as trained on 60 000 digits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from clearvae import checkpoint
from clearvae.data import open_dataset, write_image
from clearvae.evaluate import evaluate
from clearvae.files import atomic_write
from clearvae.generate import load, sample_grid
from clearvae.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))
FAMILIES = {"dense": "mnist-dense.yaml", "conv": "mnist-conv.yaml",
            "hierarchical": "mnist-hvae.yaml"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=20.0, help="training wall time per family")
    p.add_argument("--train", default=str(SHARED / "mnist" / "mnist_5k.csv.gz"))
    p.add_argument("--test", default=str(SHARED / "mnist"))
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N test digits")
    p.add_argument("--families", default=",".join(FAMILIES))
    args = p.parse_args()
    out = Path(args.out)
    test = open_dataset(args.test, "test", channels=1)
    results = {}
    for family in args.families.split(","):
        data = yaml.safe_load((REPO / "configs" / FAMILIES[family]).read_text())
        data.update(out=str(out / family), max_minutes=args.minutes, max_steps=10**9)
        data["data"] = {**data["data"], "train": args.train, "val": None}
        model_path = train(TrainConfig.from_dict(data), progress=False)
        model = load(model_path)
        info = checkpoint.load_file(model_path).info
        metrics = evaluate(model, test, limit=args.limit, iw_samples=args.iw_samples)
        results[family] = {"steps": info["steps"], "train_seconds": info["train_seconds"],
                           **metrics}
        for t in (1.0, 0.7):
            write_image(out / f"samples_{family}_t{t}.png", sample_grid(model, 64, t, seed=0))
        print(f"{family}: {info['steps']} steps in {info['train_seconds']} s; NELBO "
              f"{metrics['nelbo_nats']:.2f}, NLL (IW k={args.iw_samples}) "
              f"{metrics['nll_nats']:.2f} nats", flush=True)
    anchors_path = SHARED.parent / "anchors" / "other.json"
    anchors = json.loads(anchors_path.read_text())["mnist_nll_nats"] if anchors_path.exists() \
        else {}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()},
              "train": args.train, "test": args.test, "minutes_per_family": args.minutes,
              "results": results, "published_60k": anchors}
    atomic_write(out / "mnist_likelihood.json", json.dumps(report, indent=2).encode())
    lines = [f"Trained on `{args.train}` for {args.minutes} min each; test: "
             f"{results[next(iter(results))]['images']} digits of t10k, dynamically binarized.",
             "", "| model | steps | train (s) | NELBO (nats) | NLL, IW bound (nats) |",
             "|---|---:|---:|---:|---:|"]
    for family, r in results.items():
        lines.append(f"| clearvae {family} | {r['steps']} | {r['train_seconds']} | "
                     f"{r['nelbo_nats']:.2f} | {r['nll_nats']:.2f} |")
    for name, value in anchors.items():
        if name != "about":
            lines.append(f"| {name} (published, 60 000 training digits) | | | | {value} |")
    atomic_write(out / "mnist_likelihood.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
