"""Sealed .cvae files (HMAC-SHA256 with a user key): any change, another key, a missing seal."""

import hashlib
import hmac

import numpy as np
import pytest
import torch
from PIL import Image

from clearvae import cli
from clearvae.codec import signing
from clearvae.codec.codec import Codec
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.codec.storage import save_codec
from clearvae.compress import Settings, compress_file, decompress_file
from clearvae.errors import DataError

KEY, OTHER = b"k" * 32, b"o" * 32


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return Codec(HyperpriorCodec(HyperpriorCodecConfig(channels_n=8, channels_m=8)))


def _photo(path, size=(40, 56)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_a_seal_is_an_hmac_over_the_file_and_opens_only_with_its_key():
    data = b"CVAE" + bytes(range(60))
    sealed = signing.seal(data, KEY)
    assert len(sealed) == len(data) + signing.OVERHEAD and signing.is_sealed(sealed)
    assert sealed[-32:] == hmac.new(KEY, sealed[:-32], hashlib.sha256).digest()
    assert signing.open_sealed(sealed, KEY) == data
    assert signing.open_sealed(data, None) == data  # unsealed, no key: as it is
    for i in range(len(sealed)):  # every single changed byte is found
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(DataError):
            signing.open_sealed(bytes(bad), KEY, "x.cvae")
    with pytest.raises(DataError, match="another key"):
        signing.open_sealed(sealed, OTHER, "x.cvae")
    with pytest.raises(DataError, match="give it"):
        signing.open_sealed(sealed, None, "x.cvae")
    with pytest.raises(DataError, match="not sealed"):
        signing.open_sealed(data, KEY, "x.cvae")
    with pytest.raises(DataError, match="changed after"):
        signing.open_sealed(sealed[:-1] + bytes([sealed[-1] ^ 1]), KEY, "x.cvae")
    with pytest.raises(DataError, match="16"):
        signing.seal(data, b"short")


def test_sealed_files_round_trip_and_max_bytes_counts_the_seal(codec, tmp_path):
    photo = _photo(tmp_path / "p.png")
    plain = compress_file(codec, photo, tmp_path / "plain.cvae")
    sealed = compress_file(codec, photo, tmp_path / "sealed.cvae", key=KEY)
    assert sealed.compressed_bytes == plain.compressed_bytes + signing.OVERHEAD
    assert (tmp_path / "sealed.cvae").stat().st_size == sealed.compressed_bytes
    a = decompress_file(codec, tmp_path / "plain.cvae", tmp_path / "a.png")
    b = decompress_file(codec, tmp_path / "sealed.cvae", tmp_path / "b.png", key=KEY)
    assert a.pixels == b.pixels
    assert np.array_equal(np.array(Image.open(tmp_path / "a.png")),
                          np.array(Image.open(tmp_path / "b.png")))
    limit = plain.compressed_bytes + signing.OVERHEAD + 40
    capped = compress_file(codec, photo, tmp_path / "capped.cvae", Settings(max_bytes=limit),
                           key=KEY)
    assert capped.compressed_bytes <= limit
    with pytest.raises(DataError, match="no room"):
        compress_file(codec, photo, tmp_path / "tiny.cvae", Settings(max_bytes=20), key=KEY)
    assert not (tmp_path / "tiny.cvae").exists()


def test_cli_seals_checks_and_refuses(codec, tmp_path, capsys):
    model = str(save_codec(codec, tmp_path / "codec.safetensors"))
    key, other = tmp_path / "cvae.key", tmp_path / "other.key"
    key.write_bytes(KEY)
    other.write_bytes(OTHER)
    photo = _photo(tmp_path / "p.png")
    assert cli.main(["compress", str(photo), "--model", model, "--key-file", str(key)]) == 0
    cvae = tmp_path / "p.cvae"
    out = tmp_path / "out.png"
    assert cli.main(["decompress", str(cvae), "--model", model, "-o", str(out)]) == 2
    assert "sealed" in capsys.readouterr().err and not out.exists()
    assert cli.main(["decompress", str(cvae), "--model", model, "-o", str(out),
                     "--key-file", str(other)]) == 2
    assert "another key" in capsys.readouterr().err and not out.exists()
    data = bytearray(cvae.read_bytes())
    data[40] ^= 0x10
    tampered = tmp_path / "t.cvae"
    tampered.write_bytes(bytes(data))
    assert cli.main(["decompress", str(tampered), "--model", model, "-o", str(out),
                     "--key-file", str(key)]) == 2
    assert "changed after it was sealed" in capsys.readouterr().err and not out.exists()
    assert cli.main(["decompress", str(cvae), "--model", model, "-o", str(out),
                     "--key-file", str(key)]) == 0
    assert out.exists()
    (tmp_path / "short.key").write_bytes(b"123")
    with pytest.raises(DataError, match="16"):
        signing.read_key(tmp_path / "short.key")


def test_a_sealed_volume_is_still_told_from_a_photo():
    from clearvae.codec import volume_container
    from clearvae.compress import is_volume_file

    volume = b"CVAE" + bytes([volume_container.VOLUME_VERSION]) + bytes(40)
    photo = b"CVAE" + bytes([2]) + bytes(40)
    assert is_volume_file(signing.seal(volume, KEY)[:32]) and is_volume_file(volume)
    assert not is_volume_file(signing.seal(photo, KEY)[:32])
