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
Labeller = Callable[[np.ndarray, Sequence[BoxXYXY]], tuple[list[str], np.ndarray | None]]
"""(RGB photo, boxes) -> every box's binary label and its P(face) (None from a run without a verifier)."""


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


@dataclass
class Scan:
    """One photo's candidates, found and classified once: every way of keeping them is scored from it."""

    found: np.ndarray  # (candidates, 4) boxes in the photo's pixels
    scores: np.ndarray  # their detector scores
    predicted: list[str | None]  # each one's binary label; None: dropped by the classifier
    classified: bool  # whether the candidates were classified at all
    p_face: np.ndarray | None  # each one's P(face), from a `labeller` and a run with a verifier
    times_ms: tuple[float, float, float]  # detect, classify, and load + detect + classify


Keep = Callable[[Scan], np.ndarray]
"""A scan -> which of its candidates are kept as detections."""


def scan_photos(photos: Sequence[Photo], find: Finder, classify: Classifier | None = None,
                labeller: Labeller | None = None) -> list[Scan]:
    """Each photo loaded, its candidates found, then classified by `classify`, or by `labeller`, which keeps every
    candidate's label and P(face) for the ways of keeping them to choose from."""
    scans = []
    for photo in photos:
        start = time.perf_counter()
        image = np.asarray(load_rgb(photo.path))
        loaded = time.perf_counter()
        boxes, scores = find(image)
        found = np.asarray(boxes, float).reshape(-1, 4)
        detected = time.perf_counter()
        chosen = [tuple(map(int, b)) for b in found]
        face = None
        if labeller is not None:
            predicted, face = labeller(image, chosen)
        else:
            predicted = classify(image, chosen, scores) if classify else [None] * len(found)
        done = time.perf_counter()
        times = (1000 * (detected - loaded), 1000 * (done - detected), 1000 * (done - start))
        scans.append(Scan(found, np.asarray(scores), list(predicted), bool(classify or labeller), face, times))
    return scans


def score_scans(photos: Sequence[Photo], scans: Sequence[Scan], keep: Keep | None = None,
                threshold: float = IOU_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per annotated face and one per photo (`evaluate_photos`) of the candidates that `keep` keeps; by
    default those with a label, or every one where none was classified."""
    face_rows, photo_rows = [], []
    for photo, scan in zip(photos, scans):
        default = [label is not None or not scan.classified for label in scan.predicted]
        kept = np.flatnonzero(keep(scan) if keep else default)
        faces = photo_faces(photo, scan.found[kept], [scan.predicted[i] for i in kept], threshold)
        face_rows.append(faces)
        detect_ms, classify_ms, total_ms = scan.times_ms
        photo_rows.append({"photo": photo.name, "faces": len(faces), "candidates": len(scan.found),
                           "detections": len(kept), "false_alarms": len(kept) - int(faces["detected"].sum()),
                           "detect_ms": detect_ms, "classify_ms": classify_ms, "total_ms": total_ms})
    return pd.concat(face_rows, ignore_index=True), pd.DataFrame(photo_rows)


def evaluate_photos(photos: Sequence[Photo], find: Finder, classify: Classifier | None = None,
                    threshold: float = IOU_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per annotated face and one per photo, from finding (and classifying) the faces of each.

    Faces: photo, fold, face, size_bucket, label, original_label, iou, detected, predicted, correct.
    Photos: photo, faces, candidates, detections (kept), false_alarms, detect_ms, classify_ms (crop,
    classify, verify), total_ms (load + detect + classify).
    """
    return score_scans(photos, scan_photos(photos, find, classify), threshold=threshold)


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


def model_labeller(model: Any, config: dict[str, Any], threshold: float = 0.5) -> Labeller:
    """A Labeller from a loaded run folder's model: the binary label `predict` gives each box at `threshold`, and
    its P(face)."""
    from .answers import binary_labels, face_probabilities, p_without_mask
    from .images import crop_faces
    from .model import predict_probabilities

    def label(image: np.ndarray, boxes: Sequence[BoxXYXY]) -> tuple[list[str], np.ndarray | None]:
        probs = predict_probabilities(model, crop_faces(image, boxes, config["image_size"]))
        return binary_labels(p_without_mask(probs, config), threshold), face_probabilities(probs, config)

    return label


def model_classifier(model: Any, config: dict[str, Any], finder: FaceFinder, threshold: float = 0.5) -> Classifier:
    """A Classifier from a loaded run folder's model: the binary label `predict` gives each box at `threshold`, and
    None for a box that `finder`'s verifier rule drops."""
    label = model_labeller(model, config, threshold)

    def classify(image: np.ndarray, boxes: Sequence[BoxXYXY], scores: np.ndarray) -> list[str | None]:
        labels, p_face = label(image, boxes)
        return [name if k else None for name, k in zip(labels, finder.keep(scores, p_face))]

    return classify


ALONE, VERIFIED = "detector alone", "with the verifier"
"""The ways of finding faces that `finder_figures` scores."""


def finder_figures(model: Any, config: dict[str, Any], manifest: pd.DataFrame, images_dir: str | Path,
                   folds: Iterable[int] = (0,)) -> dict[str, tuple[pd.DataFrame, dict[str, float]]]:
    """Recall table and photo statistics, on the photos of `folds`, of the default detector alone (ALONE) and, for a
    run with a verifier, with it (VERIFIED), the loaded model classifying.

    One pass serves both: the run's candidates are found and classified once, and the
    detector's own boxes are those scoring at least CENTERFACE_SCORE among them
    (maskclf.detect.make_candidate_finder; without a verifier, every candidate), so each
    photo's statistics are its one pass's times.
    """
    from .detect import CENTERFACE_SCORE, make_face_finder

    photos = photos_from_manifest(manifest, images_dir, folds)
    finder = make_face_finder(config)
    scans = scan_photos(photos, finder, labeller=model_labeller(model, config))
    ways: dict[str, Keep] = {ALONE: lambda scan: scan.scores >= CENTERFACE_SCORE}
    if finder.rule is not None:
        ways[VERIFIED] = lambda scan: finder.keep(scan.scores, scan.p_face)
    figures = {}
    for name, keep in ways.items():
        faces, per_photo = score_scans(photos, scans, keep)
        figures[name] = recall_table(faces), photo_stats(per_photo)
    return figures


def cached_finder_figures(model: Any, config: dict[str, Any], manifest: pd.DataFrame, images_dir: str | Path,
                          folds: Iterable[int] = (0,)) -> dict[str, tuple[pd.DataFrame, dict[str, float]]]:
    """`finder_figures`, from the result cache (maskclf.memo) when nothing it depends on changed.

    The key: the model and its verifier's rule, the code of detection, classification and
    matching, the photos' files and the annotated faces of `folds`. Times in the statistics
    are those of the run that computed them.
    """
    from . import answers, detect, images, model as model_module
    from .memo import cached_json, files_fingerprint, model_fingerprint, source_fingerprint

    folds = sorted(folds)
    chosen = manifest[manifest["fold"].isin(folds)]
    photos = photos_from_manifest(chosen, images_dir)
    key = {"model": model_fingerprint(model), "detector": detect.DEFAULT_DETECTOR,
           "verifier": config.get("face_verifier"),
           "code": source_fingerprint(answers, detect, images, model_module, sys.modules[__name__]),
           "photos": files_fingerprint(p.path for p in photos),
           "faces": pd.util.hash_pandas_object(chosen.reset_index(drop=True)).sum().item(), "folds": folds}

    def compute() -> dict[str, Any]:
        figures = finder_figures(model, config, chosen, images_dir, folds)
        return {name: {"rows": table.reset_index().to_dict("records"), "stats": stats}
                for name, (table, stats) in figures.items()}

    stored = cached_json("finder-figures", key, compute)
    return {name: (pd.DataFrame(entry["rows"]).set_index(["group", "value"]), entry["stats"])
            for name, entry in stored.items()}
