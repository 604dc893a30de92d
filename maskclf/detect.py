"""Face detectors whose models ship inside pip packages, so they work offline.

`make_detector(name)` returns a function `RGB uint8 array -> list of boxes`, each box
`(xmin, ymin, xmax, ymax)` in integer pixels, clipped to the image. Detectors:

- `mtcnn` (default): the `mtcnn` package (TensorFlow; its weights are inside the wheel).
  On the study's photos it finds about 2.5x more faces than the cascade, masked ones too.
- `haar`: OpenCV's bundled frontal-face Haar cascade (`opencv-python-headless` 4.x;
  OpenCV 5 moved the cascades out of the main wheel). No TensorFlow; fast on large faces,
  but it misses most small and masked faces.

`min_face` is the smallest face (pixels of the original image) to look for. The study's
photos are ~400 px wide and most faces are under 32 px, so the default is small; the
cascade's window is 24 px, so it runs on an upscaled copy when `min_face` < 24.
`benchmarks/detector_recall.py` measures recall, boxes per photo and speed.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Box = tuple[int, int, int, int]
Detector = Callable[[np.ndarray], list[Box]]

DETECTORS = ("mtcnn", "haar")
DEFAULT_DETECTOR = "mtcnn"
MIN_FACE = 12
"""Default smallest face to detect, in pixels of the original image."""

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_WINDOW = 24


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> Box | None:
    """Round a box to ints and clip it to a `width` x `height` image; None if nothing is left."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_detector(name: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE) -> Detector:
    """A face detector by name (one of DETECTORS) that looks for faces of `min_face` px and up."""
    if min_face < 1:
        raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
    if name == "haar":
        detect = _haar(min_face)
    elif name == "mtcnn":
        detect = _mtcnn(min_face)
    else:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")

    def run(image: np.ndarray) -> list[Box]:
        image = _as_rgb_uint8(image)
        height, width = image.shape[:2]
        boxes = (clip_box(box, width, height) for box in detect(image))
        return [b for b in boxes if b is not None]

    return run


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8))


RawBoxes = Callable[[np.ndarray], list[tuple[float, float, float, float]]]


def _haar(min_face: int) -> RawBoxes:
    path = cv2.data.haarcascades + HAAR_CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"{path}: cannot load the Haar cascade (is opencv-python-headless 4.x installed?)")
    scale = max(1.0, HAAR_WINDOW / min_face)

    def detect(image: np.ndarray) -> list[tuple[float, float, float, float]]:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale > 1.0:
            size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
        found = cascade.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=5, minSize=(HAAR_WINDOW, HAAR_WINDOW))
        return [(x / scale, y / scale, (x + w) / scale, (y + h) / scale) for x, y, w, h in np.reshape(found, (-1, 4))]

    return detect


def _mtcnn(min_face: int) -> RawBoxes:
    from mtcnn import MTCNN  # imports TensorFlow: only when asked for

    model = MTCNN(stages="face_and_landmarks_detection")

    def detect(image: np.ndarray) -> list[tuple[float, float, float, float]]:
        faces = model.detect_faces(image, box_format="xyxy", min_face_size=min_face)
        return [tuple(face["box"]) for face in faces]

    return detect
