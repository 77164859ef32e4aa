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


def bar_patterns():
    """(8, 1, 12, 12) eight fixed binary images (bars at different places): learnable."""
    import torch

    x = torch.zeros(8, 1, 12, 12)
    for i in range(8):
        x[i, 0, :, i : i + 3] = 1.0
        x[i, 0, i : i + 2, :] = 1.0
    return x


def fit(model, x, steps: int = 60, lr: float = 3e-3):
    """Train ``model`` on ``x`` with Adam; returns the losses and the last LossTerms."""
    import torch

    from clearvae.models import vae_loss

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        terms = vae_loss(model(x))
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        losses.append(terms.loss.item())
    return losses, terms
