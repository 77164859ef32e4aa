"""HTTP errors of the service: one JSON shape, the status of each library error, no paths.

Every error body is ``{"error": "<what was wrong and what to do>", "detail": <data or null>}``.
The library's errors already speak to the user; here they get their status (``status_of``)
and lose the server's folders (``scrub``): a client sees its upload named by its form field,
never a temporary path, and model files by name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clearvae.errors import ClearvaeError, ConfigError, ModelFileError


class ServiceError(Exception):
    """An error to answer with ``status`` and the JSON body ``body()``."""

    def __init__(self, status: int, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "detail": self.detail}


def status_of(exc: ClearvaeError) -> int:
    """422 for options the library refuses, 400 for inputs it cannot use, 500 for a model
    file of the server's own that is damaged (the client can do nothing about it)."""
    if isinstance(exc, ConfigError):
        return 422
    if isinstance(exc, ModelFileError):
        return 500
    return 400  # DataError and any other: the input


def scrub(text: str, folders: list[Path]) -> str:
    """``text`` with every ``folder/`` prefix removed (longest first)."""
    for folder in sorted({str(f) for f in folders}, key=len, reverse=True):
        text = text.replace(folder + os.sep, "").replace(folder, "")
    return text


@contextlib.contextmanager
def client_errors(folders: list[Path]) -> Iterator[None]:
    """Library errors raised inside the block as ServiceErrors without server paths."""
    try:
        yield
    except ClearvaeError as exc:
        raise ServiceError(status_of(exc), scrub(str(exc), folders)) from None
