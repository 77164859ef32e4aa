"""The REST service (clearvae serve) through FastAPI's TestClient: every endpoint's happy path,
every limit and every error status, with tiny models saved to a --models folder (and the
bundled codec and denoiser on small images)."""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearvae import checkpoint
from clearvae.cli import _parser, main, serve_settings
from clearvae.codec import container
from clearvae.codec.codec import Codec
from clearvae.codec.model import HyperpriorCodec, HyperpriorCodecConfig
from clearvae.codec.storage import save_codec
from clearvae.errors import ConfigError
from clearvae.models import build_model, model_config_from_dict
from clearvae.service import tasks
from clearvae.service.jobs import Outcome
from clearvae.service.settings import ServiceSettings
from tests.test_restore import tiny_denoiser

pytest.importorskip("fastapi", reason="the service needs the serve extra")
with warnings.catch_warnings():  # Starlette >= 1.10 would rather have httpx2: works the same
    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient

from clearvae.service.app import create_app  # noqa: E402

TOKEN = "s3cret-token"


# --- models, images and clients ---------------------------------------------------------------

def _tiny_codec(channels: int = 3, seed: int = 0) -> Codec:
    torch.manual_seed(seed)
    config = HyperpriorCodecConfig(channels_n=16, channels_m=24, image_channels=channels)
    return Codec(HyperpriorCodec(config).eval())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A --models folder: a colour and a gray codec, a denoiser, a dense VAE and a damaged
    file (which the service skips)."""
    folder = tmp_path_factory.mktemp("models")
    save_codec(_tiny_codec(), folder / "tiny-codec.safetensors")
    save_codec(_tiny_codec(channels=1), folder / "tiny-gray.safetensors")
    denoiser = tiny_denoiser()
    checkpoint.save_file(folder / "tiny-denoiser.safetensors", "model", denoiser.state_dict(),
                         denoiser.config.to_dict(), {})
    torch.manual_seed(0)
    vae = build_model(model_config_from_dict({"kind": "dense", "image_size": [16, 16],
                                              "latent_dim": 4, "hidden": [32]}))
    checkpoint.save_file(folder / "tiny-vae.safetensors", "model", vae.state_dict(),
                         vae.config.to_dict(), {})
    (folder / "broken.safetensors").write_bytes(b"not a model file")
    return folder


def _client(**settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(**{"workers": 1, **settings})))


@pytest.fixture(scope="module")
def client(models_dir):
    with _client(models=models_dir) as c:
        yield c


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im)


def _photo(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a smooth random picture."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _files(**named: bytes) -> dict:
    """Multipart files; the client's file names are hostile on purpose (never used)."""
    return {field: ("../../../etc/passwd", data) for field, data in named.items()}


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _error(response, status: int) -> dict:
    """The JSON error body of a response with ``status``: its shape, and nothing a client
    should not see (a trace, a server path)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and body["error"]
    for leak in ("Traceback", 'File "', tempfile.gettempdir(), "clearvae-service-",
                 "site-packages", "/etc/passwd"):
        assert leak not in response.text, f"{leak!r} in {response.text}"
    return body


# --- happy paths ------------------------------------------------------------------------------

def test_health_needs_no_token_and_reports_the_queue(models_dir):
    with _client(token=TOKEN, queue=3) as c:
        body = c.get("/health").json()
    assert body["status"] == "ok" and body["version"]
    assert body["workers"] == 1 and body["queued"] == 0 and body["capacity"] == 3


def test_models_are_offered_by_name_with_their_tasks_and_no_paths(client, models_dir):
    response = client.get("/api/models")
    models = {m["name"]: m for m in response.json()["models"]}
    assert {"codec", "denoiser", "tiny-codec", "tiny-gray", "tiny-denoiser", "tiny-vae"} <= \
        set(models)
    assert "broken" not in models  # unreadable: logged and skipped
    assert models["codec"]["bundled"] and not models["tiny-vae"]["bundled"]
    assert models["tiny-vae"]["tasks"] == ["sample", "interpolate", "inpaint"]
    assert models["tiny-gray"]["kind"] == "hyperprior" and models["tiny-gray"]["channels"] == 1
    assert len(models["codec"]["model_id"]) == 16
    assert str(models_dir) not in response.text and "safetensors" not in response.text


def test_compress_then_decompress_round_trip_with_the_bundled_codec(client):
    image = _photo()
    body = client.post("/api/compress", files=_files(image=_png(image)),
                       data={"quality": "2.5"}).json()
    data = base64.b64decode(body["cvae"])
    assert body["bytes"] == len(data) and body["pixels"] == 64 * 64
    assert body["bpp"] == pytest.approx(8 * len(data) / 4096)
    assert body["quality"] == 2.5 == container.read_header(data).quality
    assert (body["width"], body["height"], body["channels"], body["bits"]) == (64, 64, 3, 8)
    decoded = _pixels(base64.b64decode(body["decoded"]))
    assert decoded.shape == image.shape
    mse = np.mean((decoded.astype(float) - image) ** 2)
    assert body["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-6) and \
        body["psnr"] > 20
    # no model named: the server finds the codec whose id the file carries; bit-exact
    response = client.post("/api/decompress", files=_files(file=data))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert np.array_equal(_pixels(response.content), decoded)


def test_compress_with_a_target_reports_the_quality_it_chose(client):
    body = client.post("/api/compress", files=_files(image=_png(_photo(seed=1))),
                       data={"max_bytes": "900"}).json()
    assert body["bytes"] <= 900
    assert body["quality"] == container.read_header(base64.b64decode(body["cvae"])).quality


def test_16_bit_gray_images_go_lossless_through_a_gray_codec(client):
    rng = np.random.default_rng(0)
    values = (2500 + 400 * rng.standard_normal((32, 48))).clip(0, 4095).astype(np.uint16)
    body = client.post("/api/compress", files=_files(image=_png(values)),
                       data={"model": "tiny-gray", "max_error": "0"}).json()
    assert body["max_abs_error"] == 0 and body["psnr"] is None  # identical: no PSNR
    assert body["bits"] == 12 and body["channels"] == 1
    data = base64.b64decode(body["cvae"])
    back = client.post("/api/decompress", files=_files(file=data), data={"model": "tiny-gray"})
    assert back.status_code == 200
    assert np.array_equal(_pixels(back.content), values)
    # a colour codec, or the bundled MRI codec where this install has none: 409
    _error(client.post("/api/compress", files=_files(image=_png(values)),
                       data={"model": "codec"}), 409)


def test_compare_finds_what_jpeg_and_webp_need_for_the_psnr(client):
    body = client.post("/api/compare", files=_files(image=_png(_photo())),
                       data={"psnr": "30"}).json()
    assert body["psnr_target"] == 30
    for fmt in ("jpeg", "webp"):
        found = body[fmt]
        assert found["reached"] and found["psnr"] >= 30 and 1 <= found["quality"] <= 100
        assert found["bpp"] == pytest.approx(8 * found["bytes"] / 4096)


def test_denoise_returns_the_estimate_its_spread_samples_and_the_noise_level(client):
    yy, xx = np.mgrid[0:48, 0:40] / 48
    clean = 0.3 + 0.4 * (xx > 0.5) + 0.1 * yy
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * 20 / 255
    image = (noisy.clip(0, 1) * 255).round().astype(np.uint8)
    body = client.post("/api/denoise", files=_files(image=_png(image)),
                       data={"samples": "3", "keep": "2"}).json()
    assert not body["sigma_given"] and 10 < body["sigma"] < 30
    assert body["samples"] == 3 and len(body["sample_images"]) == 2
    denoised = _pixels(base64.b64decode(body["denoised"]))
    assert denoised.shape == (48, 40)
    error = lambda a: np.mean((a / 255 - clean) ** 2)  # noqa: E731
    assert error(denoised) < error(image)
    assert _pixels(base64.b64decode(body["std"])).shape == (48, 40)
    body = client.post("/api/denoise", files=_files(image=_png(image)),
                       data={"sigma": "20", "keep": "0", "model": "tiny-denoiser"}).json()
    assert body["sigma"] == 20 and body["sigma_given"] and body["sample_images"] == []


def test_inpaint_fills_the_white_pixels_and_keeps_the_others(client):
    image = _photo(32, 32)[..., 0]
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 8:24] = 255
    response = client.post("/api/inpaint", files=_files(image=_png(image), mask=_png(mask)),
                           data={"iterations": "2"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    filled = _pixels(response.content)
    assert filled.shape == (32, 32) and np.array_equal(filled[mask == 0], image[mask == 0])
    _error(client.post("/api/inpaint", files=_files(image=_png(image),
                                                    mask=_png(mask[:16]))), 400)


def test_sample_and_interpolate_with_a_vae_from_the_models_folder(client):
    grid = client.post("/api/sample", data={"model": "tiny-vae", "n": "4", "seed": "3"})
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    again = client.post("/api/sample", data={"model": "tiny-vae", "n": "4", "seed": "3"})
    assert grid.content == again.content  # the seed decides
    a, b = (_photo(16, 16, seed=s)[..., 0] for s in (1, 2))
    strip = client.post("/api/interpolate", files=_files(a=_png(a), b=_png(b)),
                        data={"model": "tiny-vae", "steps": "4"})
    assert strip.status_code == 200
    h, w = _pixels(strip.content).shape[:2]
    assert w > 5 * h  # one row of a, 4 steps, b
    _error(client.post("/api/interpolate", files=_files(a=_png(a), b=_png(_photo(16, 24))),
                       data={"model": "tiny-vae"}), 422)
    _error(client.post("/api/sample", data={"model": "tiny-vae", "n": "256",
                                            "size": "2048x2048"}), 413)


def test_the_page_is_served_and_the_api_is_documented(client):
    page = client.get("/")
    assert page.status_code == 200 and 'href="/docs"' in page.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/api/models", "/api/compress", "/api/compare", "/api/decompress",
                 "/api/denoise", "/api/inpaint", "/api/sample", "/api/interpolate",
                 "/api/jobs/{job_id}", "/api/jobs/{job_id}/result"):
        assert path in paths, path


# --- jobs -------------------------------------------------------------------------------------

def _poll(client, job_id: str, states=("done", "failed", "cancelled"), seconds=30) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = client.get(f"/api/jobs/{job_id}").json()
        assert "state" in status, status
        if status["state"] in states:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {status['state']} after {seconds} s")


def test_an_async_job_reports_progress_then_its_result(client):
    response = client.post("/api/compress?async=1", files=_files(image=_png(_photo())),
                           data={"effort": "1"})
    assert response.status_code == 202
    job = response.json()["job"]
    assert response.headers["location"] == f"/api/jobs/{job}"
    status = _poll(client, job)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["kind"] == \
        "compress"
    assert status["result"]["effort"] == 1 and status["result"]["cvae"]
    assert client.get(f"/api/jobs/{job}/result").json() == status["result"]
    assert client.delete(f"/api/jobs/{job}").status_code == 200  # drops the result
    _error(client.get(f"/api/jobs/{job}"), 404)


def test_jobs_stop_at_the_library_progress_callbacks():
    """What makes cancelling a running job possible: the progress hooks of the codec's
    refinement and of denoising are called as the work goes, and what they raise stops it."""
    from clearvae.restore import denoise
    from clearvae.service.jobs import Cancelled, Job

    calls = []
    noisy = np.random.default_rng(0).random((300, 300)).astype(np.float32)
    denoise(noisy, tiny_denoiser(), samples=1, sigma=20,
            progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 x 2 tiles of 256
    job = Job("j", "denoise", time_limit=60)
    job.cancel_requested.set()
    with pytest.raises(Cancelled):
        denoise(noisy, tiny_denoiser(), samples=1, sigma=20,
                progress=lambda done, total: job.report(done / total, "tile"))
    with pytest.raises(Cancelled):
        _tiny_codec().compress(_photo(32, 32), effort=1,
                               progress=lambda *_: job.report(0.5, "refining"))


@pytest.fixture()
def blocking_sample(monkeypatch):
    """/api/sample jobs that block until the event is set, reporting progress meanwhile
    (so that they can be cancelled, as the library's progress callbacks let real jobs be)."""
    release, started = threading.Event(), threading.Event()

    def blocked(job, *args, **kwargs):
        started.set()
        while not release.wait(0.01):
            job.report(0.5, "blocked")
        return Outcome({"n": 0}, b"png")

    monkeypatch.setattr(tasks, "sample", blocked)
    yield release, started
    release.set()


def test_a_full_queue_answers_429_and_jobs_can_be_cancelled(models_dir, blocking_sample):
    release, started = blocking_sample
    with _client(models=models_dir, queue=1) as c:
        running = c.post("/api/sample?async=1", data={"model": "tiny-vae"}).json()["job"]
        assert started.wait(10)
        queued = c.post("/api/sample?async=1", data={"model": "tiny-vae"}).json()["job"]
        refused = c.post("/api/sample", data={"model": "tiny-vae"})
        body = _error(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1 and body["detail"]["waiting"] == 1
        assert c.get("/health").json()["queued"] == 1
        # a queued job stops at once; a running one at its next progress report
        assert c.delete(f"/api/jobs/{queued}").json()["state"] == "cancelled"
        assert c.delete(f"/api/jobs/{running}").json()["state"] == "running"
        assert _poll(c, running)["state"] == "cancelled"
        _error(c.get(f"/api/jobs/{running}/result"), 409)
        release.set()
        assert c.post("/api/sample", data={"model": "tiny-vae"}).status_code == 200  # free


def test_a_request_past_the_timeout_gets_504_and_its_job_is_stopped(models_dir,
                                                                    blocking_sample):
    with _client(models=models_dir, timeout=0.3) as c:
        body = _error(c.post("/api/sample", data={"model": "tiny-vae"}), 504)
        # stopped by the request's wait (cancelled, still pollable) or, first on a loaded
        # machine, by its own time limit: then the request got the job's own failure as its
        # answer, and the finished job was dropped like every answered synchronous job
        if "ran longer" in body["error"]:
            assert c.get(f"/api/jobs/{body['detail']['job']}").status_code == 404
        else:
            assert "was cancelled" in body["error"]
            assert _poll(c, body["detail"]["job"])["state"] in ("cancelled", "failed")
        job = c.post("/api/sample?async=1", data={"model": "tiny-vae"}).json()["job"]
        status = _poll(c, job)  # an async job past the limit stops itself
        assert status["state"] == "failed" and status["error"]["error"].startswith(
            "the job ran longer")


def test_unexpected_errors_are_logged_and_answered_without_a_trace(models_dir, monkeypatch,
                                                                   caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail the client must not see")

    monkeypatch.setattr(tasks, "sample", broken)
    with TestClient(create_app(ServiceSettings(workers=1, models=models_dir)),
                    raise_server_exceptions=False) as c:
        body = _error(c.post("/api/sample", data={"model": "tiny-vae"}), 500)
        assert "internal detail" not in body["error"]
        monkeypatch.setattr("clearvae.service.models.ModelRegistry.entries", broken)
        body = _error(c.get("/api/models"), 500)
    assert "internal detail" not in body["error"]
    assert "internal detail" in caplog.text  # the server's log has it


# --- limits and errors ------------------------------------------------------------------------

def test_an_upload_over_the_limit_is_413_declared_or_streamed():
    with _client(max_upload_mb=0.01) as c:
        big = _png(np.random.default_rng(0).integers(0, 255, (120, 120), np.uint8))
        assert len(big) > 0.01 * 2**20
        body = _error(c.post("/api/compress", files=_files(image=big)), 413)
        assert body["detail"]["limit_bytes"] == int(0.01 * 2**20)
        chunks = (b"x" * 4096 for _ in range(8))  # no Content-Length: counted as it comes
        _error(c.post("/api/compress", content=chunks,
                      headers={"content-type": "multipart/form-data; boundary=b"}), 413)


def test_a_png_bomb_header_is_refused_without_decoding(client):
    start = time.monotonic()
    body = _error(client.post("/api/compress", files=_files(image=_bomb_png())), 413)
    assert time.monotonic() - start < 2 and body["detail"]["limit_pixels"] == 2**22
    _error(client.post("/api/denoise", files=_files(image=_bomb_png(3000, 3000))), 413)


def test_a_missing_or_wrong_token_is_401(models_dir):
    with _client(token=TOKEN) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = c.post("/api/compress", headers=headers,
                              files=_files(image=_png(_photo(16, 16))))
            _error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
        _error(c.get("/api/models"), 401)
        assert c.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code \
            == 200


def test_a_corrupt_cvae_is_400(client):
    data = base64.b64decode(client.post("/api/compress", files=_files(
        image=_png(_photo(32, 32)))).json()["cvae"])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    for bad in (data[:-5], bytes(flipped), b"CVAE" + bytes(40), b"hello, not a file"):
        _error(client.post("/api/decompress", files=_files(file=bad)), 400)


def test_a_cvae_from_another_model_is_409(client):
    data = base64.b64decode(client.post("/api/compress", files=_files(
        image=_png(_photo(32, 32))), data={"model": "tiny-codec"}).json()["cvae"])
    body = _error(client.post("/api/decompress", files=_files(file=data),
                              data={"model": "codec"}), 409)
    assert body["detail"]["model_id"] == container.read_header(data).model_id.hex()
    # without a model named, the right one is found by its id
    assert client.post("/api/decompress", files=_files(file=data)).status_code == 200
    elsewhere = _tiny_codec(seed=7).compress(_photo(32, 32))  # a codec this server lacks
    _error(client.post("/api/decompress", files=_files(file=elsewhere)), 409)


def test_unknown_models_are_404_and_models_of_the_wrong_kind_409(client):
    image = _png(_photo(16, 16))
    body = _error(client.post("/api/sample", data={"model": "../tiny-vae"}), 404)
    assert body["detail"]["models"] == ["tiny-vae"]
    _error(client.post("/api/denoise", files=_files(image=image), data={"model": "nope"}), 404)
    _error(client.post("/api/denoise", files=_files(image=image), data={"model": "codec"}), 409)
    _error(client.post("/api/sample", data={"model": "denoiser"}), 409)
    _error(client.post("/api/compress", files=_files(image=image),
                       data={"model": "tiny-vae"}), 409)


@pytest.mark.parametrize("options", [
    {"quality": "abc"}, {"effort": "9"}, {"quality": "9"}, {"quality": "0"},
    {"target_bpp": "0.5", "max_bytes": "900"}, {"quality": "3", "target_psnr": "30"},
    {"target_bpp": "-1"}, {"max_error": "2"},
])
def test_bad_compress_options_are_422_or_400(client, options):
    response = client.post("/api/compress", files=_files(image=_png(_photo(32, 32))),
                           data=options)
    # max_error on an 8-bit image: the library refuses the input (400); the rest: 422
    _error(response, 400 if "max_error" in options else 422)


def test_bad_options_of_the_other_endpoints_are_422(client):
    image = _png(_photo(16, 16))
    _error(client.post("/api/denoise", files=_files(image=image), data={"samples": "0"}), 422)
    _error(client.post("/api/compare", files=_files(image=image), data={"psnr": "200"}), 422)
    _error(client.post("/api/compare", files=_files(image=image)), 422)  # psnr missing
    _error(client.post("/api/sample", data={"model": "tiny-vae", "size": "big"}), 422)
    _error(client.post("/api/compress"), 422)  # no image


def test_files_that_are_not_supported_images_are_415(client):
    gif = io.BytesIO()
    Image.fromarray(_photo(16, 16)).save(gif, format="GIF")
    _error(client.post("/api/compress", files=_files(image=gif.getvalue())), 415)
    _error(client.post("/api/denoise", files=_files(image=b"GIF89a but not really")), 415)
    _error(client.post("/api/compress", files=_files(image=b"")), 400)


def test_uploads_are_removed_after_each_request(client):
    def folders() -> set[str]:
        return {p.name for p in Path(tempfile.gettempdir()).glob("clearvae-service-*")}

    before = folders()
    client.post("/api/compress", files=_files(image=_png(_photo(16, 16))))
    client.post("/api/compress", files=_files(image=_bomb_png()))
    assert folders() == before


def test_cors_is_off_unless_origins_are_given():
    preflight = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
    with _client() as c:
        assert "access-control-allow-origin" not in c.options("/api/compress",
                                                              headers=preflight).headers
    with _client(cors=("http://page.example",)) as c:
        answer = c.options("/api/compress", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "http://page.example"


# --- the command ------------------------------------------------------------------------------

def test_serve_help_and_defaults_bind_this_machine_only(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--models", "--token", "--workers", "--queue",
                 "--max-upload-mb", "--max-pixels", "--timeout", "--cors"):
        assert flag in out
    monkeypatch.delenv("CLEARVAE_TOKEN", raising=False)
    settings = serve_settings(_parser().parse_args(["serve"]))
    assert settings.host == "127.0.0.1" and settings.loopback and settings.token is None
    assert 1 <= settings.workers <= 2 and settings.max_pixels == 2**22
    monkeypatch.setenv("CLEARVAE_TOKEN", "from-env")
    assert serve_settings(_parser().parse_args(["serve"])).token == "from-env"
    wide = serve_settings(_parser().parse_args(["serve", "--host", "0.0.0.0", "--cors",
                                                "http://a.example", "http://b.example"]))
    assert not wide.loopback and wide.cors == ("http://a.example", "http://b.example")


@pytest.mark.parametrize("bad", [{"workers": 0}, {"queue": -1}, {"max_pixels": 0},
                                 {"timeout": 0}, {"token": " "}, {"cors": ("*",)},
                                 {"models": "/no/such/folder"}])
def test_bad_service_settings_fail_loudly(bad):
    with pytest.raises(ConfigError):
        ServiceSettings(**bad)
