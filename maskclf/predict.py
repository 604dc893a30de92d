"""Classify faces: ready-made crops, or whole photos whose faces a detector (or VOC) boxes.

The pure functions here (`crop_faces`, `classify_crops`, `classify_photo`, `annotate`)
are what `video` and `demo` reuse (the model comes from maskclf.runtime); `predict_paths` runs them
over files and folders, and the CLI only wires options to it.

One JSON line per face:
`{"type": "face", "path", "face", "box": [xmin, ymin, xmax, ymax], "label", "p_without_mask", "probabilities": {class: p}}`
(the study's binary answer: a mask worn incorrectly counts as `without_mask`), plus, for a model trained
on the three annotated classes, `"three_way"` (`with_mask`, `mask_incorrect` or `without_mask`) and
`"three_way_probabilities"`; `"annotation"` (the VOC class) when boxes come from `--boxes-from`, and
`"small_face": true` with a `"warning"` when the face is under data.TINY_FACE px on a side; on whole photos,
`"detector_score"` (the detector's score, when it gives one) and, for a run with a face verifier, `"p_face"`
(only the candidates its rule keeps are faces: `detect.FaceFinder`); then, for a whole
photo (not for `--crops`), one summary line
`{"type": "photo", "path", "faces", "with_mask", "without_mask", "everyone_masked"}` (binary counts;
`everyone_masked` is null when no face was found), plus, for a three-class model, `"mask_incorrect"` and
`"three_way"`: the count of each three-way label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from . import CLASS_NAMES, POSITIVE, answers
from .data import TINY_FACE, DataError, annotation_boxes, is_dataset_dir, parse_voc
from .detect import BoxXYXY, FaceFinder, make_face_finder
from .fsutil import OutputError, atomic_path, output_file_problem, reads_back, write_text_atomic
from .images import READ_FORMATS, ImageError, crop_faces, load_rgb, open_image, resize_crop
from .model import predict_probabilities
from .native_logs import show_progress
from .runtime import resolve_model

COLOURS = {"with_mask": (0, 190, 0), "mask_incorrect": (235, 130, 0), "without_mask": (230, 20, 20)}
"""Box colour (RGB) per answer (`face_answer`)."""
SHORT_LABELS = {"with_mask": "mask", "mask_incorrect": "incorrect", "without_mask": "no mask"}
"""Each answer on a drawn box."""
LABEL_WORDS = {"with_mask": "with mask", "mask_incorrect": "worn incorrectly", "without_mask": "without mask"}
"""Each answer in words, as the demo shows it."""
DRAW_MIN_SIDE = 800
"""`annotate` upscales smaller images to this longer side (the study's photos are ~400 px)."""

LIKELY_CROP_SIDE = 256
"""An image with no face found whose sides are all at most this many pixels is probably a face crop
(the data set's photos are about 400 px wide, its faces mostly under 64 px)."""
PHOTOS_PER_BATCH = 8
"""Whole photos detected before their faces are classified together (~5 faces a photo in the study's set)."""

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in READ_FORMATS)
"""File name endings taken from folders (a file named explicitly is always tried)."""


# --------------------------------------------------------------------------- pure functions


def to_batch(images: Iterable[np.ndarray], size: int) -> np.ndarray:
    """RGB crops of any size as one float32 batch (N, size, size, 3) the model takes."""
    arrays = [np.asarray(img) for img in images]
    if not arrays:
        return np.zeros((0, size, size, 3), np.float32)
    return np.stack([a if a.shape[:2] == (size, size) else resize_crop(a, size) for a in arrays]).astype(np.float32)


def label_probabilities(probs: np.ndarray, config: dict[str, Any], threshold: float = 0.5) -> list[dict[str, Any]]:
    """One result per row of softmax outputs (over the run's `class_names`): the binary label (P(without_mask) >=
    threshold) with both binary probabilities, and, for a model trained on the three annotated classes, the
    three-way label (`three_way`) with its probabilities (maskclf.answers)."""
    binary = np.round(answers.binary_probabilities(probs, config), answers.SHOWN_DECIMALS)
    p_face = answers.face_probabilities(probs, config)
    three = answers.three_way_probabilities(probs, config)
    three = None if three is None else np.round(three, answers.SHOWN_DECIMALS)
    labels = answers.binary_labels(binary[:, 1], threshold)
    names = answers.three_way_labels(three, binary[:, 1], threshold) if three is not None else []
    results = []
    for i, row in enumerate(binary):
        result = {"label": labels[i], "p_without_mask": float(row[1]),
                  "probabilities": {name: float(p) for name, p in zip(CLASS_NAMES, row)}}
        if three is not None:
            result["three_way"] = names[i]
            result["three_way_probabilities"] = {name: float(p) for name, p in zip(answers.THREE_WAY, three[i])}
        if p_face is not None:
            result["p_face"] = float(np.round(p_face[i], answers.SHOWN_DECIMALS))
        results.append(result)
    return results


def classify_crops(
    model: Any, config: dict[str, Any], images: Iterable[np.ndarray], threshold: float = 0.5, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Classify face crops (RGB arrays of any size): a label and probabilities for each."""
    batch = to_batch(images, config["image_size"])
    return label_probabilities(predict_probabilities(model, batch, batch_size), config, threshold)


def classify_photo(
    model: Any,
    config: dict[str, Any],
    image: np.ndarray,
    boxes: Sequence[BoxXYXY],
    threshold: float = 0.5,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Classify the faces `boxes` of an RGB photo: each result also holds its `box`."""
    return classify_photos(model, config, [(image, boxes)], threshold, batch_size)[0]


def classify_photos(
    model: Any,
    config: dict[str, Any],
    photos: Sequence[tuple[np.ndarray, Sequence[BoxXYXY]]],
    threshold: float = 0.5,
    batch_size: int = 32,
) -> list[list[dict[str, Any]]]:
    """Classify the faces of several photos, (RGB photo, boxes) each, in shared batches of up to
    `batch_size` crops (the model's time per face falls with the batch): `classify_photo`'s results per photo."""
    crops = [crop_faces(image, boxes, config["image_size"]) for image, boxes in photos]
    return _classify_cropped(model, config, crops, [boxes for _, boxes in photos], threshold, batch_size)


def find_and_classify(
    model: Any,
    config: dict[str, Any],
    finder: FaceFinder,
    images: Sequence[np.ndarray],
    threshold: float = 0.5,
    batch_size: int = 32,
) -> list[list[dict[str, Any]]]:
    """The faces of RGB photos: `finder`'s candidates of each, classified in shared batches, those its verifier
    rule drops left out; each face also holds its `detector_score` (when the detector gives one)."""
    found = [finder(image) for image in images]
    crops = [crop_faces(image, boxes, config["image_size"]) for image, (boxes, _) in zip(images, found)]
    return verified_faces(finder, _classify_cropped(model, config, crops, [b for b, _ in found], threshold, batch_size),
                          [scores for _, scores in found])


def verified_faces(finder: FaceFinder, photos: Sequence[Sequence[dict[str, Any]]],
                   scores: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
    """The classified candidates of each photo with their detector score, without those `finder` drops."""
    kept = []
    for faces, photo_scores in zip(photos, scores):
        p_face = [face["p_face"] for face in faces] if faces and "p_face" in faces[0] else None
        keep = finder.keep(np.asarray(photo_scores), p_face)
        kept.append([face if np.isnan(s) else {**face, "detector_score": round(float(s), answers.SHOWN_DECIMALS)}
                     for face, s, k in zip(faces, photo_scores, keep) if k])
    return kept


def _classify_cropped(model, config, crops, boxes, threshold, batch_size) -> list[list[dict[str, Any]]]:
    """`classify_photos` on the photos' `crop_faces` arrays (a list of (n_i, S, S, 3)) and boxes."""
    size = config["image_size"]
    batch = np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.float32)
    results = iter(label_probabilities(predict_probabilities(model, batch, batch_size), config, threshold))
    return [[flag_small({"box": list(box), **next(results)}) for box in photo_boxes] for photo_boxes in boxes]


def flag_small(face: dict[str, Any]) -> dict[str, Any]:
    """`face` with `"small_face": True` and a `"warning"` when its box is under TINY_FACE px on a side."""
    x0, y0, x1, y1 = face["box"]
    if min(x1 - x0, y1 - y0) >= TINY_FACE:
        return face
    return {**face, "small_face": True,
            "warning": f"face of {x1 - x0}x{y1 - y0} px, under {TINY_FACE} px: too small for a reliable label"}


def face_answer(face: dict[str, Any]) -> str:
    """What a face is shown as: its three-way label when the model gives one, else its binary label."""
    return face.get("three_way", face["label"])


def face_probability(face: dict[str, Any]) -> float:
    """The probability of `face_answer`."""
    if "three_way" in face:
        return face["three_way_probabilities"][face["three_way"]]
    return face["probabilities"][face["label"]]


def counted(n: int, noun: str) -> str:
    """"1 face", "2 faces": `n` and the noun, plural unless `n` is 1."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def photo_summary(faces: Sequence[dict[str, Any]], three_way: bool = False) -> dict[str, Any]:
    """Faces found, how many with and without a mask (binary: a mask worn incorrectly counts as without), and
    whether everyone wears one (None: no face); with `three_way` (a model of the three annotated classes), also
    how many wear one incorrectly (`mask_incorrect`) and the count of each three-way label (`three_way`)."""
    without = sum(face["label"] == POSITIVE for face in faces)
    summary = {"faces": len(faces), "with_mask": len(faces) - without, "without_mask": without,
               "everyone_masked": without == 0 if faces else None}
    if three_way:
        counts = {name: sum(face["three_way"] == name for face in faces) for name in answers.THREE_WAY}
        summary.update(mask_incorrect=counts["mask_incorrect"], three_way=counts)
    return summary


def summary_caption(summary: dict[str, Any]) -> str:
    """The photo summary as one line, e.g. "4 faces: 2 with mask, 1 worn incorrectly, 1 without"
    ("3 faces: 2 with mask, 1 without" without three-way counts)."""
    if summary["faces"] == 0:
        return "no face found"
    if "three_way" in summary:
        counts = summary["three_way"]
        parts = [f"{counts['with_mask']} with mask", f"{counts['mask_incorrect']} worn incorrectly",
                 f"{counts['without_mask']} without"]
    else:
        parts = [f"{summary['with_mask']} with mask", f"{summary['without_mask']} without"]
    return f"{counted(summary['faces'], 'face')}: {', '.join(parts)}"


def annotate(image: np.ndarray, faces: Sequence[dict[str, Any]], min_side: int = DRAW_MIN_SIDE,
             caption: str | None = None, max_side: int | None = None) -> np.ndarray:
    """A copy of an RGB image with each face's box and "answer NN%" in its answer's colour (`face_answer`).

    An image whose longer side is under `min_side` is upscaled first, so labels stay legible,
    and one whose longer side is over `max_side` (when given) is shrunk to it.
    A `caption` is written on a white strip added below the image.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    longest = max(image.shape[:2])
    scale = max(1.0, min_side / longest) if max_side is None or longest <= max_side else max_side / longest
    interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
    out = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation) if scale != 1 else image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 500))
    font_scale = max(height, width) / 1600
    for face in faces:
        x0, y0, x1, y1 = (round(v * scale) for v in face["box"])
        colour = COLOURS[face_answer(face)]
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        text = f"{SHORT_LABELS[face_answer(face)]} {face_probability(face):.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx = max(0, min(x0, width - tw - 2))
        ty = y0 - base - 1 if y0 - th - base - 1 >= 0 else min(y1 + th + 1, height - base)
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw + 1, ty + base), colour, cv2.FILLED)
        cv2.putText(out, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out if caption is None else add_caption(out, caption)


def add_caption(image: np.ndarray, caption: str) -> np.ndarray:
    """The RGB image with a white strip below it holding `caption` in black."""
    width = image.shape[1]
    font_scale = max(0.4, width / 1000)
    thickness = max(1, round(font_scale * 1.5))
    (_, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    strip = np.full((th + base + 2 * round(8 * font_scale), width, 3), 255, np.uint8)
    cv2.putText(strip, caption, (round(8 * font_scale), round(8 * font_scale) + th), cv2.FONT_HERSHEY_SIMPLEX,
                font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([image, strip])


def load_image(path: str | Path) -> np.ndarray:
    """An image file as an RGB uint8 array (any mode converted); ImageError naming the file."""
    return np.asarray(load_rgb(path))


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as an image file atomically (format from the suffix)."""
    with atomic_path(path, check=reads_back("image")) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return Path(path)


def voc_boxes(image_path: Path, boxes_from: Path, width: int, height: int) -> list[tuple[str, BoxXYXY]]:
    """Ground-truth (class, box) of a photo from a VOC file, a folder of them, or a data set folder."""
    if boxes_from.is_file():
        xml = boxes_from
    else:
        folder = boxes_from / "annotations" if is_dataset_dir(boxes_from) else boxes_from
        xml = folder / f"{image_path.stem}.xml"
    if not xml.is_file():
        raise DataError(f"{image_path}: no annotation file {xml}")
    return annotation_boxes(parse_voc(xml), width, height)


# --------------------------------------------------------------------------- files and folders


@dataclass
class FileResult:
    """The faces found in one input file, or why it failed."""

    path: Path
    faces: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    summary: dict[str, Any] | None = None
    """`photo_summary` of the faces, for a whole photo (None for a crop)."""


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[FileResult]]:
    """Input files (folders searched recursively for images, sorted) and the paths that do not exist."""
    files: list[Path] = []
    missing: list[FileResult] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append(FileResult(path, error=f"{path}: no such file or folder"))
    return files, missing


def draw_targets(inputs: Sequence[str | Path], files: Sequence[Path], draw_dir: Path) -> dict[Path, Path]:
    """Where `--draw` writes each file's annotated copy: its path relative to the inputs' common folder,
    mirrored under `draw_dir`, named `drawn_names`' way (`photos/a/x.jpg` -> `DIR/a/x.drawn.png`). ValueError
    naming the problem when `draw_dir` is (or is inside) an input folder, or a copy would replace an input file."""
    draw = draw_dir.resolve()
    for folder in (Path(p).resolve() for p in inputs if Path(p).is_dir()):
        if draw == folder or folder in draw.parents:
            raise ValueError(f"--draw {draw_dir}: is inside the input folder {folder}; "
                             "annotated copies would mix with the photos or replace them. Choose another folder")
    roots = [Path(p).absolute() if Path(p).is_dir() else Path(p).absolute().parent for p in inputs if Path(p).exists()]
    base = Path(os.path.commonpath(roots)) if roots else Path.cwd()
    names = drawn_names([path.absolute().relative_to(base) for path in files])
    targets = {path: draw_dir / name for path, name in zip(files, names)}
    inputs_resolved = {path.resolve(): path for path in files}
    for path, target in targets.items():
        if target.resolve() in inputs_resolved:
            raise ValueError(f"--draw {draw_dir}: the annotated copy of {path} would replace the input "
                             f"{inputs_resolved[target.resolve()]}. Choose another folder")
        if problem := output_file_problem(target):
            raise ValueError(f"--draw {draw_dir}: {problem}")
    return targets


def drawn_names(relatives: Sequence[Path]) -> list[Path]:
    """The annotated copy's name of each (distinct) relative path: its stem + ".drawn.png" (`x.jpg` ->
    `x.drawn.png`), or its whole name + ".drawn.png" (`x.jpg.drawn.png`) where stems alone would name two the same."""
    whole: set[Path] = set()
    while True:
        names = [p.with_name(f"{p.name if p in whole else p.stem}.drawn.png") for p in relatives]
        seen = Counter(names)
        clashing = {p for p, name in zip(relatives, names) if seen[name] > 1} - whole
        if not clashing:
            return names
        whole |= clashing  # whole names never clash with each other, so this ends


def check_out(out: Path, files: Sequence[Path]) -> None:
    """ValueError naming `--jsonl` when no file can be written there, or it is one of the input files."""
    if problem := output_file_problem(out):
        raise ValueError(f"--jsonl {problem}")
    if out.resolve() in {path.resolve() for path in files}:
        raise ValueError(f"--jsonl {out}: is one of the input files; writing the results there would replace it")


def predict_paths(
    model: Any,
    config: dict[str, Any],
    files: Sequence[Path],
    *,
    crops: bool = False,
    finder: FaceFinder | None = None,
    boxes_from: Path | None = None,
    threshold: float = 0.5,
    batch_size: int = 32,
    draw_to: dict[Path, Path] | None = None,
    progress: bool = False,
) -> Iterator[FileResult]:
    """Classify every file in order, one FileResult each; a bad file is reported, not raised.

    `crops`: each file is one face. Otherwise each file is a photo whose faces come from
    `boxes_from` (VOC) when given, else from `finder` (`find_and_classify`). `draw_to` maps
    files to where their annotated copies go (`draw_targets`).
    """
    if not crops and boxes_from is None and finder is None:
        raise ValueError("photos need a face finder or boxes_from")
    chunk = batch_size if crops else PHOTOS_PER_BATCH
    bar = tqdm(total=len(files), unit="crop" if crops else "photo", disable=not show_progress(progress), file=sys.stderr)
    try:
        for start in range(0, len(files), chunk):
            group = files[start : start + chunk]
            yield from (_crops(model, config, group, threshold, batch_size, draw_to) if crops
                        else _photos(model, config, group, finder, boxes_from, threshold, batch_size, draw_to))
            if start + chunk < len(files):
                bar.update(len(group))
            else:
                bar.n = len(files)  # not shown: close() shows the last line, once
    finally:
        bar.close()


def _crops(model, config, files, threshold, batch_size, draw_to) -> list[FileResult]:
    results, images = [], []
    for path in files:
        try:
            images.append(load_image(path))
            results.append(FileResult(path))
        except ImageError as exc:
            results.append(FileResult(path, error=str(exc)))
    labelled = iter(classify_crops(model, config, images, threshold, batch_size))
    good = (r for r in results if r.error is None)
    for result, image in zip(good, images):
        height, width = image.shape[:2]
        result.faces = [flag_small({"box": [0, 0, width, height], **next(labelled)})]
        if draw_to is not None:
            save_image(annotate(image, result.faces), draw_to[result.path])
    return results


def _photos(model, config, files, finder, boxes_from, threshold, batch_size, draw_to) -> list[FileResult]:
    """Find (or read) and crop the faces of each photo, then classify all their crops in shared batches and keep
    those the finder's verifier keeps (every VOC box is kept).

    Only the crops are kept, and the photos themselves only when drawing, so a group of large photos costs little memory.
    """
    results, crops, boxes, scores, names, images = [], [], [], [], [], []
    for path in files:
        try:
            image = load_image(path)
            if boxes_from is not None:
                truth = voc_boxes(path, boxes_from, image.shape[1], image.shape[0])
                found, names_i = [box for _, box in truth], [name for name, _ in truth]
                scores_i = np.full(len(found), np.nan)
            else:
                (found, scores_i), names_i = finder(image), None
        except (ImageError, DataError) as exc:
            results.append(FileResult(path, error=str(exc)))
            continue
        results.append(FileResult(path))
        crops.append(crop_faces(image, found, config["image_size"]))
        boxes.append(found)
        scores.append(scores_i)
        names.append(names_i)
        images.append(image if draw_to is not None else None)
    classified = _classify_cropped(model, config, crops, boxes, threshold, batch_size)
    if boxes_from is None:
        classified = verified_faces(finder, classified, scores)
    for result, faces, names_i, image in zip((r for r in results if r.error is None), classified, names, images):
        if names_i is not None:
            faces = [{**face, "annotation": name} for face, name in zip(faces, names_i)]
        result.faces, result.summary = faces, photo_summary(faces, answers.has_three_way(config))
        if image is not None:
            save_image(annotate(image, faces, caption=summary_caption(result.summary)), draw_to[result.path])
    return results


def json_lines(result: FileResult) -> list[str]:
    """The JSON lines of one file: one per face, then its photo summary (whole photos only)."""
    path = str(result.path)
    lines = [json.dumps({"type": "face", "path": path, "face": i, **face}) for i, face in enumerate(result.faces)]
    if result.summary is not None:
        lines.append(json.dumps({"type": "photo", "path": path, **result.summary}))
    return lines


# --------------------------------------------------------------------------- CLI


def no_face_message(paths: Sequence[Path], detected: bool = True) -> str:
    """What to tell the user about images with no face, and the likely reason when a detector looked (`detected`).

    When every one of them is small (LIKELY_CROP_SIDE), they are most likely face crops: a face
    that fills the image is not what a detector looks for in a photo.
    """
    message = f"no face found in {counted(len(paths), 'file')}: " + ", ".join(map(str, paths))
    if not detected:
        return message
    sides = []
    for path in paths:
        try:
            with open_image(path) as image:
                sides.append(max(image.size))
        except ImageError:
            return message
    if sides and max(sides) <= LIKELY_CROP_SIDE:
        message += (f"\nThese look like face crops: small images (at most {max(sides)} px) in which the detector, "
                    "which looks for faces inside photos, finds none. If they are crops, pass --crops.")
    return message


def run(args: argparse.Namespace) -> int:
    """Run `predict`: 0 if every file was read, 1 if some failed but faces were classified, 2 if nothing could start or
    no face was classified (every file failed, or none had a face)."""
    from .runs import RunFolderError

    if args.boxes_from is not None and not args.boxes_from.exists():
        print(f"error: {args.boxes_from}: no such annotation file or folder", file=sys.stderr)
        return 2
    files, failed = expand_paths(args.paths)
    if failed:  # a mistyped path is said at once, not after the model has loaded
        print("error: " + "; ".join(str(result.error) for result in failed), file=sys.stderr)
        return 2
    try:
        if args.out is not None:
            check_out(args.out, files)
        draw_to = draw_targets(args.paths, files, args.draw) if args.draw is not None else None
        model, config = resolve_model(args.model, fast=True)
        finder = None if args.crops or args.boxes_from else make_face_finder(config, args.detector, args.min_face,
                                                                              verify=not args.no_verify)
    except (RunFolderError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines: list[str] = []
    n_faces = 0
    no_face: list[Path] = []
    results = predict_paths(
        model, config, files, crops=args.crops, finder=finder, boxes_from=args.boxes_from,
        threshold=args.threshold, batch_size=args.batch_size, draw_to=draw_to,
        progress=any(Path(p).is_dir() for p in args.paths),
    )
    n_read = n_small = 0
    try:
        for result in results:
            if result.error:
                failed.append(result)
                continue
            n_read += 1
            n_faces += len(result.faces)
            n_small += sum(face.get("small_face", False) for face in result.faces)
            if not result.faces:
                no_face.append(result.path)
            for line in json_lines(result):
                lines.append(line)
                if args.out is None:
                    print(line, flush=True)
        if args.out is not None:
            write_text_atomic(args.out, "".join(line + "\n" for line in lines))
    except OutputError as exc:  # a full disk under --jsonl or --draw
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{counted(n_faces, 'face')} in {counted(n_read, 'file')}" + (f", written to {args.out}" if args.out else ""),
          file=sys.stderr)
    if n_small:
        print(f"warning: {counted(n_small, 'face')} under {TINY_FACE} px (\"small_face\": true): "
              f"{'its label is' if n_small == 1 else 'their labels are'} unreliable", file=sys.stderr)
    if no_face:
        print(no_face_message(no_face, detected=finder is not None), file=sys.stderr)
    if failed:
        print(f"{counted(len(failed), 'file')} failed:", file=sys.stderr)
        for result in failed:
            print(f"  {result.error}", file=sys.stderr)
    if not n_faces:
        return 2
    return 1 if failed else 0
