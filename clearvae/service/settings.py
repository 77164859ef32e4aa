"""What ``clearvae serve`` runs with: address, token, models, and the limits that keep it up.

Every limit has a default that suits the 2-core, 24 GB machines this project runs on; each is
one flag of ``clearvae serve``. Settings are validated on construction (``ConfigError``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from clearvae.errors import ConfigError

TOKEN_ENV = "CLEARVAE_TOKEN"  # the token, when --token is not given
# A 2048 x 2048 image: the heaviest job (denoise with 16 kept samples of an RGB image) then
# needs about 1 GB of working memory, so two workers and a full queue fit in a few GB.
MAX_PIXELS = 2**22


def default_workers() -> int:
    """Jobs run at once: one per core, at most 2 (each job's torch ops use the cores too)."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServiceSettings:
    """The service's address, access, models and limits (see ``clearvae serve --help``)."""

    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int = 8000
    models: Path | None = None  # a folder of *.safetensors files offered by name
    token: str | None = None  # required as "Authorization: Bearer TOKEN" on /api when set
    workers: int = field(default_factory=default_workers)
    queue: int = 8  # jobs that may wait for a worker; one more is refused with 429
    max_upload_mb: float = 32.0  # the whole request body
    max_pixels: int = MAX_PIXELS  # per image, checked from its header before decoding
    timeout: float = 120.0  # seconds a request (or a job) may take before it is cancelled
    cors: tuple[str, ...] = ()  # origins allowed to call from a browser; none: CORS off

    def __post_init__(self) -> None:
        checks = {
            "port": isinstance(self.port, int) and 0 <= self.port <= 65535,
            "workers": _whole(self.workers) and 1 <= self.workers <= 64,
            "queue": _whole(self.queue) and 0 <= self.queue <= 10_000,
            "max_upload_mb": _number(self.max_upload_mb) and 0 < self.max_upload_mb <= 4096,
            "max_pixels": _whole(self.max_pixels) and 1 <= self.max_pixels <= 2**28,
            "timeout": _number(self.timeout) and 0 < self.timeout <= 86_400,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("invalid service settings: " + ", ".join(
                f"{k}={getattr(self, k)!r}" for k in bad) + " (see clearvae serve --help for "
                "the ranges)")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the token is empty: give a non-empty --token (or "
                              f"{TOKEN_ENV}), or none to serve without one")
        if self.models is not None and not Path(self.models).is_dir():
            raise ConfigError(f"--models '{self.models}' is not a folder")
        object.__setattr__(self, "cors", tuple(self.cors))
        if "*" in self.cors and self.token is None:
            raise ConfigError("--cors '*' lets any web page call the service: give a --token "
                              "too, or name the origins")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def loopback(self) -> bool:
        """Whether the service is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
