"""The web page (clearvae/service/static) in a real browser: headless Chromium, driven by
Selenium through the chromedriver of the same Debian release, against the real server
(uvicorn on a free port of 127.0.0.1, the bundled codec and denoiser, and the tiny models of
test_service_api.py).

    pytest --> uvicorn thread (create_app) <--HTTP-- Chromium <--WebDriver-- chromedriver

Skipped, with the reason, where Chromium or chromedriver is missing (``apt-get install
chromium chromium-driver``; ``CLEARVAE_CHROMIUM`` / ``CLEARVAE_CHROMEDRIVER`` point at others).
Nothing is downloaded: the driver path is given, so Selenium Manager never runs.
``CLEARVAE_SCREENSHOT=1`` also writes docs/img/service.png (the Compress view with a result),
from a Kodak crop where ../shared/data/kodak is present.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the serve extra")
pytest.importorskip("selenium", reason="the browser test needs selenium (the test extra)")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from clearvae.service.app import create_app  # noqa: E402
from clearvae.service.settings import ServiceSettings  # noqa: E402
from tests.test_service_api import _photo, _png, models_dir  # noqa: E402, F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def _program(variable: str, *names: str) -> str | None:
    """The file that ``variable`` names, else the first of ``names`` on the PATH."""
    given = os.environ.get(variable)
    if given:
        return given if Path(given).is_file() else None
    return next((path for path in map(shutil.which, names) if path), None)


CHROMIUM = _program("CLEARVAE_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _program("CLEARVAE_CHROMEDRIVER", "chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    missing = " and ".join(n for n, p in (("Chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
                           if not p)
    pytest.skip(f"the browser test needs {missing} (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
SCREENSHOT = os.environ.get("CLEARVAE_SCREENSHOT") == "1"
KODAK = ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"
WAIT = 30  # seconds any one thing may take to appear


# --- the server and the browser ---------------------------------------------------------------

@contextlib.contextmanager
def _serving(settings: ServiceSettings) -> Iterator[str]:
    """The service on a free port of 127.0.0.1, in a thread, until the block ends; its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # held from here on: no other process can take the port
    instance = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + WAIT
        while not instance.started:
            assert thread.is_alive() and time.monotonic() < end, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        instance.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture(scope="module")
def server(models_dir):  # noqa: F811 (the imported fixture)
    with _serving(ServiceSettings(models=models_dir, workers=1)) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox",  # root (CI) cannot use the sandbox
                "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--lang=en-US"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


# --- helpers ----------------------------------------------------------------------------------

def _open(driver, url: str) -> None:
    """Load the page afresh (not a same-document jump to another #view) and wait until it has
    asked the server for its models."""
    driver.get("about:blank")
    driver.get(url)
    _until(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
           "the page to load its models")


def _until(driver, condition, what: str):
    return WebDriverWait(driver, WAIT).until(condition, f"waited {WAIT} s for {what}")


def _shown(driver, element_id: str):
    """The element once it is displayed, failing early with any error the page shows."""
    def ready(d):
        errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".error") if e.is_displayed()]
        assert not errors, f"the page shows an error: {errors}"
        element = d.find_element(By.ID, element_id)
        return element if element.is_displayed() else False

    return _until(driver, ready, f"#{element_id}")


def _value(driver, element_id: str) -> str:
    """What the page keeps beside a shown number (data-value), once it has one."""
    return _until(driver, lambda d: d.find_element(By.ID, element_id).get_attribute(
        "data-value") or False, f"a value in #{element_id}")


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _image_bytes(driver, element_id: str) -> bytes:
    """The bytes behind an <img> of the page (its blob), as the page holds them."""
    encoded = driver.execute_async_script("""
        const [id, done] = arguments;
        fetch(document.getElementById(id).src).then(r => r.arrayBuffer()).then(buffer => {
            let s = ''; for (const b of new Uint8Array(buffer)) s += String.fromCharCode(b);
            done(btoa(s));
        }).catch(e => done('error: ' + e));""", element_id)
    assert not encoded.startswith("error"), encoded
    return base64.b64decode(encoded)


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im)


def _downloaded(folder: Path, name: str) -> bytes:
    path = folder / name
    end = time.monotonic() + WAIT
    while not path.is_file() or any(folder.glob("*.crdownload")):
        assert time.monotonic() < end, f"{name} was not downloaded: {os.listdir(folder)}"
        time.sleep(0.05)
    return path.read_bytes()


def _screenshot(driver, path: Path) -> None:
    """The page down to the end of its content, in a window tall enough to hold it."""
    size = driver.get_window_size()
    driver.set_window_size(1280, 1400)
    time.sleep(0.3)  # the viewer refits to its new size
    bottom = driver.execute_script("window.scrollTo(0, 0); return Math.ceil("
                                   "document.querySelector('main').getBoundingClientRect().bottom)")
    with Image.open(io.BytesIO(driver.get_screenshot_as_png())) as shot:
        path.parent.mkdir(parents=True, exist_ok=True)
        shot.crop((0, 0, shot.width, min(shot.height, bottom))).save(path, optimize=True)
    driver.set_window_size(size["width"], size["height"])


def _picture() -> np.ndarray:
    """(H, W, 3) uint8: a smooth random picture; a Kodak crop for the screenshot."""
    if SCREENSHOT and KODAK.is_file():
        with Image.open(KODAK) as im:
            return np.asarray(im.convert("RGB"))[40:392, 96:608].copy()  # 512 x 352
    return _photo(96, 128)


# --- the test ---------------------------------------------------------------------------------

def test_compress_download_decompress_and_inpaint_in_a_real_browser(server, browser, downloads,
                                                                    tmp_path):
    start = time.monotonic()
    image = _picture()
    png = _png(image)
    source = tmp_path / "photo.png"
    source.write_bytes(png)
    _open(browser, server + "/")
    assert browser.find_element(By.ID, "tab-compress").get_attribute("aria-selected") == "true"
    models = [o.get_attribute("value") for o in browser.find_elements(
        By.CSS_SELECTOR, "#compress-model option")]
    assert {"", "codec", "tiny-codec"} <= set(models)

    # Compress: quality 2.5 from the keyboard (24 steps of 1/16 down from 4)
    browser.find_element(By.ID, "compress-file").send_keys(str(source))
    browser.find_element(By.ID, "compress-quality").send_keys(Keys.ARROW_LEFT * 24)
    assert _text(browser, "compress-quality-value") == "2.5"
    browser.find_element(By.ID, "compress-run").click()
    _shown(browser, "compress-results")
    api = httpx.post(server + "/api/compress", files={"image": ("photo.png", png)},
                     data={"quality": "2.5", "effort": "0"}, timeout=WAIT).json()
    assert int(_value(browser, "compress-bytes")) == api["bytes"]
    assert float(_value(browser, "compress-bpp")) == api["bpp"]
    assert float(_value(browser, "compress-psnr")) == api["psnr"]
    assert _text(browser, "compress-bytes") == f"{api['bytes']:,} bytes"
    assert _text(browser, "compress-bpp") == f"{api['bpp']:.3f}"
    assert _text(browser, "compress-psnr") == f"{api['psnr']:.2f} dB"
    assert float(_value(browser, "compress-quality-used")) == 2.5
    # what JPEG and WebP need for that PSNR: the numbers of /api/compare
    compared = httpx.post(server + "/api/compare", files={"image": ("photo.png", png)},
                          data={"psnr": repr(api["psnr"])}, timeout=WAIT).json()
    for fmt in ("jpeg", "webp"):
        cell = f'#compare-{fmt} [data-field="bytes"]'
        _until(browser, lambda d, c=cell: d.find_element(By.CSS_SELECTOR, c).get_attribute(
            "data-value"), f"the {fmt} size")
        row = browser.find_element(By.ID, f"compare-{fmt}")
        shown = {c.get_attribute("data-field"): c.get_attribute("data-value")
                 for c in row.find_elements(By.CSS_SELECTOR, "td")}
        assert int(shown["bytes"]) == compared[fmt]["bytes"]
        assert int(shown["quality"]) == compared[fmt]["quality"]

    # the split view: the divider follows the keyboard, zoom renders pixels as pixels
    viewer = browser.find_element(By.ID, "compress-viewer")
    clip = lambda: browser.find_element(By.ID, "compress-decoded").value_of_css_property(  # noqa: E731
        "clip-path")
    before = clip()
    viewer.send_keys(Keys.ARROW_RIGHT * 5)
    assert clip() != before and float(browser.find_element(
        By.ID, "compress-split").get_attribute("value")) == pytest.approx(60)
    viewer.send_keys(Keys.ARROW_LEFT * 5)
    if SCREENSHOT:
        _screenshot(browser, ROOT / "docs" / "img" / "service.png")
    fit = _text(browser, "compress-zoom-level")
    for _ in range(3):
        browser.find_element(By.ID, "compress-zoom-in").click()
    assert _text(browser, "compress-zoom-level") != fit
    assert "pixelated" in viewer.find_element(By.CSS_SELECTOR, ".stage").get_attribute("class")
    browser.find_element(By.ID, "compress-zoom-fit").click()

    # the .cvae download is the API's file, bit for bit
    browser.find_element(By.ID, "compress-download-cvae").click()
    data = _downloaded(downloads, "photo.cvae")
    assert data.startswith(b"CVAE") and data == base64.b64decode(api["cvae"])
    decoded = _pixels(base64.b64decode(api["decoded"]))

    # Decompress: the downloaded file decodes to the same pixels
    browser.find_element(By.ID, "tab-decompress").click()
    browser.find_element(By.ID, "decompress-file").send_keys(str(downloads / "photo.cvae"))
    _shown(browser, "decompress-results")
    assert np.array_equal(_pixels(_image_bytes(browser, "decompress-result")), decoded)
    h, w = image.shape[:2]
    assert _text(browser, "decompress-info").startswith(f"{w} × {h} pixels")

    # Inpaint: paint a stroke with the pointer; the pixels outside it come back unchanged
    browser.find_element(By.ID, "tab-inpaint").click()
    browser.find_element(By.ID, "inpaint-file").send_keys(str(source))
    canvas = _shown(browser, "inpaint-mask")
    iterations = browser.find_element(By.ID, "inpaint-iterations")
    iterations.clear()
    iterations.send_keys("2")
    third = canvas.size["width"] // 3
    ActionChains(browser).move_to_element_with_offset(canvas, -third, -10).click_and_hold() \
        .move_by_offset(third, 20).move_by_offset(third // 2, -20).release().perform()
    browser.find_element(By.ID, "inpaint-run").click()
    result = _shown(browser, "inpaint-results")
    _until(browser, lambda d: d.execute_script(
        "return document.getElementById('inpaint-result').naturalWidth"), "the filled image")
    assert result.is_displayed()
    painted = _pixels(base64.b64decode(browser.execute_script(
        "return document.getElementById('inpaint-mask').toDataURL().split(',')[1]")))
    holes = painted[..., 3] > 0  # binary once sent: alpha 255 painted, 0 not
    assert set(np.unique(painted[..., 3])) <= {0, 255}
    assert 0.01 < holes.mean() < 0.5, holes.mean()
    filled = _pixels(_image_bytes(browser, "inpaint-result"))
    assert filled.shape == image.shape
    assert np.array_equal(filled[~holes], image[~holes])
    assert not np.array_equal(filled[holes], image[holes])  # something was filled in
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no script error, no failed request
    assert time.monotonic() - start < 60


def test_generate_cancel_and_errors_in_the_page(server, browser, tmp_path):
    _open(browser, server + "/#generate")
    assert browser.find_element(By.ID, "view-generate").is_displayed()
    vaes = [o.get_attribute("value") for o in browser.find_elements(
        By.CSS_SELECTOR, "#generate-model option")]
    assert vaes == ["tiny-vae"]  # the models whose tasks include sampling
    n = browser.find_element(By.ID, "generate-n")
    n.clear()
    n.send_keys("4")
    browser.find_element(By.ID, "generate-sample").click()
    _shown(browser, "generate-results")
    grid = _pixels(_image_bytes(browser, "generate-image"))
    api = httpx.post(server + "/api/sample", data={"model": "tiny-vae", "n": "4",
                                                   "temperature": "1", "seed": "0"})
    assert np.array_equal(grid, _pixels(api.content))
    # a long job shows its progress and stops at Cancel
    browser.find_element(By.ID, "tab-compress").click()
    source = tmp_path / "large.png"
    source.write_bytes(_png(_photo(256, 384)))
    browser.find_element(By.ID, "compress-file").send_keys(str(source))
    effort = browser.find_element(By.ID, "compress-effort")
    effort.send_keys(Keys.ARROW_RIGHT * 3)  # effort 3: 300 refinement steps, as a job
    browser.find_element(By.ID, "compress-run").click()
    _until(browser, lambda d: _text(d, "compress-job-message").startswith("refining"),
           "the job's progress")
    assert browser.find_element(By.ID, "compress-progress").get_attribute("value")
    browser.find_element(By.ID, "compress-cancel").click()
    _until(browser, lambda d: _text(d, "compress-error") == "Cancelled.", "the cancellation")
    assert not browser.find_element(By.ID, "compress-job").is_displayed()
    effort.send_keys(Keys.ARROW_LEFT * 3)
    # an impossible target: the server's message, in the page
    source = tmp_path / "small.png"
    source.write_bytes(_png(_photo(32, 32)))
    browser.find_element(By.ID, "compress-file").send_keys(str(source))
    browser.find_element(By.CSS_SELECTOR, "#compress-target-kind option[value='max_bytes']"
                         ).click()
    browser.find_element(By.ID, "compress-target").send_keys("10")
    browser.find_element(By.ID, "compress-run").click()
    error = _until(browser, lambda d: d.find_element(By.ID, "compress-error").is_displayed()
                   and d.find_element(By.ID, "compress-error"), "the error")
    assert "bytes" in error.text and "internal error" not in error.text
    # every view fits a phone's width: nothing wider than the window
    browser.set_window_size(400, 800)
    try:
        for view in ("compress", "decompress", "denoise", "inpaint", "generate"):
            browser.find_element(By.ID, f"tab-{view}").click()
            overflow = browser.execute_script(
                "const e = document.documentElement; return e.scrollWidth - e.clientWidth")
            assert overflow <= 0, f"the {view} view is {overflow} px wider than the window"
    finally:
        browser.set_window_size(1280, 900)


def test_a_token_from_the_page_opens_a_server_that_has_one(browser):
    with _serving(ServiceSettings(workers=1, token="s3cret")) as url:
        _open(browser, url + "/")
        error = browser.find_element(By.ID, "global-error")
        assert error.is_displayed() and "token" in error.text  # /api/models answered 401
        token = browser.find_element(By.ID, "token")
        token.clear()
        token.send_keys("s3cret", Keys.TAB)  # change: kept for the session, models reloaded
        _until(browser, lambda d: not error.is_displayed(), "the models with the token")
        assert "codec" in [o.get_attribute("value") for o in browser.find_elements(
            By.CSS_SELECTOR, "#compress-model option")]
        assert browser.execute_script("return sessionStorage.getItem('clearvae-token')") == \
            "s3cret"
        browser.execute_script("sessionStorage.clear()")
