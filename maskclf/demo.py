"""Web demo: a photo (uploaded, or one of the examples) or live webcam frames, each face boxed and labelled.

    python -m maskclf demo --model models/<run> --port 7860      # then open http://127.0.0.1:7860

FastAPI + uvicorn serving one self-contained page (`templates/demo/index.html`: inline CSS
and JS, nothing fetched from elsewhere, so it works offline) and one JSON endpoint,
`POST /api/predict` (form fields: `file`; optional `threshold`, `detector`, `with_image`).
The page has the detector (one of `detect.DETECTORS`) and the threshold as controls, a few
example photos of the validation fold to click (`example_photos`: chosen by EXAMPLE_RULE,
served from the data set the extraction read, none when it is not there), and a webcam
mode: the browser's `getUserMedia` frames are posted one at a time, at most one every
FRAME_INTERVAL_MS, and the boxes are drawn on a canvas over the video. Photos and frames
are drawn by the page, with the faces numbered as the table's rows and labelled with the
same words: for a model trained on the three annotated classes, its three-way answer (with
mask, worn incorrectly, without mask, each in its colour, as `predict --draw` draws them) and
the three probabilities; otherwise the binary one. Any bad upload (not an image, truncated,
empty, too large, a bad setting) gets a friendly message with status 4xx; an unexpected
failure gets a 500 with a message, never a stack trace, and the server keeps serving.

The work per request is bounded: bodies are cut off at the size limit (with or without
Content-Length), images over MAX_PIXELS are refused before decoding, faces are detected
on a copy shrunk to WORK_SIDE px (`detect_faces`) and classified on crops of the original,
and the image sent back is at most WORK_SIDE px. One normal photo and one large
upload are analysed at a time, each in its own lane so that large uploads never hold up
normal photos; a request waits at most QUEUE_WAIT_S for its turn, at most MAX_WAITING
wait at once, and the others get a 503 asking to try again. A connection must send a request's
headers and body within REQUEST_TIMEOUT_S (else it is closed: a silent or slow client holds
nothing), at most MAX_CONNECTIONS are open at once, and a request head is at most MAX_HEADER_BYTES.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import io
import json
import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from . import CLASS_NAMES, answers
from .cli_args import DEFAULT_DETECTOR, MAX_UPLOAD_MB, probability
from .data import TINY_FACE
from .detect import DETECTORS, FaceFinder, make_face_finder
from .images import WORK_SIDE, ImageError, ImageTooLarge, decode_rgb, open_image, working_image
from .paths import DEFAULT_FACES_DIR
from .predict import (COLOURS, LABEL_WORDS, classify_photo, face_answer, photo_summary, summary_caption,
                      verified_faces)
from .runtime import resolve_model

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
EXAMPLE_COUNT = 4
EXAMPLE_MIN_FACES = 2
EXAMPLE_RULE = (f"the first {EXAMPLE_COUNT} photos of the validation fold (fold 0), in the data set's order, "
                f"with at least {EXAMPLE_MIN_FACES} annotated faces")
"""How the example photos are chosen: by a rule, not by how well the model does on them."""
FRAME_INTERVAL_MS = 500
"""Webcam: at most one frame every this many ms, and one at a time (the next once the answer is in)."""
FRAME_SIDE = 640
"""Webcam: frames are sent at most this many px on their longer side."""
PAGE = resources.files(__package__).joinpath("templates/demo/index.html").read_text(encoding="utf-8")
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
        return open_image(data, name, max_pixels)
    except ImageTooLarge as exc:
        size = f" is {exc.size[0]}×{exc.size[1]} pixels;" if exc.size else " has too many pixels to analyse;"
        raise UploadError(f"“{name}”{size} the limit is {max_pixels / 1e6:.0f} megapixels.", 413) from exc
    except ImageError as exc:
        raise UploadError(f"“{name}” is not an image this demo can read. Please upload a JPEG or PNG photo.") from exc


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes as an upright RGB uint8 array (`images.decode_rgb`); UploadError naming the file."""
    with open_upload(data, name, max_pixels) as img:
        try:
            return np.asarray(decode_rgb(img, name))
        except ImageError as exc:
            raise UploadError(f"“{name}” looks truncated or corrupt: the image could not be decoded.") from exc


def jpeg_data_url(image: np.ndarray, quality: int = 90) -> str:
    """An RGB array as a `data:image/jpeg;base64,...` URL."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def analyse(
    model: Any, config: dict[str, Any], finder: FaceFinder, data: bytes, name: str, threshold: float = 0.5,
    model_lock: ContextManager[Any] | None = None, max_pixels: int = MAX_PIXELS, with_image: bool = True,
) -> dict[str, Any]:
    """Detect and classify the faces of an uploaded photo: numbered faces, photo summary and its line, notes, message.

    Each face gets `number` (1, 2, ...: its row and its tag on the drawing) and `label_text`
    (its answer in predict.LABEL_WORDS' words, the same on both: three-way, or binary for a binary
    model). Boxes are in the upload's pixels. With `with_image`, `image` is the photo as analysed
    (orientation and colours as decoded), shrunk to at most WORK_SIDE px, for the page to draw the boxes on.
    """
    image = decode_upload(data, name, max_pixels)
    boxes, scores = finder(image)
    with model_lock or nullcontext():
        faces = classify_photo(model, config, image, boxes, threshold)
    faces = verified_faces(finder, [faces], [scores])[0]
    faces = [{"number": i, "label_text": LABEL_WORDS[face_answer(face)], **face} for i, face in enumerate(faces, 1)]
    summary = photo_summary(faces, answers.has_three_way(config))
    line = summary_caption(summary)
    small = sum(face.get("small_face", False) for face in faces)
    notes = [f"{small} under {TINY_FACE} px: too small for a reliable label."] if small else []
    message = " ".join([f"{line}." if faces else "No face found in this photo.", *notes])
    reply = {"name": name, "width": image.shape[1], "height": image.shape[0], "faces": faces, "summary": summary,
             "summary_line": line, "notes": notes, "message": message}
    if with_image:
        reply["image"] = jpeg_data_url(working_image(image)[0])
    return reply


def example_photos(faces_dir: str | Path = DEFAULT_FACES_DIR, count: int = EXAMPLE_COUNT,
                   min_faces: int = EXAMPLE_MIN_FACES) -> list[Path]:
    """The example photos by EXAMPLE_RULE, from the extraction at `faces_dir` (its folds) and the data set it
    read; [] (the reason logged) when either is not there."""
    from .data import DataError, read_manifest, source_photos_dir
    from .wholephoto import photos_from_manifest

    try:
        photos = photos_from_manifest(read_manifest(faces_dir), source_photos_dir(faces_dir), folds=[0])
    except (DataError, OSError, ValueError, KeyError) as exc:  # DataNotFoundError is an OSError
        log.warning("no example photos: %s", exc)
        return []
    return [photo.path for photo in photos if len(photo.boxes) >= min_faces and photo.path.is_file()][:count]


def setting_threshold(text: str | None, default: float) -> float:
    """The threshold a request asks for (its default when not given); UploadError when it is not in [0, 1]."""
    if text is None or text == "":
        return default
    try:
        return probability(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise UploadError(f"The threshold must be a number from 0 to 1, not “{text}”.") from exc


class Detectors:
    """The detectors a request may choose, as FaceFinders: one per (name, lane), so that the two lanes never call
    one detector at once; each made by `make` on its first use. Without `make`, only the default."""

    def __init__(self, default: str, normal: FaceFinder, large: FaceFinder,
                 make: Callable[[str], FaceFinder] | None = None):
        self.default, self.make = default, make
        self.choices = list(dict.fromkeys([*DETECTORS, default])) if make else [default]
        self.made = {(default, False): normal, (default, True): large}
        self.lock = threading.Lock()

    def get(self, name: str | None, large: bool) -> FaceFinder:
        """The detector `name` (default: the default) of the large or the normal lane; UploadError if unknown or unavailable."""
        name = name or self.default
        if name not in self.choices:
            raise UploadError(f"Unknown detector “{name}”: choose one of {', '.join(self.choices)}.")
        with self.lock:
            if (name, large) not in self.made:
                try:
                    self.made[name, large] = self.make(name)
                except (ImportError, RuntimeError, ValueError, OSError) as exc:
                    raise UploadError(f"The {name} detector is not available on this server: {exc}", 503) from exc
            return self.made[name, large]


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
    detector: FaceFinder,
    threshold: float = 0.5,
    max_bytes: int = MAX_UPLOAD_MB * 1024 * 1024,
    large_detector: FaceFinder | None = None,
    lanes: Lanes | None = None,
    max_pixels: int = MAX_PIXELS,
    detector_name: str = DEFAULT_DETECTOR,
    make_detector: Callable[[str], FaceFinder] | None = None,
    examples: Sequence[str | Path] = (),
) -> FastAPI:
    """The demo app around a loaded model and detector (`detector_name`, the page's default choice).

    `large_detector` serves the large lane, so that the two lanes never call one detector at
    once (default: `detector`, for one safe to share, as onnxruntime's CenterFace is).
    `make_detector(name)` makes the other detectors of `detect.DETECTORS` when a request picks
    one (without it, only `detector_name` is offered). `examples`: photos the page offers. The page
    shows the model's answers (three-way, or binary) in predict's words and colours.
    """
    app = FastAPI(title="maskclf demo", docs_url=None, redoc_url=None, openapi_url=None)
    model_lock = threading.Lock()  # the Keras model is not guaranteed thread-safe
    lanes = lanes or Lanes()
    detectors = Detectors(detector_name, detector, large_detector or detector, make_detector)
    example_files = {Path(path).name: Path(path) for path in examples}
    settings = {"threshold": threshold, "detectors": detectors.choices, "detector": detector_name,
                "answers": list(answers.THREE_WAY if answers.has_three_way(config) else CLASS_NAMES),
                "words": LABEL_WORDS, "colours": {name: "#%02x%02x%02x" % rgb for name, rgb in COLOURS.items()},
                "examples": [{"name": name, "url": f"examples/{name}"} for name in example_files],
                "example_rule": EXAMPLE_RULE, "frame_interval_ms": FRAME_INTERVAL_MS, "frame_side": FRAME_SIDE}
    html = PAGE.replace("{CONFIG}", json.dumps(settings).replace("<", "\\u003c"))
    too_big = f"The file is larger than {max_bytes / 1024 / 1024:.0f} MB. Please upload a smaller photo."
    app.add_middleware(BodyLimit, max_bytes=max_bytes + 64 * 1024, message=too_big)  # room for the multipart envelope

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "Please choose a photo to upload (form field “file”)."}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return html

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/examples")
    def list_examples() -> dict[str, Any]:
        return {"rule": EXAMPLE_RULE, "examples": settings["examples"]}

    @app.get("/examples/{name}")
    def example(name: str) -> Response:
        if name not in example_files:
            return JSONResponse({"error": f"No example photo “{name}”."}, status_code=404)
        return FileResponse(example_files[name])

    @app.post("/api/predict")
    def predict(file: UploadFile, threshold: str | None = Form(None), detector: str | None = Form(None),
                with_image: str = Form("1")) -> JSONResponse:
        name = os.path.basename(file.filename or "upload")
        try:
            chosen = setting_threshold(threshold, settings["threshold"])
            data = file.file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UploadError(too_big, 413)
            img = open_upload(data, name, max_pixels)
            large = img.width * img.height > LARGE_PIXELS
            with lanes.turn(large):
                found = detectors.get(detector, large)
                return JSONResponse(analyse(model, config, found, data, name, chosen, model_lock, max_pixels,
                                            with_image=with_image != "0"))
        except UploadError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception:
            log.exception("analysing %s failed", name)
            return JSONResponse({"error": f"Something went wrong while analysing “{name}”. Please try another photo."},
                                status_code=500)

    return app




REQUEST_TIMEOUT_S = 15.0
"""Longest time a connection may take to send a request's headers and body (from its opening, or from the
answer to its previous request); then it is closed. A slow or silent client holds nothing for longer."""
MAX_CONNECTIONS = 64
"""Most connections open at once; past it, a request gets a 503 at once."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest request head (request line and headers)."""


def server_config(app: Any, request_timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                  **options: Any) -> Any:
    """uvicorn's configuration of the demo: REQUEST_TIMEOUT_S for a request's headers and body (and for an idle
    keep-alive connection), MAX_CONNECTIONS, MAX_HEADER_BYTES; `options` go to uvicorn.Config (host, port...)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol, closing a connection whose request has not fully arrived in time."""

        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def _timed_out(self) -> None:
            cycle = self.cycle
            receiving = cycle is None or cycle.response_complete or cycle.more_body  # headers or body still due
            if receiving and not self.transport.is_closing():
                self.transport.close()

    return uvicorn.Config(app, http=TimedH11Protocol, timeout_keep_alive=request_timeout_s,
                          limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          log_level="warning", **options)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for the server; OSError naming them when it is taken or not an address here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"--host {host}: not an address to listen on here ({exc.strerror or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise OSError(f"--port {port}: cannot listen on {host}:{port} ({why}); choose another with --port") from None
    return sock


def run(args: argparse.Namespace) -> int:
    """Run `demo` until interrupted: 2 if the port is taken or the model cannot be loaded."""
    import uvicorn

    from .runs import RunFolderError

    try:
        sock = listening_socket(args.host, args.port)  # before the model loads: a taken port is said at once
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        model, config = resolve_model(args.model, fast=True)
        verify = not args.no_verify
        detector = make_face_finder(config, args.detector, args.min_face, verify)
        large_detector = make_face_finder(config, args.detector, args.min_face, verify)  # the large lane's own
    except (RunFolderError, ValueError, RuntimeError) as exc:
        sock.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    examples = example_photos()
    app = create_app(model, config, detector, args.threshold, int(args.max_mb * 1024 * 1024), large_detector,
                     detector_name=args.detector, make_detector=lambda name: make_face_finder(config, name, args.min_face, verify),
                     examples=examples)
    print(f"maskclf demo on http://{args.host}:{args.port}/ with {len(examples)} example photos (Ctrl-C to stop)",
          file=sys.stderr)
    with sock:
        uvicorn.Server(server_config(app, host=args.host, port=args.port)).run(sockets=[sock])
    return 0
