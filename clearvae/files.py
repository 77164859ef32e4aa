"""Writing files so that a crash or a kill never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

# What ``tempfile.mkstemp`` puts between prefix and suffix: 8 of these characters.
_RANDOM_PART = r"[a-z0-9_]{8}"


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``:
    readers see either the old file or the complete new one, never a partial write. On any
    failure (a full disk, a read-only folder, an interrupt) the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed whatever happens below
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # keep the original error, not the clean-up's
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files that ``atomic_write(folder / name, ...)`` leaves behind when
    its process is killed (``.NAME.xxxxxxxx.tmp``); nothing else. Returns what was removed."""
    folder = Path(folder)
    pattern = re.compile(re.escape(f".{name}.") + _RANDOM_PART + re.escape(".tmp"))
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in folder.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
