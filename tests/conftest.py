"""Shared test helpers: where the reference data lies, and skipping cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEARVAE_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A file or folder of the shared data, or skip the test saying where it was looked for."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared data '{path}' is absent: set CLEARVAE_DATA to the folder holding "
                    "it (see ../shared/data/README.md)")
    return path
