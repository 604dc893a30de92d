"""Compare the face detectors on the study's photos: recall, boxes per photo, speed.

A ground-truth face counts as found when a detection overlaps it with IoU >= 0.5
(one-to-one, greedy by IoU). Recall is also broken down by face size (longer side of
the annotated box) and by annotated class. "matched" is the share of detections that
match an annotated face: a lower bound on precision, as some small faces are unlabelled.

    python benchmarks/detector_recall.py --data ../shared/datasets/face-mask-detection --every 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf.data import check_box, parse_voc, resolve_data_dir  # noqa: E402
from maskclf.detect import DETECTORS, MIN_FACE, Box, iou, make_detector  # noqa: E402
from maskclf.fsutil import write_json_atomic  # noqa: E402
from maskclf.images import load_rgb  # noqa: E402

SIZE_BUCKETS = ((0, 16, "<16px"), (16, 32, "16-31px"), (32, 64, "32-63px"), (64, 10**9, ">=64px"))
IOU_THRESHOLD = 0.5


def match(truth: list[Box], found: list[Box], threshold: float = IOU_THRESHOLD) -> set[int]:
    """Indices of `truth` boxes matched one-to-one by `found` boxes with IoU >= threshold."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    hit_truth: set[int] = set()
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i not in hit_truth and j not in used:
            hit_truth.add(i)
            used.add(j)
    return hit_truth


def size_bucket(box: Box) -> str:
    """Name of the size bucket of a box's longer side."""
    side = max(box[2] - box[0], box[3] - box[1])
    return next(name for lo, hi, name in SIZE_BUCKETS if lo <= side < hi)


def load_photos(data_dir: Path, every: int) -> list[tuple[str, np.ndarray, list[tuple[str, Box]]]]:
    """Every `every`-th photo (in numeric order) with its clipped ground-truth boxes."""
    xmls = sorted((data_dir / "annotations").glob("*.xml"), key=lambda p: (len(p.stem), p.stem))[::every]
    photos = []
    for xml in xmls:
        ann = parse_voc(xml)
        image = np.asarray(load_rgb(data_dir / "images" / ann.filename))
        boxes = [(b.name, check_box(b, ann.width, ann.height, xml, i)) for i, b in enumerate(ann.boxes)]
        photos.append((ann.filename, image, boxes))
    return photos


def evaluate(name: str, photos: list, min_face: int) -> dict:
    """Recall overall / by size / by class, boxes per photo, share matched, seconds per photo."""
    detector = make_detector(name, min_face=min_face)
    detector(photos[0][1])  # warm-up (graph tracing) is not timed
    counts: dict[str, list[int]] = {}
    n_found = n_matched = 0
    seconds = 0.0
    for _, image, truth in photos:
        start = time.perf_counter()
        found = detector(image)
        seconds += time.perf_counter() - start
        hits = match([box for _, box in truth], found)
        n_found += len(found)
        n_matched += len(hits)
        for i, (cls, box) in enumerate(truth):
            for key in ("all", size_bucket(box), cls):
                hit_total = counts.setdefault(key, [0, 0])
                hit_total[0] += i in hits
                hit_total[1] += 1
    return {
        "detector": name,
        "min_face": min_face,
        "photos": len(photos),
        "faces": counts["all"][1],
        "recall": {key: round(h / t, 3) for key, (h, t) in counts.items()},
        "faces_by_key": {key: t for key, (_, t) in counts.items()},
        "boxes_per_photo": round(n_found / len(photos), 2),
        "matched_share": round(n_matched / max(n_found, 1), 3),
        "ms_per_photo": round(1000 * seconds / len(photos), 1),
    }


def markdown(results: list[dict]) -> str:
    """The comparison as a Markdown table."""
    keys = ["all"] + [name for _, _, name in SIZE_BUCKETS] + sorted(
        k for k in results[0]["recall"] if k != "all" and not k.endswith("px")
    )
    head = ["detector", *(f"recall {k} (n={results[0]['faces_by_key'].get(k, 0)})" for k in keys),
            "boxes/photo", "matched", "ms/photo"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["detector"], *(f"{r['recall'].get(k, float('nan')):.3f}" for k in keys),
                 f"{r['boxes_per_photo']:.2f}", f"{r['matched_share']:.2f}", f"{r['ms_per_photo']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set folder (images/ + annotations/); default as `maskclf extract`")
    parser.add_argument("--every", type=int, default=4, help="use every N-th photo (default: %(default)s)")
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--min-face", type=int, default=MIN_FACE, help="smallest face in px (default: %(default)s)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    photos = load_photos(resolve_data_dir(args.data, download=False), args.every)
    results = [evaluate(name, photos, args.min_face) for name in args.detectors.split(",")]
    print(f"{len(photos)} photos (every {args.every}th), {results[0]['faces']} faces, IoU >= {IOU_THRESHOLD}, {args.min_face} px minimum face")
    print(markdown(results))
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
