"""Training views cut with the default face detector's own boxes: the framing the model meets in use.

The default detector (maskclf.detect, its box adjustment included) runs once on every photo of
the extraction. Each annotated face that a detection matches, one-to-one at IoU >= MATCH_IOU,
gets a view cut from its photo with that detection's box; a face the detector misses has no
such view (its other views stay, and its detector row weighs nothing in the fit). The boxes
are cached (maskclf.memo) by the detector's settings, the photos and the annotated faces; the
view's backbone outputs are cached like the flip and jitter views, keyed by the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from .framing import cut_face, manifest_boxes

if TYPE_CHECKING:
    from .features import KnownRows

VIEW = "detector"
"""The view's name among a FeatureSet's views."""
MATCH_IOU = 0.3
"""A detection stands for an annotated face from this IoU up (the detector boxes faces its own way)."""


def detector_boxes(manifest: pd.DataFrame, photos_dir: str | Path,
                   find: Callable[[Path], Sequence[Sequence[float]]] | None = None) -> np.ndarray:
    """(faces, 4) float: the box of the detection matched to each face of `manifest` (NaN: none), cached.

    `find` (a photo's path -> its face boxes) defaults to the default detector on the photo.
    """
    from . import detect
    from .memo import cached_arrays, files_fingerprint
    from .wholephoto import match_boxes

    names = sorted(manifest["source_image"].unique(), key=lambda n: (len(n), n))
    key = {"detector": detect.detector_settings(), "match_iou": MATCH_IOU,
           "photos": files_fingerprint(Path(photos_dir) / n for n in names),
           "faces": pd.util.hash_pandas_object(manifest[["source_image", "xmin", "ymin", "xmax", "ymax"]]
                                               .reset_index(drop=True)).sum().item()}

    def compute() -> dict[str, np.ndarray]:
        detect_photo = find or _default_finder(manifest, photos_dir)
        boxes = np.full((len(manifest), 4), np.nan)
        rows = np.arange(len(manifest))
        for name in names:
            mine = rows[(manifest["source_image"] == name).to_numpy()]
            found = np.asarray(detect_photo(Path(photos_dir) / name), float).reshape(-1, 4)
            truth = np.asarray(manifest_boxes(manifest.iloc[mine]), float)
            for face, j in zip(mine, match_boxes(truth, found, MATCH_IOU)):
                if j >= 0:
                    boxes[face] = found[j]
        return {"boxes": boxes}

    return cached_arrays("detector-boxes", key, compute)["boxes"]


def _default_finder(manifest: pd.DataFrame, photos_dir: str | Path) -> Callable[[Path], np.ndarray]:
    """A photo's path -> the default detector's boxes on it, as `predict` finds them.

    They are the default candidate finder's boxes scoring >= CENTERFACE_SCORE (maskclf.detect
    makes them so, and a test checks it), so the verifier's cached candidates serve these views
    too: one CenterFace pass per photo for both.
    """
    from .candidates import photo_candidates
    from .detect import CENTERFACE_SCORE, DEFAULT_DETECTOR, detect_faces, make_detector
    from .images import load_rgb

    if DEFAULT_DETECTOR != "centerface":
        detector = make_detector()
        return lambda path: np.asarray(detect_faces(detector, np.asarray(load_rgb(path))), float)
    table = photo_candidates(manifest, photos_dir)
    table = table[table["score"] >= CENTERFACE_SCORE]
    found = {name: rows[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float) for name, rows in table.groupby("source_image")}
    return lambda path: found.get(Path(path).name, np.empty((0, 4)))


def detector_loader(manifest: pd.DataFrame, photos_dir: str | Path, boxes: np.ndarray,
                    image_size: int) -> Callable[[int], np.ndarray]:
    """index -> the face at that manifest row cut with its detector box (`detector_boxes`); a face without one
    gives its annotated box's cut, a placeholder that `available` gives no weight."""
    annotated = manifest_boxes(manifest)
    photos = [str(Path(photos_dir) / name) for name in manifest["source_image"]]

    def load(i: int) -> np.ndarray:
        box = annotated[i] if np.isnan(boxes[i]).any() else tuple(int(v) for v in boxes[i])
        return cut_face(photos[i], box, image_size)

    return load


def placeholder_rows(manifest: pd.DataFrame, boxes: np.ndarray, faces_dir: str | Path,
                     original_file: Path) -> KnownRows | None:
    """The faces the detector missed, as `features.KnownRows` of the original view's cache file `original_file`: their
    placeholder is the annotated box's cut, the very crop of that view when the extraction added no margin. None when
    it added one, or when every face was found."""
    from .data import read_extraction_info
    from .features import KnownRows, cache_names

    rows = np.flatnonzero(available(boxes) == 0)
    if not len(rows) or read_extraction_info(faces_dir).get("margin") != 0:
        return None
    return KnownRows(rows, original_file, rows, cache_names(manifest["crop_file"]))


def available(boxes: np.ndarray) -> np.ndarray:
    """(faces,) 1.0 where the face has a detector view, else 0.0."""
    return (~np.isnan(boxes).any(axis=1)).astype(np.float64)


def recipe() -> dict[str, object]:
    """What the view's cached backbone outputs depend on besides the crops: the detector and the matching."""
    from .detect import detector_settings

    return {"detector": detector_settings(), "match_iou": MATCH_IOU}
