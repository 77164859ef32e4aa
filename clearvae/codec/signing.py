"""Keyed integrity for ``.cvae`` files: an HMAC-SHA256 seal that detects tampering.

The CRC-32 inside every ``.cvae`` file catches accidents (truncation, bit rot, a bad copy),
not tampering: anyone can edit a file and recompute it. A file sealed with a secret key
(``clearvae compress --key-file K``) is wrapped as::

    offset  size  field
    0       4     magic b"CVAS"
    4       1     seal version (1)
    5       8     key id: the first 8 bytes of SHA-256(b"clearvae key id" + key), so that a
                  wrong key is told apart from a changed file (it reveals nothing usable
                  about the key)
    13      n     the ``.cvae`` file itself (format 2 or 3), unchanged
    13+n    32    HMAC-SHA256(key, every byte before it) (RFC 2104, FIPS 198-1)

``open_sealed`` checks the seal in constant time before anything is decoded. Whoever holds the
key can still make a valid sealed file: this proves the file came from a key holder unchanged,
not who among them wrote it (that would take signatures with key pairs).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from clearvae.errors import DataError

MAGIC = b"CVAS"
VERSION = 1
TAG_BYTES = 32
OVERHEAD = 4 + 1 + 8 + TAG_BYTES  # bytes a seal adds to a file
MIN_KEY_BYTES = 16  # 128 bits
MAX_KEY_BYTES = 1 << 16


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"clearvae key id" + key).digest()[:8]


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise DataError(f"a sealing key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (e.g. "
                        "`head -c 32 /dev/urandom > cvae.key`)")
    return bytes(key)


def read_key(path: str | os.PathLike) -> bytes:
    """The key in a key file (its raw bytes; at least 16)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise DataError(f"key file '{path}' is larger than {MAX_KEY_BYTES} bytes: is it "
                            "really a key?")
        key = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read key file '{path}': {exc.strerror or exc}") from None
    try:
        return _check_key(key)
    except DataError as exc:
        raise DataError(f"key file '{path}': {exc}") from None


def seal(data: bytes, key: bytes) -> bytes:
    """``data`` (a ``.cvae`` file) wrapped with the seal of ``key``."""
    body = MAGIC + bytes([VERSION]) + key_id(_check_key(key)) + data
    return body + hmac.new(key, body, hashlib.sha256).digest()


def is_sealed(data: bytes) -> bool:
    return data[:4] == MAGIC


def open_sealed(data: bytes, key: bytes | None, name: str = "input") -> bytes:
    """The ``.cvae`` file inside ``data`` after checking its seal with ``key``; ``data`` itself
    when it is not sealed and no key is given. A key given for an unsealed file, a sealed
    file without its key, a wrong key or any changed byte: a ``DataError`` naming the file."""
    if not is_sealed(data):
        if key is not None:
            raise DataError(f"'{name}' is not sealed, so it cannot be checked with the key: it "
                            "was written without --key-file, or its seal was removed")
        return data
    if key is None:
        raise DataError(f"'{name}' is sealed with a key: give it (--key-file) to check and "
                        "decode it")
    key = _check_key(key)
    if len(data) < OVERHEAD or data[4] != VERSION:
        raise DataError(f"'{name}' has a damaged or unknown seal (version "
                        f"{data[4] if len(data) > 4 else '?'}; this clearvae reads {VERSION})")
    if not hmac.compare_digest(data[5:13], key_id(key)):
        raise DataError(f"'{name}' was sealed with another key")
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()):
        raise DataError(f"'{name}' was changed after it was sealed (its HMAC does not match): "
                        "do not trust it")
    return body[13:]
