"""End to end on whole photos: does the detector find each annotated face, and is it then classified right?

A photo's faces are found by a FaceFinder (maskclf.detect): the detector's candidates and,
for a run with a face verifier, its rule on each candidate's score and P(face), which the
classifier's pass gives. An annotated face counts as **detected** when a kept detection
overlaps it with IoU >= 0.5, matched one-to-one greedily by IoU (best pair first); a kept
detection matching no annotated face is a **false alarm** (some are real but unlabelled
faces). A face is **detected and correct** when its matched detection, cropped and
classified by the saved model, gets the face's binary label. `benchmarks/detector_recall.py` prints these tables; notebook
04 plots them for the validation photos.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .detect import BoxXYXY, FaceFinder, iou_matrix
from .data import size_buckets
from .images import load_rgb

IOU_THRESHOLD = 0.5
Finder = Callable[[np.ndarray], tuple[Sequence[BoxXYXY], np.ndarray]]
"""RGB photo -> candidate boxes and their detector scores (a FaceFinder)."""
Classifier = Callable[[np.ndarray, Sequence[BoxXYXY], np.ndarray], list[str | None]]
"""(RGB photo, boxes, scores) -> one binary label per box, None for a box the verifier finds no face in."""


@dataclass
class Photo:
    """One photo of the data set with its annotated faces (boxes clipped to the image)."""

    name: str
    path: Path
    fold: int
    boxes: np.ndarray
    labels: list[str]
    original_labels: list[str]


def match_boxes(truth: np.ndarray, found: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """For each truth box, the index of the found box matched to it (greedy by IoU, one-to-one), or -1."""
    matched = np.full(len(truth), -1, int)
    if len(truth) == 0 or len(found) == 0:
        return matched
    overlaps = iou_matrix(truth, found)
    used = np.zeros(len(found), bool)
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(found))
        if overlaps[i, j] < threshold:
            break
        if matched[i] < 0 and not used[j]:
            matched[i], used[j] = j, True
    return matched


def photos_from_manifest(manifest: pd.DataFrame, images_dir: str | Path, folds: Iterable[int] | None = None) -> list[Photo]:
    """The photos of a face manifest (`faces.csv`), optionally only those of `folds`, in name order."""
    if folds is not None:
        manifest = manifest[manifest["fold"].isin(list(folds))]
    photos = []
    for name, faces in manifest.sort_values(["source_image", "face_index"]).groupby("source_image", sort=False):
        photos.append(Photo(
            name=str(name), path=Path(images_dir) / str(name), fold=int(faces["fold"].iloc[0]),
            boxes=faces[["xmin", "ymin", "xmax", "ymax"]].to_numpy(int),
            labels=faces["label"].tolist(), original_labels=faces["original_label"].tolist(),
        ))
    return sorted(photos, key=lambda p: (len(p.name), p.name))


def evaluate_photos(photos: Sequence[Photo], find: Finder, classify: Classifier | None = None,
                    threshold: float = IOU_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per annotated face and one per photo, from finding (and classifying) the faces of each.

    Faces: photo, fold, face, size_bucket, label, original_label, iou, detected, predicted, correct.
    Photos: photo, faces, candidates, detections (kept), false_alarms, detect_ms, classify_ms (crop,
    classify, verify), total_ms (load + detect + classify).
    """
    face_rows, photo_rows = [], []
    for photo in photos:
        start = time.perf_counter()
        image = np.asarray(load_rgb(photo.path))
        loaded = time.perf_counter()
        boxes, scores = find(image)
        found = np.asarray(boxes, float).reshape(-1, 4)
        detected = time.perf_counter()
        predicted = classify(image, [tuple(map(int, b)) for b in found], scores) if classify else [None] * len(found)
        kept = [i for i, label in enumerate(predicted) if label is not None or classify is None]
        done = time.perf_counter()
        faces = photo_faces(photo, found[kept], [predicted[i] for i in kept], threshold)
        face_rows.append(faces)
        photo_rows.append({"photo": photo.name, "faces": len(faces), "candidates": len(found), "detections": len(kept),
                           "false_alarms": len(kept) - int(faces["detected"].sum()),
                           "detect_ms": 1000 * (detected - loaded), "classify_ms": 1000 * (done - detected),
                           "total_ms": 1000 * (done - start)})
    return pd.concat(face_rows, ignore_index=True), pd.DataFrame(photo_rows)


def photo_faces(photo: Photo, found: np.ndarray, predicted: Sequence[str | None], threshold: float = IOU_THRESHOLD) -> pd.DataFrame:
    """The annotated faces of one photo against its detections and their predicted labels."""
    matched = match_boxes(photo.boxes, found, threshold)
    overlaps = iou_matrix(photo.boxes, found)
    sides = np.minimum(photo.boxes[:, 2] - photo.boxes[:, 0], photo.boxes[:, 3] - photo.boxes[:, 1])
    pred = [predicted[j] if j >= 0 else None for j in matched]
    return pd.DataFrame({
        "photo": photo.name, "fold": photo.fold, "face": np.arange(len(photo.boxes)),
        "size_bucket": size_buckets(sides), "label": photo.labels, "original_label": photo.original_labels,
        "iou": [overlaps[i, j] if j >= 0 else 0.0 for i, j in enumerate(matched)],
        "detected": matched >= 0, "predicted": pred,
        "correct": [p is not None and p == t for p, t in zip(pred, photo.labels)],
    })


def recall_table(faces: pd.DataFrame, classified: bool = True) -> pd.DataFrame:
    """Faces, detection recall and (when `classified`) the share detected and correct: overall, by size, by class,
    and for the faces of 32 px and more (group `min_size`)."""
    groups = [("all", "all", faces)]
    for column in ("size_bucket", "label", "original_label"):
        groups += [(column, str(value), g) for value, g in faces.groupby(column, observed=True)]
    groups.append(("min_size", ">=32 px", faces[faces["size_bucket"].isin(["32-63 px", ">=64 px"])]))
    rows = []
    for column, value, g in groups:
        row = {"group": column, "value": value, "faces": len(g), "recall": g["detected"].mean()}
        if classified:
            row["detected_and_correct"] = g["correct"].mean()
        rows.append(row)
    return pd.DataFrame(rows).set_index(["group", "value"])


def finder_table(named: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Side by side, per way of finding faces (name -> its `recall_table`): the annotated faces of each group, and
    the share found and found and classified right."""
    first = next(iter(named.values()))
    columns = {("", "faces"): first["faces"]}
    for name, table in named.items():
        columns[(name, "found")] = table["recall"]
        columns[(name, "found and right")] = table["detected_and_correct"]
    return pd.DataFrame(columns)


def photo_stats(photos: pd.DataFrame) -> dict[str, float]:
    """False alarms per photo, precision of the detections, ms per photo and photos per second."""
    detections = photos["detections"].sum()
    return {
        "n_photos": len(photos),
        "false_alarms_per_photo": photos["false_alarms"].mean(),
        "precision": 1 - photos["false_alarms"].sum() / detections if detections else float("nan"),
        "detect_ms": photos["detect_ms"].mean(),
        "classify_ms": photos["classify_ms"].mean(),
        "photos_per_s": 1000 / photos["total_ms"].mean(),
    }


def model_classifier(model: Any, config: dict[str, Any], finder: FaceFinder, threshold: float = 0.5) -> Classifier:
    """A Classifier from a loaded run folder's model: the binary label `predict` gives each box at `threshold`, and
    None for a box that `finder`'s verifier rule drops."""
    from .answers import binary_labels, face_probabilities, p_without_mask
    from .images import crop_faces
    from .model import predict_probabilities

    def classify(image: np.ndarray, boxes: Sequence[BoxXYXY], scores: np.ndarray) -> list[str | None]:
        probs = predict_probabilities(model, crop_faces(image, boxes, config["image_size"]))
        keep = finder.keep(scores, face_probabilities(probs, config))
        return [label if k else None for label, k in zip(binary_labels(p_without_mask(probs, config), threshold), keep)]

    return classify


def whole_photo_figures(model: Any, config: dict[str, Any], manifest: pd.DataFrame, images_dir: str | Path,
                        folds: Iterable[int] = (0,), detector: str | None = None,
                        verify: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """Recall table and photo statistics of the default (or named) detector, with the run's verifier when it has
    one and `verify`, and a loaded model on the photos of `folds`."""
    from .detect import DEFAULT_DETECTOR, make_face_finder

    photos = photos_from_manifest(manifest, images_dir, folds)
    finder = make_face_finder(config, detector or DEFAULT_DETECTOR, verify=verify)
    faces, per_photo = evaluate_photos(photos, finder, model_classifier(model, config, finder))
    return recall_table(faces), photo_stats(per_photo)


def cached_whole_photo_figures(model: Any, config: dict[str, Any], manifest: pd.DataFrame, images_dir: str | Path,
                               folds: Iterable[int] = (0,), detector: str | None = None,
                               verify: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """`whole_photo_figures`, from the result cache (maskclf.memo) when nothing it depends on changed.

    The key: the model and its verifier's rule, the detector and the code of detection,
    classification and matching, the photos' files and the annotated faces of `folds`. Times
    in the statistics are those of the run that computed them.
    """
    from . import answers, detect, images, model as model_module
    from .detect import DEFAULT_DETECTOR
    from .memo import cached_json, files_fingerprint, model_fingerprint, source_fingerprint

    folds = sorted(folds)
    chosen = manifest[manifest["fold"].isin(folds)]
    photos = photos_from_manifest(chosen, images_dir)
    key = {"model": model_fingerprint(model), "detector": detector or DEFAULT_DETECTOR,
           "verifier": config.get("face_verifier") if verify else None,
           "code": source_fingerprint(answers, detect, images, model_module, sys.modules[__name__]),
           "photos": files_fingerprint(p.path for p in photos),
           "faces": pd.util.hash_pandas_object(chosen.reset_index(drop=True)).sum().item(), "folds": folds}

    def compute() -> dict[str, Any]:
        table, stats = whole_photo_figures(model, config, chosen, images_dir, folds, detector, verify)
        return {"rows": table.reset_index().to_dict("records"), "stats": stats}

    stored = cached_json("whole-photos", key, compute)
    return pd.DataFrame(stored["rows"]).set_index(["group", "value"]), stored["stats"]
