"""The web demo in headless Chromium: the server in a thread, a fake webcam clip, the page's two modes driven.

Shared by `tests/test_demo.py` (the tiny test model, synthetic photos) and
`scripts/demo_screenshots.py` (a saved model, the example photos). Playwright (pinned in
`requirements.txt`) drives Debian's chromium; `playwright install` is never needed. The webcam
is Chromium's fake camera playing a YUV4MPEG2 clip (`write_y4m`) in a loop.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000
"""Longest wait for one answer on the page (a real model on two busy cores can take seconds)."""


def fake_camera_args(clip: str | Path) -> list[str]:
    """Chromium options that grant the camera without asking and make it play `clip` (a .y4m file)."""
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={Path(clip).resolve()}"]


def write_y4m(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """RGB uint8 frames of one even width and height as a YUV4MPEG2 clip (4:2:0, BT.601 studio range)."""
    height, width = frames[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"frames must have an even width and height, not {width}x{height}")
    path = Path(path)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in frames:
            if frame.shape != (height, width, 3):
                raise ValueError(f"every frame must be {width}x{height} RGB, not {frame.shape}")
            r, g, b = (frame[..., k].astype(np.float32) for k in range(3))
            y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
            cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
            cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
            out.write(b"FRAME\n")
            for plane in (y, _halve(cb), _halve(cr)):
                out.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def _halve(plane: np.ndarray) -> np.ndarray:
    """A plane averaged over 2x2 blocks."""
    return plane.reshape(plane.shape[0] // 2, 2, plane.shape[1] // 2, 2).mean(axis=(1, 3))


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app: Any, start_s: float = 30, **limits: Any) -> Iterator[str]:
    """Serve the ASGI `app` as `demo` does (`demo.server_config`, with `limits` such as request_timeout_s)
    on a free port of 127.0.0.1 in a thread; yields its URL and stops it afterwards."""
    import uvicorn

    from .demo import server_config

    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=free_port(), **limits))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}/"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def open_page(url: str, clip: str | Path | None = None, width: int = 1100,
              height: int = 1000) -> Iterator[tuple[Any, list[str]]]:
    """A Playwright page of headless Chromium at `url` (with `clip` as its webcam), and the list of every URL it asks for."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = CHROMIUM_ARGS + (fake_camera_args(clip) if clip else [])
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            yield page, requests
        finally:
            browser.close()


def replies(page: Any) -> int:
    """How many answers the page has shown so far."""
    return int(page.evaluate("Number(document.body.dataset.replies || 0)"))


def wait_for_reply(page: Any, before: int, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until the page shows an answer after the first `before` (or an error)."""
    page.wait_for_function(f"Number(document.body.dataset.replies || 0) > {before} "
                           "|| document.getElementById('message').className === 'error'", timeout=timeout_ms)


def shown(page: Any) -> dict[str, Any]:
    """What the page shows: summary line, message, and the table's numbers and labels."""
    return {"summary": page.inner_text("#summary"), "message": page.inner_text("#message"),
            "numbers": [int(n) for n in page.locator("#faces tbody td:nth-child(1)").all_inner_texts()],
            "labels": page.locator("#faces td.label").all_inner_texts()}


def capture_example(page: Any, screenshot: str | Path, index: int = 0, timeout_ms: int = TIMEOUT_MS) -> dict[str, Any]:
    """Click example photo `index`, wait for its answer, save a screenshot; what the page shows."""
    before = replies(page)
    page.locator("#examples button").nth(index).click()
    wait_for_reply(page, before, timeout_ms)
    page.screenshot(path=str(screenshot), full_page=True)
    return shown(page)


def capture_webcam(page: Any, screenshot: str | Path, frames: int = 3, timeout_ms: int = TIMEOUT_MS) -> dict[str, Any]:
    """Switch to webcam mode, start it, wait until `frames` frames are answered, save a screenshot;
    what the page shows, and `frames`: how many were answered."""
    page.click("#mode-webcam")
    page.click("#webcam-start")
    page.wait_for_function(f"Number(document.getElementById('webcam-status').dataset.frames) >= {frames} "
                           "|| document.getElementById('message').className === 'error'", timeout=timeout_ms)
    page.screenshot(path=str(screenshot), full_page=True)
    result = shown(page)
    result["frames"] = int(page.get_attribute("#webcam-status", "data-frames"))
    return result
