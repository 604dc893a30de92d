"""Faces framed differently from the annotator's box: seeded jittered re-cuts and the robustness check.

A user's face detector never draws the annotator's box. Two uses of the same box
arithmetic, both cut from the source photo (not from the tight crop, which lacks the
context a looser box takes in):

- training views `jitter1..N`: each face re-cut with a random shift, scale, aspect
  change and sometimes a partial cut, seeded by (seed, view, crop name), so the same
  face gives the same views on every run and in any order;
- `RECUTS`: fixed re-cuts (top 30% removed, shifted 15%, 10% tighter, 20% looser) whose
  accuracy on the validation fold is the framing-robustness table of 03_evaluate.
"""

from __future__ import annotations

import sys
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .data import face_size
from .images import load_rgb, resize_crop

BoxXYXY = tuple[int, int, int, int]

JITTER_SHIFT = 0.15
"""Largest shift of the box centre, as a fraction of its width (height)."""
JITTER_SCALE = (0.85, 1.3)
"""Range of the box size's scale factor (drawn log-uniformly)."""
JITTER_ASPECT = 0.15
"""Largest change of the aspect ratio (log-uniform, +-)."""
JITTER_PARTIAL = (0.25, 0.30)
"""Probability of a partial cut, and the largest fraction of the box height it removes (top or bottom)."""
JITTER_VERSION = 1
"""Bumped when the jitter recipe changes, to invalidate cached views."""

RECUTS: dict[str, Callable[[float, float, float, float], tuple[float, float, float, float]]] = {
    "annotated box": lambda x0, y0, x1, y1: (x0, y0, x1, y1),
    "top 30% removed": lambda x0, y0, x1, y1: (x0, y0 + 0.3 * (y1 - y0), x1, y1),
    "shifted 15% right and down": lambda x0, y0, x1, y1: _shift(x0, y0, x1, y1, 0.15, 0.15),
    "shifted 15% left and up": lambda x0, y0, x1, y1: _shift(x0, y0, x1, y1, -0.15, -0.15),
    "10% tighter": lambda x0, y0, x1, y1: _grow(x0, y0, x1, y1, -0.1),
    "20% looser": lambda x0, y0, x1, y1: _grow(x0, y0, x1, y1, 0.2),
}
"""Fixed re-cuts of a box (float pixel coordinates in, out), checked in 03_evaluate."""

FRAMING_MIN_SIZE = 24
"""Faces of at least this many pixels (min of width and height) enter the framing check."""


def _shift(x0: float, y0: float, x1: float, y1: float, fx: float, fy: float) -> tuple[float, float, float, float]:
    dx, dy = fx * (x1 - x0), fy * (y1 - y0)
    return x0 + dx, y0 + dy, x1 + dx, y1 + dy


def _grow(x0: float, y0: float, x1: float, y1: float, f: float) -> tuple[float, float, float, float]:
    dx, dy = f * (x1 - x0), f * (y1 - y0)
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def clip_to_photo(box: tuple[float, float, float, float], width: int, height: int) -> BoxXYXY:
    """Round a float box to pixels inside a `width` x `height` photo, keeping at least one pixel."""
    x0 = min(max(int(round(box[0])), 0), width - 1)
    y0 = min(max(int(round(box[1])), 0), height - 1)
    x1 = max(min(int(round(box[2])), width), x0 + 1)
    y1 = max(min(int(round(box[3])), height), y0 + 1)
    return x0, y0, x1, y1


def face_rng(seed: int, view: str, crop_path: str) -> np.random.Generator:
    """The random stream of one face in one view: independent of order and of other faces."""
    return np.random.default_rng([seed, zlib.crc32(view.encode()), zlib.crc32(crop_path.encode())])


def jitter_box(box: BoxXYXY, width: int, height: int, rng: np.random.Generator) -> BoxXYXY:
    """A randomly re-framed box: shifted, scaled, aspect-changed, sometimes cut at the top or bottom."""
    x0, y0, x1, y1 = map(float, box)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT) * w
    cy = (y0 + y1) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT) * h
    scale = np.exp(rng.uniform(*np.log(JITTER_SCALE)))
    aspect = np.exp(rng.uniform(-JITTER_ASPECT, JITTER_ASPECT))
    nw, nh = w * scale * aspect, h * scale / aspect
    x0, y0, x1, y1 = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if rng.uniform() < JITTER_PARTIAL[0]:
        cut = rng.uniform(0, JITTER_PARTIAL[1]) * nh
        y0, y1 = (y0 + cut, y1) if rng.uniform() < 0.5 else (y0, y1 - cut)
    return clip_to_photo((x0, y0, x1, y1), width, height)


def recut_box(box: BoxXYXY, kind: str, width: int, height: int) -> BoxXYXY:
    """The box re-cut as RECUTS[kind], inside the photo."""
    return clip_to_photo(RECUTS[kind](*map(float, box)), width, height)


@lru_cache(maxsize=4)
def _photo(path: str) -> np.ndarray:
    return np.asarray(load_rgb(path))


def cut_face(photo_path: str | Path, box: BoxXYXY, image_size: int) -> np.ndarray:
    """The face in `box` of a source photo, as the model sees it (uint8, image_size x image_size x 3)."""
    x0, y0, x1, y1 = box
    return resize_crop(_photo(str(photo_path))[y0:y1, x0:x1], image_size)


def manifest_boxes(manifest: pd.DataFrame) -> list[BoxXYXY]:
    """Each face's annotated box (clipped to its photo), in manifest order."""
    return list(zip(*(manifest[c].astype(int) for c in ("xmin", "ymin", "xmax", "ymax"))))


def jittered_loader(manifest: pd.DataFrame, photos_dir: str | Path, view: str, seed: int,
                    image_size: int) -> Callable[[int], np.ndarray]:
    """index -> the face at that manifest row, cut from its photo with the view's jittered box."""
    boxes = manifest_boxes(manifest)
    photos = [str(Path(photos_dir) / name) for name in manifest["source_image"]]
    sizes = list(zip(manifest["image_width"].astype(int), manifest["image_height"].astype(int)))
    keys = list(manifest["crop_path"])

    def load(i: int) -> np.ndarray:
        box = jitter_box(boxes[i], *sizes[i], face_rng(seed, view, keys[i]))
        return cut_face(photos[i], box, image_size)

    return load


def recut_faces(manifest: pd.DataFrame, photos_dir: str | Path, kind: str, image_size: int) -> np.ndarray:
    """Every face of `manifest` re-cut as RECUTS[kind] from its source photo (faces, size, size, 3)."""
    out = np.empty((len(manifest), image_size, image_size, 3), np.uint8)
    rows = zip(manifest_boxes(manifest), manifest["source_image"], manifest["image_width"], manifest["image_height"])
    for i, (box, name, w, h) in enumerate(rows):
        out[i] = cut_face(Path(photos_dir) / name, recut_box(box, kind, int(w), int(h)), image_size)
    return out


def recut_scores(predict: Callable[[np.ndarray], np.ndarray], faces: pd.DataFrame, photos_dir: str | Path, kind: str,
                 image_size: int) -> np.ndarray:
    """`predict` on every face of `faces` re-cut as RECUTS[kind]. When `predict` has an `identity`
    (maskclf.model.CachedScorer), cached (maskclf.memo) by it, the faces, the photos and this code: a rerun cuts no face."""
    from . import images
    from .memo import cached_arrays, files_fingerprint, source_fingerprint

    identity = getattr(predict, "identity", None)
    if identity is None:
        return predict(recut_faces(faces, photos_dir, kind, image_size))
    boxes = faces[["source_image", "xmin", "ymin", "xmax", "ymax", "image_width", "image_height"]].reset_index(drop=True)
    key = {"scorer": identity, "recut": kind, "image_size": image_size,
           "faces": pd.util.hash_pandas_object(boxes).sum().item(),
           "photos": files_fingerprint(Path(photos_dir) / name for name in sorted(set(faces["source_image"]))),
           "code": source_fingerprint(sys.modules[__name__], images)}
    return cached_arrays("recut-scores", key, lambda: {"p": predict(recut_faces(faces, photos_dir, kind, image_size))})["p"]


def framing_faces(manifest: pd.DataFrame, val_fold: int, min_size: int = FRAMING_MIN_SIZE) -> pd.DataFrame:
    """The validation faces that enter the framing check: fold `val_fold`, at least `min_size` px."""
    return manifest[(manifest["fold"] == val_fold) & (face_size(manifest) >= min_size)]


def framing_table(predict: Callable[[np.ndarray], np.ndarray], faces: pd.DataFrame, photos_dir: str | Path,
                  image_size: int, threshold: float = 0.5) -> pd.DataFrame:
    """Accuracy and without_mask recall per re-cut kind; `predict` maps uint8 crops to P(without_mask)."""
    from .evaluate import encode_labels

    y = encode_labels(faces["label"])
    rows = []
    for kind in RECUTS:
        p = recut_scores(predict, faces, photos_dir, kind, image_size)
        pred = (p >= threshold).astype(int)
        rows.append({"re-cut": kind, "faces": len(faces), "accuracy": float(np.mean(pred == y)),
                     "recall_without_mask": float(np.mean(pred[y == 1] == 1)) if (y == 1).any() else float("nan")})
    table = pd.DataFrame(rows).set_index("re-cut")
    table["accuracy_change"] = table["accuracy"] - table.loc["annotated box", "accuracy"]
    return table
