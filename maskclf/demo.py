"""Web demo: upload a photo, see it annotated and a table of each face's probabilities.

    python -m maskclf demo --model models/<run> --port 7860      # then open http://127.0.0.1:7860

FastAPI + uvicorn serving one self-contained HTML page (inline CSS and JS, nothing
fetched from elsewhere, so it works offline) and one JSON endpoint, `POST /api/predict`.
Any bad upload (not an image, truncated, empty, too large) gets a friendly message with
status 4xx; an unexpected failure gets a 500 with a message, never a stack trace, and
the server keeps serving.
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
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from .detect import Detector, make_detector
from .images import MAX_PIXELS, to_rgb
from .predict import add_model_options, annotate, classify_photo, photo_summary, resolve_model, summary_caption

MAX_UPLOAD_MB = 10
log = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload that cannot be analysed; the message is meant for the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes as an RGB uint8 array (any mode converted); UploadError naming the file."""
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
    try:
        img.load()
        return np.asarray(to_rgb(img))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"“{name}” looks truncated or corrupt: the image could not be decoded.") from exc


def png_data_url(image: np.ndarray) -> str:
    """An RGB array as a `data:image/png;base64,...` URL."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def analyse(
    model: Any, config: dict[str, Any], detector: Detector, data: bytes, name: str, threshold: float = 0.5
) -> dict[str, Any]:
    """Detect and classify the faces of an uploaded photo: faces, photo summary, annotated image, message."""
    image = decode_upload(data, name)
    faces = classify_photo(model, config, image, detector(image), threshold)
    summary = photo_summary(faces)
    message = f"{len(faces)} face(s) found." if faces else "No face found in this photo."
    return {"name": name, "width": image.shape[1], "height": image.shape[0], "faces": faces, "summary": summary,
            "image": png_data_url(annotate(image, faces, caption=summary_caption(summary))), "message": message}


def create_app(
    model: Any,
    config: dict[str, Any],
    detector: Detector,
    threshold: float = 0.5,
    max_bytes: int = MAX_UPLOAD_MB * 1024 * 1024,
) -> FastAPI:
    """The demo app around a loaded model and detector."""
    app = FastAPI(title="maskclf demo", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one analysis at a time: neither TF model is guaranteed thread-safe
    too_big = f"The file is larger than {max_bytes / 1024 / 1024:.0f} MB. Please upload a smaller photo."

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + 64 * 1024:  # room for the multipart envelope
            return JSONResponse({"error": too_big}, status_code=413)
        return await call_next(request)

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
            with lock:
                return JSONResponse(analyse(model, config, detector, data, name, threshold))
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
  td.with_mask { color: #007a00; } td.without_mask { color: #c00000; }
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
  <thead><tr><th>#</th><th>label</th><th>P(with_mask)</th><th>P(without_mask)</th><th>box (x0, y0, x1, y1)</th></tr></thead>
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
                   face.p_without_mask.toFixed(3), face.box.join(", ")];
    cells.forEach((value, k) => { const td = tr.insertCell(); td.textContent = value;
      if (k === 1) td.className = "label " + face.label; });
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

    from .model import RunFolderError

    try:
        model, config = resolve_model(args.model)
        detector = make_detector(args.detector, args.min_face)
    except (RunFolderError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(model, config, detector, args.threshold, int(args.max_mb * 1024 * 1024))
    print(f"maskclf demo on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
