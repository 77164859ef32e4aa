"""What a benchmark ran on, for its JSON report: CPU, platform, threads and package versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's marketing name (Linux); ``platform.processor()`` is often empty there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: tuple[str, ...] = (), **extra: object) -> dict:
    """CPU, platform, torch threads, Python and the versions of ``packages``, plus ``extra``."""
    return {"processor": platform.processor(), "cpu_model": cpu_model(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": sys.version.split()[0],
            **{p: version(p) for p in ("torch", *packages)}, **extra}
