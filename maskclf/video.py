"""Annotate a webcam stream or a video file: boxes, labels and the processing FPS on every frame.

    python -m maskclf video --source 0                      # webcam, shown in a window
    python -m maskclf video --source in.mp4 --out-video out.mp4 --no-show

A window needs an OpenCV with GUI support (`opencv-python`, not the `-headless` wheel
that requirements.txt pins for servers and CI); writing a file works with either.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from .detect import DetectorModelError, FaceFinder, make_face_finder
from .fsutil import OutputError, atomic_path, output_file_problem, reads_back
from .predict import annotate, counted, find_and_classify
from .runtime import resolve_model

WINDOW = "maskclf (q or Esc to quit)"
FOURCC = "mp4v"
MAX_BAD_RUN = 250
"""Undecodable frames in a row after which a video is taken to end (10 s at 25 FPS)."""
DEFAULT_FPS = 25.0
"""Written file's frame rate when the source does not report one (webcams often don't)."""


class VideoError(RuntimeError):
    """A video source or output cannot be used; the message names it."""


@dataclass
class VideoStats:
    """What `process_video` did."""

    frames: int
    faces: int
    seconds: float
    unreadable: int = 0
    """Frames the source declares that could not be decoded (a corrupt or truncated file)."""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def open_source(source: str | int) -> cv2.VideoCapture:
    """A capture for a camera index (`0`, `"1"`) or a video file; VideoError if it cannot be read."""
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    if isinstance(source, str) and not Path(source).is_file():
        raise VideoError(f"{source}: no such video file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source}" if isinstance(source, int) else f"{source}: not a video OpenCV can read"
        raise VideoError(f"cannot open {what}")
    return capture


def read_frames(capture: cv2.VideoCapture, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a capture until it ends (or `max_frames`).

    A frame that cannot be decoded is passed over while the source declares more frames (a
    file), up to MAX_BAD_RUN in a row; `process_video` reports how many were missed.
    """
    declared = declared_frames(capture)
    count = attempts = bad_run = 0
    while (max_frames is None or count < max_frames) and bad_run < MAX_BAD_RUN:
        ok, bgr = capture.read()
        attempts += 1
        if not ok:
            if attempts >= declared:
                return
            bad_run += 1
            continue
        count, bad_run = count + 1, 0
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def declared_frames(capture: cv2.VideoCapture) -> int:
    """The number of frames a video file's header declares (0 for a camera or when unknown)."""
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if count > 0 and count < 1e9 else 0


def draw_fps(frame: np.ndarray, fps: float) -> np.ndarray:
    """Write "NN.N FPS" in the top-left corner of an RGB frame (in place) and return it."""
    scale = max(0.5, frame.shape[1] / 1000)
    origin = (8, 8 + round(22 * scale))
    for colour, width in (((0, 0, 0), 4), ((255, 255, 255), 1)):
        cv2.putText(frame, f"{fps:.1f} FPS", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA)
    return frame


def annotate_frames(
    frames: Iterator[np.ndarray],
    model: Any,
    config: dict[str, Any],
    finder: FaceFinder,
    threshold: float = 0.5,
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """(annotated RGB frame with its FPS, faces) for each frame; FPS is a moving average."""
    fps = 0.0
    last = time.perf_counter()
    for frame in frames:
        faces = find_and_classify(model, config, finder, [frame], threshold)[0]
        now = time.perf_counter()
        current = 1.0 / max(now - last, 1e-6)
        fps = current if fps == 0.0 else 0.9 * fps + 0.1 * current
        last = now
        yield draw_fps(annotate(frame, faces, min_side=0), fps), faces


def process_video(
    source: str | int,
    model: Any,
    config: dict[str, Any],
    finder: FaceFinder,
    *,
    out: str | Path | None = None,
    show: bool = True,
    threshold: float = 0.5,
    max_frames: int | None = None,
) -> VideoStats:
    """Annotate every frame of `source`, showing it in a window and/or writing it to `out`.

    Stops at the end of the source, on q/Esc in the window, or on Ctrl-C; the file written
    so far is kept. `out` appears only once complete, and only once it reads back with every
    frame written (a full disk makes OpenCV only warn): else OutputError, the previous file kept.
    """
    capture = open_source(source)
    fps_in = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    declared = declared_frames(capture)
    start = time.perf_counter()
    n_frames = n_faces = 0
    quit_early = False

    def all_frames(path: Path) -> str | None:  # n_frames is final when atomic_path checks the file
        return reads_back("video", n_frames)(path)

    try:
        with atomic_path(out, check=all_frames) if out is not None else nullcontext() as tmp:
            writer = None
            try:
                for frame, faces in annotate_frames(read_frames(capture, max_frames), model, config, finder, threshold):
                    n_frames += 1
                    n_faces += len(faces)
                    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                    if tmp is not None:
                        writer = writer or _writer(tmp, out, fps_in, frame.shape)
                        writer.write(bgr)
                    if show and _show(bgr):
                        quit_early = True
                        break
            except KeyboardInterrupt:
                quit_early = True
            finally:
                if writer is not None:
                    writer.release()
            if tmp is not None and n_frames == 0:
                raise VideoError(f"{source}: no frame could be read")
    finally:
        capture.release()
        if show:
            _close_windows()
    whole = max_frames is None and not quit_early
    unreadable = max(declared - n_frames, 0) if whole else 0
    return VideoStats(n_frames, n_faces, time.perf_counter() - start, unreadable)


def _writer(tmp: Path, out: str | Path, fps: float, shape: tuple[int, ...]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise VideoError(f"{out}: cannot write a {FOURCC} video there (use a .mp4 or .avi name)")
    return writer


def _show(bgr: np.ndarray) -> bool:
    """Show a frame; True when the user asked to quit."""
    try:
        cv2.imshow(WINDOW, bgr)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as exc:
        raise VideoError(
            "cannot open a window: this OpenCV has no GUI support (opencv-python-headless); "
            "use --no-show with --out-video FILE, or install opencv-python"
        ) from exc
    return key in (ord("q"), 27)


def _close_windows() -> None:
    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass


def run(args: argparse.Namespace) -> int:
    """Run `video`: 0 on success, 2 if the source, output or model cannot be used."""
    from .runs import RunFolderError

    if args.no_show and args.out is None:
        print("error: --no-show without --out-video would do nothing; add --out-video FILE.mp4", file=sys.stderr)
        return 2
    if args.out is not None and (problem := output_file_problem(args.out)):
        print(f"error: --out-video {problem}", file=sys.stderr)
        return 2
    if args.out is not None and Path(args.source).is_file() and args.out.resolve() == Path(args.source).resolve():
        print(f"error: --out-video {args.out}: is the source video; writing there would replace it", file=sys.stderr)
        return 2
    try:
        model, config = resolve_model(args.model, fast=True)
        finder = make_face_finder(config, args.detector, args.min_face, verify=not args.no_verify)
        stats = process_video(args.source, model, config, finder, out=args.out, show=not args.no_show,
                              threshold=args.threshold, max_frames=args.max_frames)
    except (RunFolderError, VideoError, DetectorModelError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = f", written to {args.out}" if args.out else ""
    print(f"{counted(stats.frames, 'frame')}, {counted(stats.faces, 'face')}, {stats.fps:.1f} FPS{written}", file=sys.stderr)
    if stats.unreadable:
        print(f"warning: {args.source}: {stats.unreadable} of its {stats.unreadable + stats.frames} frames could not "
              "be decoded (a corrupt or truncated video) and are missing from the output", file=sys.stderr)
        return 1
    return 0
