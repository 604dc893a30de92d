"""demo: the API on good and bad uploads, and the page in a real headless Chromium."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from synthetic import draw_face
from tinymodel import make_tiny_run

from maskclf.demo import create_app, decode_upload, UploadError
from maskclf.runs import load_run

ARTIFACTS = Path(__file__).parent / "artifacts"
BOXES = [(20, 20, 60, 60), (120, 50, 168, 98)]
MAX_BYTES = 300_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def photo_png(blank: bool = False) -> bytes:
    """A 200x120 PNG with a masked face and an unmasked one at BOXES (or none)."""
    image = np.full((120, 200, 3), (90, 140, 90), np.uint8)
    if not blank:
        image[20:60, 20:60] = draw_face(40, "with_mask")
        image[50:98, 120:168] = draw_face(48, "without_mask")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_detector(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The known faces of `photo_png`; none on a uniform image; fails on a 13-px-wide one."""
    if image.shape[1] == 13:
        raise RuntimeError("boom")
    return BOXES if image.std(axis=(0, 1)).max() > 5 else []


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model, config = load_run(make_tiny_run(tmp_path_factory.mktemp("model") / "run"))
    return create_app(model, config, fake_detector, max_bytes=MAX_BYTES)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def post(client, name: str, data: bytes, mime: str = "image/png"):
    return client.post("/api/predict", files={"file": (name, data, mime)})


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    for marker in ("http://", "https://", "//cdn", "<link"):
        assert marker not in page.text.replace('"http://www.w3.org', ""), f"external resource: {marker}"


def test_good_photo(client):
    reply = post(client, "two.png", photo_png())
    assert reply.status_code == 200
    body = reply.json()
    assert [f["label"] for f in body["faces"]] == ["with_mask", "without_mask"]
    assert [tuple(f["box"]) for f in body["faces"]] == BOXES
    assert body["image"].startswith("data:image/png;base64,")
    assert body["message"] == "2 face(s) found."
    assert body["summary"] == {"faces": 2, "with_mask": 1, "without_mask": 1, "everyone_masked": False}


def test_photo_without_face(client):
    body = post(client, "blank.png", photo_png(blank=True)).json()
    assert body["faces"] == [] and body["message"] == "No face found in this photo."
    assert body["summary"]["faces"] == 0 and body["summary"]["everyone_masked"] is None


def truncated() -> bytes:
    data = photo_png()
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data, status, text", [
    ("notes.txt", b"hello, not an image", 400, "is not an image"),
    ("empty.png", b"", 400, "is empty"),
    ("cut.png", truncated(), 400, "truncated or corrupt"),
    ("big.png", b"\x89PNG" + bytes(MAX_BYTES), 413, "larger than"),
])
def test_bad_uploads_get_a_friendly_message_and_the_server_stays_up(client, name, data, status, text):
    reply = post(client, name, data)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert text in error and "Traceback" not in error
    if status == 400:
        assert name in error
    assert post(client, "two.png", photo_png()).status_code == 200


def test_huge_photo_is_refused_by_pixel_count(client):
    buffer = io.BytesIO()
    Image.new("L", (8100, 8000)).save(buffer, format="PNG")  # 64.8 Mpx in a small file
    assert len(buffer.getvalue()) < MAX_BYTES
    reply = post(client, "huge.png", buffer.getvalue())
    assert reply.status_code == 413 and "huge.png" in reply.json()["error"] and "megapixels" in reply.json()["error"]


def test_request_without_a_file(client):
    reply = client.post("/api/predict", data={"other": "x"})
    assert reply.status_code == 400 and "choose a photo" in reply.json()["error"]


def test_unexpected_failure_is_a_500_with_a_message(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((10, 13, 3), np.uint8)).save(buffer, format="PNG")
    reply = post(client, "odd.png", buffer.getvalue())
    assert reply.status_code == 500 and "Something went wrong" in reply.json()["error"]
    assert post(client, "two.png", photo_png()).status_code == 200


def test_decode_upload_limits_pixels_and_converts_modes():
    buffer = io.BytesIO()
    Image.new("P", (40, 30)).save(buffer, format="PNG")
    assert decode_upload(buffer.getvalue(), "p.png").shape == (30, 40, 3)
    with pytest.raises(UploadError, match="megapixels"):
        decode_upload(buffer.getvalue(), "p.png", max_pixels=100)


# --------------------------------------------------------------------------- real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "demo server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def test_in_a_real_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    (tmp_path / "two.png").write_bytes(photo_png())
    (tmp_path / "broken.png").write_bytes(b"this is not a PNG")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server)
            page.set_input_files("#file", str(tmp_path / "two.png"))
            page.click("#submit")
            page.wait_for_selector("#faces tbody tr", timeout=15_000)
            labels = page.locator("#faces td.label").all_inner_texts()
            assert labels == ["with_mask", "without_mask"]
            assert page.inner_text("#message") == "2 face(s) found."
            assert page.evaluate("document.getElementById('result').naturalWidth") == 800
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

            page.set_input_files("#file", str(tmp_path / "broken.png"))
            page.click("#submit")
            page.wait_for_selector("#message.error", timeout=15_000)
            assert "broken.png" in page.inner_text("#message") and "not an image" in page.inner_text("#message")
            assert page.locator("#faces").is_hidden()
            page.screenshot(path=str(ARTIFACTS / "demo_error.png"), full_page=True)
            assert all(url.startswith((server, "data:")) for url in requests), requests
        finally:
            browser.close()
