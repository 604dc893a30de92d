"""End to end on whole photos: detection recall, false alarms and speed per detector, and with a
saved model the share of annotated faces detected AND classified correctly.

A face is detected when a detection overlaps it with IoU >= 0.5 (greedy one-to-one
matching); sizes are the short side of the annotated box. Figures are given for the
validation photos (fold 0 of the manifest) and for all photos; the computation is
`maskclf.wholephoto`, this script only prints. "photos/s" is the throughput of
predict's work on a photo (load, detect, classify every detection) with the detector
and model loaded once; without --model it counts only load and detect. Each detector runs alone
(`--no-verify`'s way); when the --model run has a face verifier (config.json's `verifier`) and
centerface is among the detectors, a row "centerface + verifier" follows: CenterFace at the run's
candidate score with the verifier's rule (predict's default), on the same photos.

`--throughput N` also times `predict_paths`, the code behind `python -m maskclf predict`, on
the first N photos (fold 0 when it is among the folds; the study's photos are ~400 px):
detector and model loaded once, the faces of PHOTOS_PER_BATCH photos classified together,
one warm-up photo untimed. It prints photos/s, the issue's throughput figure. The model
runs as predict runs it: the run's fastest exported runtime when there is one (`runtime.fastest_runtime`).

    python benchmarks/detector_recall.py --data ../shared/datasets/face-mask-detection --model models/<run>
    python benchmarks/detector_recall.py --data ../shared/datasets/face-mask-detection --folds 0 --detectors centerface
    python benchmarks/detector_recall.py --data ../shared/datasets/face-mask-detection --folds 0 --detectors centerface \
        --model models/<run> --throughput 80 --skip-recall
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf.data import read_manifest, resolve_data_dir  # noqa: E402
from maskclf.detect import DETECTORS, MIN_FACE, FaceFinder, make_face_finder  # noqa: E402
from maskclf.fsutil import write_json_atomic  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.wholephoto import (  # noqa: E402
    IOU_THRESHOLD, evaluate_photos, model_classifier, photo_stats, photos_from_manifest, recall_table,
)

VALIDATION_FOLD = 0
GROUPS = {"all": "all", "<16 px": "size_bucket", "16-31 px": "size_bucket", "32-63 px": "size_bucket",
          ">=64 px": "size_bucket", "with_mask": "label", "without_mask": "label", "mask_weared_incorrect": "original_label"}
"""Printed column -> its group in `recall_table` (without_mask is the binary label, incorrect masks included)."""
COLUMNS = list(GROUPS)


VERIFIED = "centerface + verifier"
"""The row of CenterFace with the run's face verifier."""


def face_finders(names: list[str], config: dict, min_face: int) -> dict[str, FaceFinder]:
    """Row name -> FaceFinder: each detector of `names` alone, then, when the run (`config`, {} without one) has a
    verifier and centerface is among `names`, "centerface + verifier"."""
    finders = {name: make_face_finder(config, name, min_face, verify=False) for name in names}
    if config.get("face_verifier") and "centerface" in names:
        finders[VERIFIED] = make_face_finder(config, "centerface", min_face)
    return finders


def evaluate_detector(finder: FaceFinder, photos: list, loaded=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-face and per-photo rows of one FaceFinder over `photos` (the first photo warms it up, untimed), with the
    loaded (model, config) classifying when given."""
    classify = model_classifier(*loaded, finder) if loaded is not None else None
    evaluate_photos(photos[:1], finder, classify)
    return evaluate_photos(photos, finder, classify)


def summary_row(name: str, subset: str, faces: pd.DataFrame, per_photo: pd.DataFrame, classified: bool) -> dict:
    """One printed row: recall (and detected-and-correct) per group, >= 32 px, photo statistics."""
    table = recall_table(faces, classified)
    big = faces["size_bucket"].isin(["32-63 px", ">=64 px"])
    row = {"detector": name, "photos": subset, "faces": len(faces),
           **{f"recall {k}": table["recall"].get((g, k), float("nan")) for k, g in GROUPS.items()},
           "recall >=32 px": faces.loc[big, "detected"].mean(), **photo_stats(per_photo)}
    if classified:
        row |= {f"correct {k}": table["detected_and_correct"].get((g, k), float("nan")) for k, g in GROUPS.items()}
    return row


def throughput(model, config, detector_name: str, finder: FaceFinder, paths: list[Path]) -> dict:
    """Photos per second of `predict_paths` (load, detect, classify in shared batches, verify) over `paths` with
    `finder` (`make_face_finder`, as predict makes it), after one warm-up photo."""
    from maskclf.predict import PHOTOS_PER_BATCH, predict_paths
    from maskclf.runtime import ExportedModel

    list(predict_paths(model, config, paths[:1], finder=finder))
    start = time.perf_counter()
    faces = sum(len(r.faces) for r in predict_paths(model, config, paths, finder=finder))
    seconds = time.perf_counter() - start
    return {"detector": detector_name, "runtime": model.path.name if isinstance(model, ExportedModel) else "keras", "photos": len(paths), "faces found": faces,
            "photos_per_batch": PHOTOS_PER_BATCH, "photo_ms": 1000 * seconds / len(paths),
            "throughput_photos_per_s": len(paths) / seconds}


def markdown(rows: list[dict], columns: list[str]) -> str:
    """Rows as a Markdown table of `columns` (shares to 3 places, ms to whole numbers, rates to 2)."""
    def cell(column: str, value) -> str:
        if not isinstance(value, float):
            return str(value)
        return f"{value:.0f}" if column.endswith("_ms") else f"{value:.2f}" if column.endswith("_s") else f"{value:.3f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set folder (images/ + annotations/); default as `maskclf extract`")
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR), help="extracted faces: faces.csv with folds (default: %(default)s)")
    parser.add_argument("--folds", help="comma-separated folds to run on (default: all photos; fold 0 reported apart)")
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--min-face", type=int, default=MIN_FACE, help="smallest face in px (default: %(default)s)")
    parser.add_argument("--model", help="run folder: also measure detected-and-correctly-classified")
    parser.add_argument("--throughput", type=int, metavar="N", help="also time predict on N photos (needs --model)")
    parser.add_argument("--keras", action="store_true", help="classify with the Keras model, not the run's fastest export")
    parser.add_argument("--skip-recall", action="store_true", help="only the throughput figure")
    parser.add_argument("--out", help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    photos = photos_from_manifest(read_manifest(args.faces), resolve_data_dir(args.data, download=False) / "images", folds)
    if args.throughput and not args.model:
        parser.error("--throughput needs --model")
    loaded = None
    if args.model:
        from maskclf.runtime import resolve_model

        loaded = resolve_model(args.model, fast=not args.keras)
    classified = loaded is not None
    finders = face_finders(args.detectors.split(","), loaded[1] if loaded else {}, args.min_face)
    rows = []
    for name, finder in finders.items() if not args.skip_recall else []:
        faces, per_photo = evaluate_detector(finder, photos, loaded)
        val = faces["fold"] == VALIDATION_FOLD
        val_photos = per_photo["photo"].isin(faces.loc[val, "photo"])
        if val.any():
            rows.append(summary_row(name, f"fold {VALIDATION_FOLD}", faces[val], per_photo[val_photos], classified))
        if not val.all():
            rows.append(summary_row(name, "all" if folds is None else f"folds {args.folds}", faces, per_photo, classified))
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.throughput:
        val_first = sorted(photos, key=lambda p: p.fold != VALIDATION_FOLD)[: args.throughput]
        timed = [throughput(*loaded, name, finder, [p.path for p in val_first]) for name, finder in finders.items()]
        print(f"Throughput of predict on whole photos (detector and model loaded once):\n\n"
              f"{markdown(timed, list(timed[0]))}\n")
    if args.out:
        write_json_atomic(args.out, rows + (timed if args.throughput else []))
    if not rows:
        return 0
    print(f"IoU >= {IOU_THRESHOLD}, greedy matching, {args.min_face} px minimum face; sizes by the short side\n")
    print("Detection recall, false alarms (detections matching no annotated face) per photo, speed:\n")
    print(markdown(rows, ["detector", "photos", "n_photos", "faces", *(f"recall {k}" for k in COLUMNS), "recall >=32 px",
                          "false_alarms_per_photo", "precision", "detect_ms", "photos_per_s"]))
    if classified:
        print(f"\nDetected and classified correctly (binary label) by {args.model}; classify_ms per photo:\n")
        print(markdown(rows, ["detector", "photos", *(f"correct {k}" for k in COLUMNS), "classify_ms", "photos_per_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
