"""Fuzz campaign: mutated .cvae files, codec model files and input images, each run in a
worker process with a time and a memory bound, and every outcome classified.

    python benchmarks/fuzz.py [--cases 2000] [--seed 0] [--workers 2] [--out fuzz-out]
                              [--kinds cvae,model,image] [--timeout 10] [--memory-mb 2048]
    python benchmarks/fuzz.py --replay fuzz-out/failures/traceback/cvae-17-....cvae
    python benchmarks/fuzz.py --start 50000 --cases 50000 --out fuzz-out   # a second chunk
    python benchmarks/fuzz.py --merge --out fuzz-out                       # chunks added up

Inputs are made from a small randomly initialised codec (saved as OUT/codec.safetensors, the
model every .cvae seed is coded with) and small Pillow-made images. The mutators know the
formats: every field of the .cvae header (offsets taken from ``container._HEAD`` and named
from the layout table in ``container``'s docstring, so a new format version needs no edit
here), the block table's stream lengths, the payloads, with the CRC recomputed or not; the
metadata, config fields, tensors (values, shapes, dtypes, names) and raw bytes of a
safetensors model file, with its model id recomputed or not; the IHDR / SOF / IFD headers
and chunks of PNG, JPEG and TIFF files. Case i depends only on (seed, i), so any case can be
made again. (A seeded mutator rather than hypothesis: each case must run in another process
under a time and a memory limit, which hypothesis' in-process search and shrinking do not
fit.)

Outcomes: ``clean`` (a clearvae error, the message a user sees), ``success`` (decoded or
loaded), ``traceback`` (any other exception), ``memory`` (MemoryError, an allocation refused
at the limit, or killed), ``hang`` (past the time limit) and ``crash`` (killed by a signal).
The script prints counts per kind and per mutation, saves the first few inputs of each bad
class under OUT/failures/CLASS/ (with what happened, and how to replay them), and exits with
1 if any case was bad.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import multiprocessing as mp
import os
import random
import re
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

KINDS = ("cvae", "model", "image", "volume", "medical", "sealed")
SEAL_KEY = b"fuzzing key, 32 bytes long......"  # the key the sealed seeds are sealed with
BAD = ("traceback", "memory", "hang", "crash")
CLASSES = ("clean", "success", *BAD)
KEEP = 5  # failing inputs saved per bad class


@dataclass
class Case:
    index: int
    kind: str
    mutation: str  # e.g. "header:quality:crc"
    data: bytes
    suffix: str  # file name suffix for the input (".cvae", ".safetensors", ".png", ...)


# --- seeds: a small codec, files it coded, images -------------------------------------------

def make_seeds(out: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Seed inputs of every kind; writes the codec that the .cvae seeds need to OUT."""
    import torch
    from PIL import Image

    from clearvae.codec.codec import Codec
    from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
    from clearvae.codec.storage import save_codec

    torch.manual_seed(0)
    config = HyperpriorCodecConfig(channels_n=8, channels_m=8, context_slices=2)
    codec = Codec(HyperpriorCodec(config).eval())
    model_path = save_codec(codec, out / "codec.safetensors")
    rng = np.random.default_rng(0)
    rgb = _smooth(rng, 64, 64, 3)
    cvae = [("rgb-q4", codec.compress(rgb, quality=4)),
            ("gray-q1", codec.compress(_smooth(rng, 40, 56, 1)[:, :, 0], quality=1)),
            ("blocks-q8", codec.compress(_smooth(rng, 130, 200, 3), quality=8, tile=64)),
            ("flat-q2", codec.compress(_flat(_smooth(rng, 70, 150, 3)), quality=2, tile=64))]
    images = []
    for name, mode, ext, kwargs in [
            ("rgb", "RGB", "png", {}), ("gray", "L", "png", {}), ("rgba", "RGBA", "png", {}),
            ("gray16", "I;16", "png", {}), ("palette", "P", "png", {"transparency": 0}),
            ("rgb", "RGB", "jpg", {"quality": 90}), ("gray", "L", "jpg", {}),
            ("progressive", "RGB", "jpg", {"progressive": True}),
            ("rgb", "RGB", "tif", {}), ("float", "F", "tif", {}), ("rgb", "RGB", "bmp", {})]:
        im = Image.fromarray(rgb[:40, :48]).convert(mode if mode != "I;16" else "I")
        if mode == "I;16":
            im = Image.fromarray(rgb[:40, :48, 0].astype(np.uint16) * 257)
        if mode == "F":
            im = Image.fromarray(rgb[:40, :48, 0].astype(np.float32) / 255)
        buf = io.BytesIO()
        im.save(buf, format={"jpg": "JPEG", "tif": "TIFF"}.get(ext, ext.upper()), **kwargs)
        images.append((f"{name}.{ext}", buf.getvalue()))
    frames = [Image.fromarray(rgb[:32, :32]), Image.fromarray(rgb[32:, 32:])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    images.append(("animated.gif", buf.getvalue()))
    from clearvae.codec.signing import seal

    return {"cvae": cvae, "model": [("codec", model_path.read_bytes())], "image": images,
            "volume": _volume_seeds(out, rng), "medical": _medical_seeds(),
            "sealed": [(f"sealed-{name}", seal(data, SEAL_KEY)) for name, data in cvae]}


def _volume_seeds(out: Path, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Gray-volume (format 3) files of a small gray codec, written to OUT/gray.safetensors."""
    import torch

    from clearvae.codec.codec import Codec
    from clearvae.codec.gray import GrayVolume, compress_gray
    from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
    from clearvae.codec.storage import save_codec

    torch.manual_seed(0)
    config = HyperpriorCodecConfig(channels_n=8, channels_m=8, context_slices=2,
                                   image_channels=1)
    codec = Codec(HyperpriorCodec(config).eval())
    save_codec(codec, out / "gray.safetensors")
    values = (np.stack([_smooth(rng, 40, 56, 1)[:, :, 0] for _ in range(2)]).astype(np.uint16)
              * 16)  # 12 bits
    volume = GrayVolume(values, 12, "image", "int16", -100, b"")
    return [("lossy-q2", compress_gray(codec, volume, quality=2)),
            ("lossless", compress_gray(codec, volume, max_error=0, quality=1)),
            ("near-k2", compress_gray(codec, volume, max_error=2))]


def _medical_seeds() -> list[tuple[str, bytes]]:
    """DICOM (single and multi-frame) and NIfTI (plain and gzip) files, where installed."""
    seeds = []
    try:
        from pydicom.data import get_testdata_file

        for name in ("MR_small.dcm", "emri_small.dcm"):
            path = get_testdata_file(name, download=False)
            if path:
                seeds.append((name, Path(path).read_bytes()))
    except ImportError:
        pass
    try:
        import gzip

        from nibabel.testing import data_path

        nii = (Path(data_path) / "example4d.nii.gz").read_bytes()
        seeds += [("example4d.nii.gz", nii), ("example4d.nii", gzip.decompress(nii))]
    except ImportError:
        pass
    return seeds


def mutate_volume(rng: random.Random, seed: bytes) -> tuple[str, bytes]:
    """A format-3 file with a header field, a length, a byte or its end changed."""
    from clearvae.codec import volume_container

    data = bytearray(seed)
    op = rng.choice(["field", "field", "field", "byte", "byte", "truncate", "append"])
    crc = rng.random() < 0.85
    if op == "field":
        fields = [(5, "B"), (6, "B"), (7, "B"), (8, "H"), (10, "B"), (11, "B"), (20, "i"),
                  (24, "I"), (28, "I"), (32, "I"), (36, "H"), (38, "I")]
        _, meta, table = volume_container.read_volume_header(bytes(data), max_pixels=2**40)
        fields += [(table + 4 * i, "I") for i in range(min(4, (len(data) - table) // 4))]
        pos, code = rng.choice(fields)
        (old,) = struct.unpack_from("<" + code, data, pos)
        bits = 8 * struct.calcsize(code)
        new = _interesting(rng, old & (2**bits - 1), bits)
        struct.pack_into("<" + code.upper() if code == "i" else "<" + code, data, pos, new)
        op = f"field@{pos}"
    elif op == "byte":
        data[rng.randrange(len(data) - 4)] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        data, crc = data[:rng.randrange(len(data))], False
    else:
        data += rng.randbytes(rng.randint(1, 64))
    if crc and len(data) > 4:
        _fix_crc(data)
    return f"volume:{op}:{'crc' if crc else 'nocrc'}", bytes(data)


def _flat(picture: np.ndarray) -> np.ndarray:
    """The picture with a black left third and a white square: a file with a flat-cell map."""
    out = picture.copy()
    out[:, : out.shape[1] // 3] = 0
    out[-32:, -32:] = 255
    return out


def _smooth(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """(H, W, C) uint8: a blurred noise picture."""
    from PIL import Image

    small = (rng.random((h // 8 + 1, w // 8 + 1, c)) * 255).astype(np.uint8)
    im = Image.fromarray(small[:, :, 0] if c == 1 else small).resize((w, h), Image.BILINEAR)
    return np.asarray(im).reshape(h, w, c)


# --- mutators ---------------------------------------------------------------------------------

def _interesting(rng: random.Random, old: int, bits: int) -> int:
    """A value of ``bits`` bits other than ``old`` that parsers tend to get wrong."""
    top = 2**bits - 1
    values = {0, 1, 2, top, top - 1, top // 2, old + 1, old - 1, old * 2, 16 * old, 64,
              old ^ (1 << rng.randrange(bits)), rng.randrange(top + 1)}
    return rng.choice(sorted(v for v in values if 0 <= v <= top and v != old))


def _fix_crc(data: bytearray) -> bytearray:
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    return data


_FILLER = {"a", "an", "b", "in", "of", "the"}


def header_fields() -> list[tuple[str, int, str]]:
    """(name, offset, struct code) of each field of the .cvae header, from ``_HEAD``; names
    from the layout table of ``container``'s docstring (offset -> description)."""
    from clearvae.codec import container

    fmt = container._HEAD.format
    fmt = fmt if isinstance(fmt, str) else fmt.decode()
    order, body = fmt[0], fmt[1:]
    described = {}
    for line in (container.__doc__ or "").splitlines():
        m = re.match(r"\s+(\d+)\s+\d+\s+(.+)$", line)
        if m:
            words = [w for w in re.findall(r"\b[a-z]+\b", m.group(2)) if w not in _FILLER]
            described[int(m.group(1))] = "-".join(words[:2])
    fields, done = [], ""
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", body):
        offset = struct.calcsize(order + done)
        fields.append((described.get(offset, f"field@{offset}"), offset, f"{count}{code}"))
        done += f"{count}{code}"
    return fields


def mutate_cvae(rng: random.Random, seed: bytes) -> tuple[str, bytes]:
    from clearvae.codec import container

    data = bytearray(seed)
    head, table = container._HEAD.size, container._TILE.size
    _, offset, code = header_fields()[-1]  # the block count ends the header
    (tiles,) = struct.unpack_from("<" + code, data, offset)
    crc = rng.random() < 0.75  # recompute the checksum, so the mutation reaches deeper
    op = rng.choice(["header", "header", "lengths", "payload", "payload", "size", "truncate",
                     "extend", "random", "garbled"])
    if op == "header":
        name, offset, code = rng.choice(header_fields())
        if code[-1] == "s":
            size = int(code[:-1] or 1)
            data[offset:offset + size] = rng.choice([bytes(size), b"\xff" * size,
                                                     rng.randbytes(size)])
        else:
            (old,) = struct.unpack_from("<" + code, data, offset)
            bits = 8 * struct.calcsize(code)
            struct.pack_into("<" + code, data, offset, _interesting(rng, old, bits))
        op = f"header:{name}"
    elif op == "lengths":  # a block's stream length, or the flat-cell map's
        flags = next(o for name, o, _ in header_fields() if name.startswith("flags"))
        i = rng.randrange(4 * tiles + (data[flags] & container.FLAT))
        pos = head + 4 * i
        (old,) = struct.unpack_from("<I", data, pos)
        struct.pack_into("<I", data, pos, _interesting(rng, old, 32))
    elif op == "payload":
        start, end = head + tiles * table, len(data) - 4
        if end > start:
            how = rng.choice(["flip", "byte", "zero", "delete", "insert"])
            pos = rng.randrange(start, end)
            if how == "flip":
                data[pos] ^= 1 << rng.randrange(8)
            elif how == "byte":
                data[pos] = rng.randrange(256)
            elif how == "zero":
                k = rng.randint(1, 16)
                data[pos:pos + k] = bytes(len(data[pos:pos + k]))
            elif how == "delete":
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
            op = f"payload:{how}"
    elif op == "size":  # a header edited to another image size, streams left as they were
        sides = [f for f in header_fields() if re.search("height|width", f[0])]
        for _, offset, _ in sides or [f for f in header_fields() if f[2] == "I"][:2]:
            (old,) = struct.unpack_from("<I", data, offset)
            struct.pack_into("<I", data, offset, rng.choice([old + 1, old * 2, old + 64,
                                                              1 << 17, 1 << 16, 131072 - 1]))
    elif op == "truncate":
        data = data[:rng.randrange(len(data))]
    elif op == "extend":
        data[-4:-4] = rng.randbytes(rng.randint(1, 64))
    elif op == "random":
        data = bytearray(data[:rng.choice([0, 4, 5])] + rng.randbytes(rng.randint(0, 300)))
    else:  # garbled: this header and block table, random streams of the same lengths
        cut = head + tiles * table
        data = data[:cut] + bytearray(rng.randbytes(len(data) - cut - 4)) + data[-4:]
    if crc and len(data) >= 4:
        data = _fix_crc(data)
    return f"{op}:{'crc' if crc else 'nocrc'}", bytes(data)


def mutate_model(rng: random.Random, seed: bytes) -> tuple[str, bytes]:
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    n = struct.unpack_from("<Q", seed)[0]
    metadata = dict(json.loads(seed[8:8 + n]).get("__metadata__", {}))
    tensors = st_load(seed)
    names = sorted(tensors)
    op = rng.choice(["metadata", "config", "model_id", "values", "values", "values", "shape",
                     "dtype", "remove", "add", "rename", "bytes"])
    forge = rng.random() < 0.5  # recompute the model id, so only content checks can catch it
    if op == "metadata":
        key = rng.choice(["format", "format_version", "kind", "model_config", "info",
                          "clearvae_version"])
        value = rng.choice(["", "two", "-1", "99", "1e9", "null", "[]", "{}", "\u00e9\u0000",
                            '{"kind": "hyperprior"}', None])
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
        op, forge = f"metadata:{key}", False
    elif op == "config":
        config = json.loads(metadata["model_config"])
        key = rng.choice([*config, "extra"])
        config[key] = rng.choice([0, -1, 1, 3, 7, 10**6, 10**12, "8", 2.5, None, [], True,
                                  [1e-3], [-1.0, 1.0], [float("nan")], "conv", {}])
        metadata["model_config"] = json.dumps(config)
        op, forge = f"config:{key}", False
    elif op == "model_id":
        info = json.loads(metadata["info"])
        info["model_id"] = rng.choice(["", "00" * 8, "zz" * 8, "ab" * 9, 7, None,
                                       rng.randbytes(8).hex()])
        metadata["info"], forge = json.dumps(info), False
    elif op in ("values", "shape", "dtype", "remove", "rename"):
        name = rng.choice(names)
        t = tensors[name].clone()
        if op == "values":
            flat = t.reshape(-1)
            if flat.numel():
                i = rng.randrange(flat.numel())
                if t.is_floating_point():
                    how = rng.choice(["nan", "inf", "-inf", "zero", "negate", "huge", "scale"])
                    if how == "scale":
                        flat.mul_(rng.choice([0.0, -1.0, 1e6, 1e-6, 2.0]))
                    else:
                        flat[i] = {"nan": float("nan"), "inf": float("inf"), "zero": 0.0,
                                   "-inf": float("-inf"), "huge": 1e30,
                                   "negate": -float(flat[i])}[how]
                else:
                    how = rng.choice(["plus1", "minus1", "zero", "negative", "max", "double"])
                    info = torch.iinfo(t.dtype)
                    old = int(flat[i])
                    flat[i] = {"plus1": min(old + 1, info.max), "minus1": max(old - 1, info.min),
                               "zero": 0, "negative": max(-abs(old) - 1, info.min),
                               "max": info.max, "double": max(min(2 * old, info.max),
                                                              info.min)}[how]
            if t.equal(tensors[name]):  # e.g. a zero doubled
                return "noop", seed
            tensors[name] = t
            op = f"values:{_group(name)}:{how if flat.numel() else 'empty'}"
        elif op == "shape":
            how = rng.choice(["shorter", "longer", "flat", "extra-dim", "empty"])
            if how == "shorter" and t.ndim and t.shape[0] > 1:
                t = t[:-1]
            elif how == "longer" and t.ndim:
                t = torch.cat([t, t[:1]])
            elif how == "flat":
                t = t.reshape(-1)
            elif how == "extra-dim":
                t = t[None]
            else:
                t = t.reshape(-1)[:0]
            tensors[name] = t.contiguous()
            op = f"shape:{_group(name)}:{how}"
        elif op == "dtype":
            dtype = rng.choice([torch.float64, torch.float16, torch.int64, torch.int32,
                                torch.int16, torch.uint8, torch.bool])
            tensors[name] = t.to(dtype)
            op = f"dtype:{_group(name)}"
        elif op == "remove":
            del tensors[name]
            op = f"remove:{_group(name)}"
        else:
            new = rng.choice(["x", name + "x", name.rsplit(".", 1)[0] + ".9"])
            tensors[new] = tensors.pop(name)
            op = f"rename:{_group(name)}"
    elif op == "add":
        tensors[rng.choice(["extra", "tables.extra", "tables.context.7.0.meta",
                            "tables.scale_head.9.weight"])] = torch.zeros(3, dtype=torch.int64)
    if op == "bytes":
        data = bytearray(seed)
        how = rng.choice(["header", "data", "truncate", "length"])
        if how == "header":
            data[8 + rng.randrange(n)] = rng.randrange(256)
        elif how == "data":
            data[8 + n + rng.randrange(len(data) - 8 - n)] ^= 1 << rng.randrange(8)
        elif how == "truncate":
            data = data[:rng.randrange(len(data))]
        else:
            struct.pack_into("<Q", data, 0, _interesting(rng, n, 64))
        return f"bytes:{how}", bytes(data)
    if forge and "model_id" in metadata.get("info", ""):
        info = json.loads(metadata["info"])
        metadata["info"] = json.dumps({**info, "model_id": _model_id(tensors)})
    return f"{op}:{'forged-id' if forge else 'id'}", st_save(tensors, metadata=metadata)


def _group(name: str) -> str:
    """A tensor name without indices: the part of the model or tables it belongs to."""
    parts = name.split(".")
    return ".".join(parts[:3] if parts[0] == "tables" else parts[:1])


def _model_id(tensors: dict) -> str:
    """What ``codec.model_id`` computes, over the tensors as they are (a tamperer's id)."""
    from clearvae.codec.codec import state_digest

    return state_digest({k.removeprefix("tables."): v for k, v in tensors.items()}).hex()


def _png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, payload) of each chunk after the signature."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = bytes(data[pos + 4:pos + 8])
        out.append((pos, kind, bytes(data[pos + 8:pos + 8 + length])))
        pos += 12 + length
    return out


def _png_chunk(kind: bytes, payload: bytes, crc: bool = True) -> bytes:
    check = zlib.crc32(kind + payload) if crc else 0
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", check)


def mutate_image(rng: random.Random, name: str, seed: bytes) -> tuple[str, bytes]:
    data = bytearray(seed)
    ext = name.rsplit(".", 1)[1]
    fmt = {"jpg": "jpeg", "tif": "tiff"}.get(ext, ext)
    op = rng.choice(["format", "format", "format", "flip", "truncate", "append"])
    if op == "format" and ext == "png":
        chunks = _png_chunks(data)
        how = rng.choice(["ihdr", "ihdr", "length", "drop", "insert", "idat"])
        crc = rng.random() < 0.8
        if how == "ihdr":
            pos, _, ihdr = chunks[0]
            ihdr = bytearray(ihdr)
            field = rng.choice([(0, ">I"), (4, ">I"), (8, "B"), (9, "B"), (10, "B"), (11, "B"),
                                (12, "B")])
            (old,) = struct.unpack_from(field[1], ihdr, field[0])
            struct.pack_into(field[1], ihdr, field[0],
                             _interesting(rng, old, 8 * struct.calcsize(field[1])))
            data[pos:pos + 25] = _png_chunk(b"IHDR", bytes(ihdr), crc)
            how = f"ihdr@{field[0]}"
        elif how == "length":
            pos = rng.choice(chunks)[0]
            (old,) = struct.unpack_from(">I", data, pos)
            struct.pack_into(">I", data, pos, _interesting(rng, old, 32))
        elif how in ("drop", "insert", "idat"):
            i = rng.randrange(len(chunks))
            pos, kind, payload = chunks[i]
            end = pos + 12 + len(payload)
            if how == "drop":
                del data[pos:end]
            elif how == "insert":
                extra = rng.choice([(b"tEXt", b"k\x00" + rng.randbytes(rng.randint(0, 99))),
                                    (b"iCCP", b"p\x00\x00" + rng.randbytes(40)),
                                    (b"zTXt", b"k\x00\x00" + zlib.compress(bytes(10**6))),
                                    (b"PLTE", rng.randbytes(rng.choice([3, 5, 768, 771]))),
                                    (b"tRNS", rng.randbytes(rng.randint(1, 300)))])
                data[end:end] = _png_chunk(*extra, crc)
            else:
                idat = [c for c in chunks if c[1] == b"IDAT"][0]
                payload = bytearray(idat[2])
                payload[rng.randrange(len(payload))] = rng.randrange(256)
                data[idat[0]:idat[0] + 12 + len(payload)] = _png_chunk(b"IDAT", bytes(payload),
                                                                       crc)
        op = f"png:{how}:{'crc' if crc else 'nocrc'}"
    elif op == "format" and ext == "jpg":
        sof = next((m.start() for m in re.finditer(rb"\xff[\xc0-\xc2]", data)), None)
        how = rng.choice(["sof", "sof", "segment-length", "scan"])
        if how == "sof" and sof is not None:
            field = rng.choice([(5, ">H"), (7, ">H"), (4, "B"), (9, "B")])  # h, w, bits, comps
            (old,) = struct.unpack_from(field[1], data, sof + field[0])
            struct.pack_into(field[1], data, sof + field[0],
                             _interesting(rng, old, 8 * struct.calcsize(field[1])))
            how = f"sof@{field[0]}"
        elif how == "segment-length":
            markers = [m.start() for m in re.finditer(rb"\xff[\xc0-\xfe]", data[:600])
                       if data[m.start() + 1] not in (0xD8, 0xD9) and m.start() + 4 < len(data)]
            if markers:
                pos = rng.choice(markers)
                (old,) = struct.unpack_from(">H", data, pos + 2)
                struct.pack_into(">H", data, pos + 2, _interesting(rng, old, 16))
        else:
            pos = rng.randrange(len(data) // 2, len(data))
            data[pos] = rng.randrange(256)
        op = f"jpeg:{how}"
    elif op == "format" and ext == "tif":
        order = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
        pos = rng.choice(entries)
        (tag,) = struct.unpack_from(order + "H", data, pos)
        field = rng.choice([(4, "I", "count"), (8, "I", "value"), (8, "H", "value16"),
                            (2, "H", "type")])
        (old,) = struct.unpack_from(order + field[1], data, pos + field[0])
        struct.pack_into(order + field[1], data, pos + field[0],
                         _interesting(rng, old, 8 * struct.calcsize(field[1])))
        op = f"tiff:tag{tag}:{field[2]}"
    elif op == "flip" or op == "format":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        op = f"{fmt}:flip"
    elif op == "truncate":
        data = data[:rng.randrange(len(data))]
        op = f"{fmt}:truncate"
    else:
        data += rng.randbytes(rng.randint(1, 200))
        op = f"{fmt}:append"
    return op, bytes(data)


def mutate_sealed(rng: random.Random, seed: bytes) -> tuple[str, bytes]:
    """A sealed file changed: its inside (then sealed again with the key: the decoder behind
    the seal is fuzzed; or not: the seal must refuse it), or the seal's own bytes."""
    from clearvae.codec.signing import OVERHEAD, TAG_BYTES, seal

    head, inner, tag = seed[: OVERHEAD - TAG_BYTES], seed[OVERHEAD - TAG_BYTES : -TAG_BYTES], \
        seed[-TAG_BYTES:]
    op = rng.choice(["reseal", "tamper", "seal-byte", "truncate", "append"])
    if op in ("reseal", "tamper"):
        mutation, changed = mutate_cvae(rng, inner)
        return f"{op} {mutation}", seal(changed, SEAL_KEY) if op == "reseal" else \
            head + changed + tag
    data = bytearray(seed)
    if op == "seal-byte":  # the magic, version, key id or tag
        i = rng.choice(list(range(len(head))) + list(range(len(data) - TAG_BYTES, len(data))))
        data[i] ^= 1 << rng.randrange(8)
        return f"seal-byte: {i}", bytes(data)
    if op == "truncate":
        n = rng.randrange(len(data))
        return f"truncate: {n}", bytes(data[:n])
    return "append", bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def make_case(seeds: dict, kinds: list[str], seed: int, index: int) -> Case:
    """Case ``index`` of the campaign ``seed``: the same inputs every time."""
    rng = random.Random(f"{seed}:{index}")
    kind = kinds[index % len(kinds)]
    name, original = rng.choice(seeds[kind])
    suffix = {"cvae": ".cvae", "model": ".safetensors", "volume": ".cvae",
              "sealed": ".cvae"}.get(kind) or (
        ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix)
    for _ in range(8):  # a mutation that changed nothing tests nothing: draw another
        if kind == "cvae":
            mutation, data = mutate_cvae(rng, original)
        elif kind == "model":
            mutation, data = mutate_model(rng, original)
        elif kind == "volume":
            mutation, data = mutate_volume(rng, original)
        elif kind == "sealed":
            mutation, data = mutate_sealed(rng, original)
        else:
            mutation, data = mutate_image(rng, name, original)
        if data != original:
            break
    return Case(index, kind, mutation, data, suffix)


# --- running a case ---------------------------------------------------------------------------

class Target:
    """What a worker holds: the codec the .cvae seeds were made with, and a picture."""

    def __init__(self, model_path: Path, work: Path) -> None:
        from clearvae.codec.storage import load_codec

        self.codec = load_codec(model_path)
        gray = Path(model_path).with_name("gray.safetensors")
        self.gray = load_codec(gray) if gray.exists() else None
        self.work = work
        self.picture = (np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8)

    def run(self, kind: str, data: bytes, suffix: str) -> str:
        """Run one input; returns a short description of what came out."""
        from clearvae.codec.storage import load_codec
        from clearvae.compress import read_for_codec
        from clearvae.data import read_image
        from clearvae.errors import ClearvaeError

        if kind == "sealed":  # what decompress --key-file does: the seal, then the decoder
            from clearvae.codec.signing import open_sealed

            kind, data = "cvae", open_sealed(data, SEAL_KEY, "case")
        if kind == "cvae":
            out = self.codec.decompress(data, name="case")
            if not np.isfinite(out).all():
                raise AssertionError("decoded image holds non-finite values")
            return f"decoded {out.shape}"
        if kind == "volume":
            from clearvae.codec.gray import decompress_gray
            from clearvae.data.medical import volume_from_meta

            volume, header = decompress_gray(self.gray, data, name="case")
            if header.kind != "image":  # what decompress does before writing a file
                volume_from_meta(header.kind, volume.meta, volume.stored(), header.offset,
                                 header.bits)
            return f"decoded {volume.values.shape}"
        path = self.work / f"case{suffix}"
        path.write_bytes(data)
        if kind == "medical":
            from clearvae.codec.gray import GrayVolume, compress_gray
            from clearvae.data.medical import read_volume, write_volume

            volume = read_volume(path)
            gray = GrayVolume(volume.unsigned(), volume.bits)
            coded = compress_gray(self.gray, gray, quality=1) if volume.values.size < 2**20 \
                else b""
            written = write_volume(self.work / f"out{suffix}", volume, volume.values)
            for f in written:
                f.unlink()
            return f"read {volume.values.shape}; coded {len(coded)} bytes"
        if kind == "model":
            codec = load_codec(path)
            back = codec.decompress(codec.compress(self.picture, quality=3))
            return f"loaded; round trip {back.shape}"
        try:  # both readers, each refusing clearly or reading: the general one ...
            read = f"read {read_image(path).shape}"
        except ClearvaeError as exc:
            read = f"read_image: {type(exc).__name__}"
        coded = self.codec.compress(read_for_codec(path), quality=4)  # ... and the codec's
        return f"{read}; coded {len(coded)} bytes"


def classify(target: Target, kind: str, data: bytes, suffix: str) -> tuple[str, str]:
    """(class, detail) of one input run in this process."""
    from clearvae.errors import ClearvaeError

    try:
        return "success", target.run(kind, data, suffix)
    except ClearvaeError as exc:
        return "clean", f"{type(exc).__name__}: {str(exc)[:200]}"
    except MemoryError:
        return "memory", traceback.format_exc()
    except Exception as exc:  # what the campaign looks for
        text = traceback.format_exc()
        if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
            return "memory", text
        return "traceback", text


def _memory_in_use() -> int:
    """Virtual memory of this process in bytes (what RLIMIT_AS limits)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(conn: Connection, target_class: type, model_path: str, memory_mb: int) -> None:
    """Load once, then run cases from ``conn`` until it closes; memory capped at what the
    loaded worker uses plus ``memory_mb``."""
    import resource
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="clearvae-fuzz-") as work:
        target = target_class(Path(model_path), Path(work))
        limit = _memory_in_use() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        conn.send("ready")
        while True:
            try:
                kind, data, suffix = conn.recv()
            except EOFError:
                return
            conn.send(classify(target, kind, data, suffix))


class Pool:
    """Persistent workers, each running one case at a time under a wall-clock limit; a
    worker that hangs is killed, one that dies (or has run ``per_worker`` cases) replaced."""

    def __init__(self, size: int, model_path: Path, memory_mb: int, timeout: float,
                 per_worker: int = 1000, target_class: type | None = None) -> None:
        self.ctx = mp.get_context("forkserver")  # clean children, fast to replace
        self.ctx.set_forkserver_preload(["torch", "clearvae.codec.storage", "clearvae.compress"])
        self.args = (target_class or Target, str(model_path), memory_mb)
        self.timeout, self.per_worker = timeout, per_worker
        self.slots = [self._start() for _ in range(size)]

    def _start(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker, args=(child, *self.args), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")
        return {"proc": proc, "conn": parent, "case": None, "since": 0.0, "done": 0}

    def _stop(self, slot: dict, kill: bool) -> None:
        if kill and slot["proc"].is_alive():
            os.kill(slot["proc"].pid, signal.SIGKILL)
        slot["conn"].close()
        slot["proc"].join(5)

    def run(self, cases: Iterable[Case], on_result: Callable[[Case, str, str], None]) -> None:
        """Run every case; ``on_result(case, cls, detail)`` for each, in completion order."""
        pending = iter(cases)
        busy = 0
        for slot in self.slots:
            busy += self._give(slot, pending)
        while busy:
            conns = [s["conn"] for s in self.slots if s["case"] is not None]
            ready = wait(conns, timeout=0.2)
            now = time.monotonic()
            for i, slot in enumerate(self.slots):
                case = slot["case"]
                if case is None:
                    continue
                result = None
                if slot["conn"] in ready:
                    try:
                        result = slot["conn"].recv()
                    except (EOFError, OSError):
                        slot["proc"].join(5)
                        code = slot["proc"].exitcode
                        result = _died(code)
                elif now - slot["since"] > self.timeout:
                    result = ("hang", f"still running after {self.timeout:.0f} s; killed")
                if result is None:
                    continue
                on_result(case, *result)
                busy -= 1
                slot["done"] += 1
                if result[0] in ("hang", "crash", "memory") or slot["done"] >= self.per_worker:
                    self._stop(slot, kill=True)
                    self.slots[i] = slot = self._start()
                else:
                    slot["case"] = None
                busy += self._give(slot, pending)
        for slot in self.slots:
            self._stop(slot, kill=True)

    def _give(self, slot: dict, pending: Iterator[Case]) -> int:
        case = next(pending, None)
        if case is None:
            slot["case"] = None
            return 0
        slot["case"], slot["since"] = case, time.monotonic()
        slot["conn"].send((case.kind, case.data, case.suffix))
        return 1


def _died(code: int | None) -> tuple[str, str]:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:  # not by us: the kernel's out-of-memory killer
            return "memory", f"killed by {name}"
        return "crash", f"killed by signal {name}"
    return "crash", f"worker exited with code {code}"


# --- the campaign -----------------------------------------------------------------------------

def campaign(cases: int, seed: int, workers: int, out: Path, kinds: list[str],
             timeout: float = 10.0, memory_mb: int = 2048, quiet: bool = False,
             start: int = 0) -> dict:
    """Run cases ``start`` .. ``start + cases - 1``; returns the counts ({(kind, mutation):
    Counter of classes}), also kept in OUT/counts-START-END.json (rewritten every 200 cases,
    so an interrupted chunk keeps what it ran; ``merge`` adds the chunks up)."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds(out)
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
        collections.Counter)
    kept = collections.Counter()
    record = out / f"counts-{start}-{start + cases}.json"
    t0 = time.perf_counter()

    def save() -> None:
        save_counts(record, counts, seed=seed, kinds=kinds, start=start, cases=cases,
                    seconds=time.perf_counter() - t0, timeout=timeout)

    def on_result(case: Case, cls: str, detail: str) -> None:
        counts[(case.kind, case.mutation)][cls] += 1
        if cls in BAD and kept[cls] < KEEP:
            kept[cls] += 1
            folder = out / "failures" / cls
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{case.kind}-{case.index}-{re.sub(r'[^A-Za-z0-9_.@-]', '_', case.mutation)}"
            (folder / (stem + case.suffix)).write_bytes(case.data)
            (folder / (stem + ".txt")).write_text(
                f"case {case.index} ({case.kind}, {case.mutation}): {cls}\n\n{detail}\n"
                f"replay: python benchmarks/fuzz.py --replay {folder / (stem + case.suffix)} "
                f"--out {out}\n")
        done = sum(sum(c.values()) for c in counts.values())
        if done % 200 == 0:
            save()
            if not quiet:
                print(f"  {done}/{cases} cases, {done / (time.perf_counter() - t0):.1f}/s",
                      file=sys.stderr, flush=True)

    pool = Pool(workers, out / "codec.safetensors", memory_mb, timeout)
    t0 = time.perf_counter()
    pool.run((make_case(seeds, kinds, seed, i) for i in range(start, start + cases)),
             on_result)
    seconds = time.perf_counter() - t0
    save()
    if not quiet:
        print(report(counts, seconds))
    return counts


def save_counts(path: Path, counts: dict, **about) -> None:
    """The counts of one chunk as JSON (written atomically), with what made them."""
    rows = [[kind, mutation, dict(c)] for (kind, mutation), c in sorted(counts.items())]
    done = sum(sum(c.values()) for c in counts.values())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**about, "done": done, "counts": rows}, indent=0))
    os.replace(tmp, path)


def merge(out: Path) -> tuple[dict, float, list[dict]]:
    """The chunks in OUT (counts-*.json) added up: (counts, seconds, the chunks' records).
    Chunks of one campaign only (same seed and kinds), and no case counted twice."""
    records = sorted((json.loads(p.read_text()) for p in out.glob("counts-*.json")),
                     key=lambda r: r["start"])
    if not records:
        raise SystemExit(f"no counts-*.json in {out}: run a campaign with --out {out} first")
    first = records[0]
    if any((r["seed"], r["kinds"]) != (first["seed"], first["kinds"]) for r in records):
        raise SystemExit(f"the chunks in {out} come from different campaigns (seed, kinds)")
    spans = sorted((r["start"], r["start"] + r["done"]) for r in records)
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise SystemExit(f"chunks in {out} overlap: {spans}")
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
        collections.Counter)
    for r in records:
        for kind, mutation, c in r["counts"]:
            counts[(kind, mutation)].update(c)
    return counts, sum(r["seconds"] for r in records), records


def report(counts: dict, seconds: float) -> str:
    """Tables: classes per kind, then per mutation (bad ones first)."""
    total = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (kind, mutation), c in counts.items():
        total.update(c)
        by_kind[kind].update(c)
        by_op[f"{kind} {mutation.split(':')[0]}"].update(c)
    n = sum(total.values())
    width = max(len(k) for k in by_op) if by_op else 10
    head = f"{'':<{width}}" + "".join(f"{c:>10}" for c in CLASSES)
    lines = [f"{n} cases in {seconds:.0f} s ({n / max(seconds, 1e-9):.1f} cases/s)", "", head]
    for name, c in [*sorted(by_kind.items()), ("all", total)]:
        lines.append(f"{name:<{width}}" + "".join(f"{c[k]:>10}" for k in CLASSES))
    lines += ["", head]
    for name, c in sorted(by_op.items(), key=lambda kv: (-sum(kv[1][b] for b in BAD), kv[0])):
        lines.append(f"{name:<{width}}" + "".join(f"{c[k]:>10}" for k in CLASSES))
    bad = {(k, m): c for (k, m), c in counts.items() if any(c[b] for b in BAD)}
    if bad:
        lines += ["", "bad outcomes by exact mutation:"]
        lines += [f"  {k} {m}: " + ", ".join(f"{c[b]} {b}" for b in BAD if c[b])
                  for (k, m), c in sorted(bad.items())]
    return "\n".join(lines)


def replay(path: Path, out: Path, memory_mb: int) -> int:
    """Run one saved input in this process, under the workers' memory limit, with its full
    traceback."""
    import resource

    data = path.read_bytes()
    kind = {".cvae": "volume" if data[4:5] == b"\x03" else "cvae", ".safetensors": "model",
            ".dcm": "medical", ".nii": "medical", ".gz": "medical"}.get(path.suffix, "image")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with tempfile.TemporaryDirectory() as work:
        target = Target(out / "codec.safetensors", Path(work))
        limit = _memory_in_use() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        cls, detail = classify(target, kind, data, suffix)
    print(f"{path}: {cls}\n{detail}")
    return int(cls in BAD)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ",".join(KINDS))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    p.add_argument("--memory-mb", type=int, default=2048,
                   help="memory a case may allocate on top of a loaded worker's")
    p.add_argument("--start", type=int, default=0,
                   help="first case index: a long campaign runs in chunks (same --seed, "
                        "--kinds and --out; --start 0 --cases 50000, then --start 50000 ...)")
    p.add_argument("--merge", action="store_true",
                   help="print the table of every chunk in --out added up, run nothing")
    p.add_argument("--replay", type=Path, help="run one saved input here and show the error")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.out, args.memory_mb)
    if args.merge:
        counts, seconds, records = merge(args.out)
        spans = ", ".join(f"{r['start']}-{r['start'] + r['done'] - 1}" for r in records)
        print(f"{len(records)} chunk(s) of seed {records[0]['seed']}: cases {spans}")
        print(report(counts, seconds))
        return int(any(c[b] for c in counts.values() for b in BAD))
    if args.start < 0 or args.cases < 1:
        p.error("--start must be >= 0 and --cases >= 1")
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        p.error(f"--kinds takes some of {','.join(KINDS)}, got {args.kinds!r}")
    counts = campaign(args.cases, args.seed, args.workers, args.out, kinds, args.timeout,
                      args.memory_mb, start=args.start)
    return int(any(c[b] for c in counts.values() for b in BAD))


if __name__ == "__main__":
    sys.exit(main())
