"""Web demo: upload a photo, see it annotated and a table of each face's probabilities.

    python -m maskclf demo --model models/<run> --port 7860      # then open http://127.0.0.1:7860

FastAPI + uvicorn serving one self-contained HTML page (inline CSS and JS, nothing
fetched from elsewhere, so it works offline) and one JSON endpoint, `POST /api/predict`.
Any bad upload (not an image, truncated, empty, too large) gets a friendly message with
status 4xx; an unexpected failure gets a 500 with a message, never a stack trace, and
the server keeps serving.

The work per request is bounded: bodies are cut off at the size limit (with or without
Content-Length), images over MAX_PIXELS are refused before decoding, faces are detected
on a copy shrunk to WORK_SIDE px (`detect_faces`) and classified on crops of the original,
and the annotated image sent back is at most WORK_SIDE px. One normal photo and one large
upload are analysed at a time, each in its own lane so that large uploads never hold up
normal photos; a request waits at most QUEUE_WAIT_S for its turn, at most MAX_WAITING
wait at once, and the others get a 503 asking to try again.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import sys
import threading
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from .detect import Detector, detect_faces, make_detector
from .images import WORK_SIDE, to_rgb
from .predict import SMALL_FACE, add_model_options, annotate, classify_photo, photo_summary, resolve_model, summary_caption

MAX_UPLOAD_MB = 10
MAX_PIXELS = 50_000_000
"""Largest upload decoded: the largest phone photos. Analysing one costs ~13 bytes a pixel at its
peak (the decoded image, its RGB copy, the array, the shrunk copies; measured: a 50-Mpx JPEG took
the server's peak RSS from 1.02 to 1.68 GB), and only one large upload is analysed at a time, so the
server stays under 2 GB, well within 3 GB."""
LARGE_PIXELS = WORK_SIDE * WORK_SIDE
"""Uploads over this many pixels take the large lane."""
QUEUE_WAIT_S = 8.0
"""Longest wait for a turn before a 503: every request is answered within seconds."""
MAX_WAITING = 32
"""Most requests waiting at once (each holds its upload in memory); more get a 503 at once."""
BUSY = "The demo is busy analysing other photos. Please try again in a moment."
log = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload that cannot be analysed; the message is meant for the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def open_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The uploaded image opened (its header read, not its pixels), within `max_pixels`; UploadError naming the file."""
    if not data:
        raise UploadError(f"“{name}” is empty (0 bytes). Please choose a photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UploadError(f"“{name}” has too many pixels to analyse.", 413) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise UploadError(f"“{name}” is not an image this demo can read. Please upload a JPEG or PNG photo.") from exc
    if img.width * img.height > max_pixels:
        raise UploadError(f"“{name}” is {img.width}×{img.height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.", 413)
    return img


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes as an RGB uint8 array (any mode converted); UploadError naming the file."""
    img = open_upload(data, name, max_pixels)
    try:
        img.load()
        return np.asarray(to_rgb(img))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"“{name}” looks truncated or corrupt: the image could not be decoded.") from exc


def png_data_url(image: np.ndarray) -> str:
    """An RGB array as a `data:image/png;base64,...` URL (fast compression: a quarter of the time, 7% larger)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def analyse(
    model: Any, config: dict[str, Any], detector: Detector, data: bytes, name: str, threshold: float = 0.5,
    model_lock: ContextManager[Any] | None = None, max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Detect and classify the faces of an uploaded photo: faces, photo summary, annotated image, message.

    Boxes are in the upload's pixels; the annotated image is shrunk to at most WORK_SIDE px.
    """
    image = decode_upload(data, name, max_pixels)
    boxes = detect_faces(detector, image)
    with model_lock or nullcontext():
        faces = classify_photo(model, config, image, boxes, threshold)
    summary = photo_summary(faces)
    message = f"{len(faces)} face(s) found." if faces else "No face found in this photo."
    small = sum(face.get("small_face", False) for face in faces)
    if small:
        message += f" {small} under {SMALL_FACE} px: too small for a reliable label."
    drawn = annotate(image, faces, caption=summary_caption(summary), max_side=WORK_SIDE)
    return {"name": name, "width": image.shape[1], "height": image.shape[0], "faces": faces, "summary": summary,
            "image": png_data_url(drawn), "message": message}


class Lanes:
    """Turns at the analysis: one at a time in each lane (normal photos, large uploads).

    A request waits at most `wait_s` for its turn and at most `max_waiting` wait at once;
    otherwise `turn` raises UploadError 503.
    """

    def __init__(self, wait_s: float = QUEUE_WAIT_S, max_waiting: int = MAX_WAITING):
        self.wait_s, self.max_waiting = wait_s, max_waiting
        self.lanes = {False: threading.Semaphore(1), True: threading.Semaphore(1)}
        self.waiting = 0
        self.count_lock = threading.Lock()

    @contextmanager
    def turn(self, large: bool) -> Iterator[None]:
        """Hold the turn of the large or the normal lane."""
        lane = self.lanes[large]
        if not lane.acquire(blocking=False):
            self._wait(lane)
        try:
            yield
        finally:
            lane.release()

    def _wait(self, lane: threading.Semaphore) -> None:
        with self.count_lock:
            if self.waiting >= self.max_waiting:
                raise UploadError(BUSY, 503)
            self.waiting += 1
        try:
            got = lane.acquire(timeout=self.wait_s)
        finally:
            with self.count_lock:
                self.waiting -= 1
        if not got:
            raise UploadError(BUSY, 503)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 once that many bytes have
    arrived, with or without Content-Length; the rest of it is never read."""

    def __init__(self, app: Any, max_bytes: int, message: str):
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received, over, started = 0, False, False

        async def counted() -> dict[str, Any]:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            over = received > self.max_bytes
            return {"type": "http.disconnect"} if over else message

        async def unless_over(message: dict[str, Any]) -> None:
            nonlocal started
            if not over:  # the app's answer to a body cut short is replaced by the 413
                started = True
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        await JSONResponse({"error": self.message}, status_code=413)({"type": "http"}, None, send)


def create_app(
    model: Any,
    config: dict[str, Any],
    detector: Detector,
    threshold: float = 0.5,
    max_bytes: int = MAX_UPLOAD_MB * 1024 * 1024,
    large_detector: Detector | None = None,
    lanes: Lanes | None = None,
    max_pixels: int = MAX_PIXELS,
) -> FastAPI:
    """The demo app around a loaded model and detector.

    `large_detector` serves the large lane, so that the two lanes never call one detector at
    once (default: `detector`, for one safe to share, as onnxruntime's CenterFace is).
    """
    app = FastAPI(title="maskclf demo", docs_url=None, redoc_url=None, openapi_url=None)
    model_lock = threading.Lock()  # the Keras model is not guaranteed thread-safe
    lanes = lanes or Lanes()
    detectors = {False: detector, True: large_detector or detector}
    too_big = f"The file is larger than {max_bytes / 1024 / 1024:.0f} MB. Please upload a smaller photo."
    app.add_middleware(BodyLimit, max_bytes=max_bytes + 64 * 1024, message=too_big)  # room for the multipart envelope

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "Please choose a photo to upload (form field “file”)."}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{THRESHOLD}", f"{threshold:g}")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/predict")
    def predict(file: UploadFile) -> JSONResponse:
        name = os.path.basename(file.filename or "upload")
        try:
            data = file.file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UploadError(too_big, 413)
            img = open_upload(data, name, max_pixels)
            large = img.width * img.height > LARGE_PIXELS
            with lanes.turn(large):
                return JSONResponse(analyse(model, config, detectors[large], data, name, threshold, model_lock, max_pixels))
        except UploadError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception:
            log.exception("analysing %s failed", name)
            return JSONResponse({"error": f"Something went wrong while analysing “{name}”. Please try another photo."},
                                status_code=500)

    return app


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mask or no mask?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; }
  form { display: flex; gap: .75rem; align-items: center; flex-wrap: wrap; margin-bottom: 1rem; }
  button { padding: .4rem 1rem; font-size: 1rem; }
  #message { min-height: 1.5rem; font-weight: 600; }
  #message.error { color: #b00020; }
  #result { max-width: 100%; border: 1px solid #ccc; display: none; }
  table { border-collapse: collapse; margin-top: 1rem; }
  th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
  td.label { text-align: left; font-weight: 600; }
  td.with_mask { color: #007a00; } td.without_mask { color: #c00000; } td.note { text-align: left; color: #8a5a00; }
  .note { color: #666; font-size: .9rem; }
</style>
</head>
<body>
<h1>Does each face wear a mask?</h1>
<form id="upload">
  <input id="file" name="file" type="file" accept="image/*" required>
  <button id="submit" type="submit">Analyse</button>
</form>
<p class="note">A face is labelled <b>without_mask</b> when P(without_mask) &ge; {THRESHOLD}.
Photos stay on this server and are not stored.</p>
<div id="message" role="status" aria-live="polite"></div>
<img id="result" alt="photo with a box around each detected face">
<table id="faces" hidden>
  <thead><tr><th>#</th><th>label</th><th>P(with_mask)</th><th>P(without_mask)</th><th>box (x0, y0, x1, y1)</th><th>note</th></tr></thead>
  <tbody></tbody>
</table>
<script>
const form = document.getElementById("upload"), message = document.getElementById("message");
const img = document.getElementById("result"), table = document.getElementById("faces");
function show(text, isError) { message.textContent = text; message.className = isError ? "error" : ""; }
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  if (!file) { show("Please choose a photo first.", true); return; }
  const body = new FormData(); body.append("file", file);
  show("Analysing " + file.name + " ...", false);
  img.style.display = "none"; table.hidden = true;
  let reply;
  try {
    const response = await fetch("api/predict", { method: "POST", body });
    reply = await response.json();
  } catch (err) { show("The server did not answer. Is it still running?", true); return; }
  if (reply.error) { show(reply.error, true); return; }
  show(reply.message, false);
  img.src = reply.image; img.style.display = "block";
  const rows = table.querySelector("tbody"); rows.replaceChildren();
  reply.faces.forEach((face, i) => {
    const tr = rows.insertRow();
    const cells = [i + 1, face.label, face.probabilities.with_mask.toFixed(3),
                   face.p_without_mask.toFixed(3), face.box.join(", "), face.small_face ? "⚠ " + face.warning : ""];
    cells.forEach((value, k) => { const td = tr.insertCell(); td.textContent = value;
      if (k === 1) td.className = "label " + face.label;
      if (k === 5) td.className = "note"; });
  });
  table.hidden = reply.faces.length === 0;
});
</script>
</body>
</html>
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf demo`."""
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--max-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload in MB (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Run `demo` until interrupted: 2 if the model cannot be loaded."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import uvicorn

    from .runs import RunFolderError

    try:
        model, config = resolve_model(args.model)
        detector = make_detector(args.detector, args.min_face)
        large_detector = make_detector(args.detector, args.min_face)  # the large lane's own
    except (RunFolderError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(model, config, detector, args.threshold, int(args.max_mb * 1024 * 1024), large_detector)
    print(f"maskclf demo on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
