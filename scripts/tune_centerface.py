"""Choose CenterFace's scales, NMS overlap, box adjustment and score threshold on TRAINING photos.

Only the photos of folds 1-4 of the manifest are used (fold 0 is the validation set and is
never looked at). Each network pass (one upscaling, plain or mirrored) is run once per photo
and cached on disk (`--cache`, under /tmp by default: boxes scoring >= CENTERFACE_PRE_SCORE in
the photo's pixels, before NMS), so a setting is scored from the cache in seconds. A pass is
`SCALE` or `SCALE:SIDE`, the latter keeping only faces of SIDE px and more (sqrt of the box's
area, photo pixels): a pass for the large faces. For each set of passes, flip and NMS overlap, the box adjustment is fitted (`fit_box_adjust`: a robust line
per side, annotated minus detected, against the detection's width or height, on detections
matched with IoU >= 0.3), then every score threshold is scored: recall at IoU >= 0.5 over all
faces and faces >= 32 px, false alarms per photo, ms per photo. The rule: the best recall with
at most MAX_FALSE_ALARMS false alarms per photo. The chosen values go into maskclf/detect.py
by hand.

    python scripts/tune_centerface.py --data ../shared/datasets/face-mask-detection --scale-sets "2;1,2;1:32,2"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf.data import read_manifest, resolve_data_dir  # noqa: E402
from maskclf.detect import CenterFaceNet, adjust_boxes, box_sides, centerface_pass, centerface_passes, nms  # noqa: E402
from maskclf.fsutil import atomic_path  # noqa: E402
from maskclf.images import load_rgb  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.wholephoto import match_boxes, photos_from_manifest  # noqa: E402

TRAINING_FOLDS = (1, 2, 3, 4)
MAX_FALSE_ALARMS = 0.5
FIT_IOU = 0.3
"""Detections matched to annotated boxes at this IoU (and score) feed the box adjustment fit."""
THRESHOLDS = np.round(np.arange(0.30, 0.605, 0.01), 2)
DEFAULT_CACHE = Path("/tmp/maskclf-tune-centerface")


def cached_pass(net, photos, scale: float, mirror: bool, cache: Path) -> tuple[list, float]:
    """Per photo, (boxes, scores) of the passes at `scale` (mirrored or not), and ms per photo; from `cache` if there."""
    path = cache / f"train-{scale:g}-{'mirror' if mirror else 'plain'}.npz"
    names = np.array([p.name for p in photos])
    if path.is_file():
        with np.load(path) as z:
            if np.array_equal(z["names"], names):
                split = np.cumsum(z["counts"])[:-1]
                return list(zip(np.split(z["boxes"], split), np.split(z["scores"], split))), float(z["ms"])
    found, seconds = [], 0.0
    for photo in photos:
        image = np.asarray(load_rgb(photo.path))
        height, width = image.shape[:2]
        start = time.perf_counter()
        parts = [centerface_pass(net, image, s, window, mirror) for s, window in centerface_passes(width, height, scale)]
        seconds += time.perf_counter() - start
        found.append((np.concatenate([b for b, _ in parts]).reshape(-1, 4), np.concatenate([s for _, s in parts])))
    ms = 1000 * seconds / len(photos)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, names=names, counts=[len(s) for _, s in found], ms=ms,
                 boxes=np.concatenate([b for b, _ in found]), scores=np.concatenate([s for _, s in found]))
    return found, ms


def keep_sides(found: list, min_side: float) -> list:
    """Per photo, the boxes (and scores) of `found` whose side (sqrt of the area) is >= min_side."""
    return [(boxes[box_sides(boxes) >= min_side], scores[box_sides(boxes) >= min_side]) for boxes, scores in found]


def merge(passes: list[list], nms_iou: float, min_score: float) -> list:
    """Per photo, the boxes of all `passes` scoring >= min_score, merged by NMS."""
    merged = []
    for parts in zip(*passes):
        boxes, scores = np.concatenate([b for b, _ in parts]), np.concatenate([s for _, s in parts])
        boxes, scores = boxes[scores >= min_score], scores[scores >= min_score]
        keep = nms(boxes, scores, nms_iou)
        merged.append((boxes[keep], scores[keep]))
    return merged


def fit_box_adjust(photos, merged) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, pixels) per side: a Huber line, annotated minus detected side against the detection's
    width (x) or height (y), over detections matched to annotated boxes with IoU >= FIT_IOU."""
    from sklearn.linear_model import HuberRegressor

    sides, deltas = [], []
    for photo, (boxes, scores) in zip(photos, merged):
        boxes = boxes[scores >= FIT_IOU]
        for i, j in enumerate(match_boxes(photo.boxes, boxes, FIT_IOU)):
            if j >= 0:
                w, h = boxes[j, 2] - boxes[j, 0], boxes[j, 3] - boxes[j, 1]
                sides.append([w, h, w, h])
                deltas.append(photo.boxes[i] - boxes[j])
    sides, deltas = np.array(sides), np.array(deltas)
    lines = [HuberRegressor().fit(sides[:, k : k + 1], deltas[:, k]) for k in range(4)]
    return np.array([line.coef_[0] for line in lines]), np.array([line.intercept_ for line in lines])


def score(photos, merged, adjust) -> list[dict]:
    """Recall (all, >= 32 px) and false alarms per photo at each of THRESHOLDS."""
    out = []
    for t in THRESHOLDS:
        hits = big_hits = n_big = n = alarms = 0
        for photo, (boxes, scores) in zip(photos, merged):
            kept = adjust_boxes(boxes[scores >= t], *adjust)
            matched = match_boxes(photo.boxes, kept)
            big = np.minimum(photo.boxes[:, 2] - photo.boxes[:, 0], photo.boxes[:, 3] - photo.boxes[:, 1]) >= 32
            hits += (matched >= 0).sum()
            big_hits += (matched[big] >= 0).sum()
            n_big += big.sum()
            n += len(matched)
            alarms += len(kept) - (matched >= 0).sum()
        out.append({"score": t, "recall": hits / n, "recall_32px": big_hits / n_big, "false_alarms": alarms / len(photos)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set folder (default as `maskclf extract`)")
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR), help="extracted faces (faces.csv with folds)")
    parser.add_argument("--scale-sets", default="2;1,2;1:24,2;1:32,2;1:48,2",
                        help="';'-separated sets of passes SCALE[:SMALLEST_SIDE] (default: %(default)s)")
    parser.add_argument("--flip", action="store_true", help="also try every set with its mirrored passes")
    parser.add_argument("--nms", default="0.3,0.4", help="NMS overlaps to try (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of cached passes (default: %(default)s)")
    args = parser.parse_args(argv)
    photos = photos_from_manifest(read_manifest(args.faces), resolve_data_dir(args.data, download=False) / "images",
                                  TRAINING_FOLDS)
    if any(p.fold not in TRAINING_FOLDS for p in photos):
        raise SystemExit("a validation photo among the training photos")
    print(f"{len(photos)} training photos (folds {TRAINING_FOLDS}), {sum(len(p.labels) for p in photos)} faces", flush=True)
    net = CenterFaceNet()
    scale_sets = [tuple(tuple(float(v) for v in f"{p}:0".split(":")[:2]) for p in group.split(","))
                  for group in args.scale_sets.split(";")]
    rows = []
    for scales in scale_sets:
        for flip in (False, True)[: 1 + args.flip]:
            runs = [(keep_sides(found, side), ms) for s, side in scales for mirror in (False, True)[: 1 + flip]
                    for found, ms in [cached_pass(net, photos, s, mirror, args.cache)]]
            ms = sum(m for _, m in runs)
            for nms_iou in map(float, args.nms.split(",")):
                merged = merge([found for found, _ in runs], nms_iou, THRESHOLDS[0])
                adjust = fit_box_adjust(photos, merged)
                rows += [{"scales": ",".join(f"{s:g}" + (f":{side:g}" if side else "") for s, side in scales), "flip": flip, "nms": nms_iou,
                          "fractions": np.round(adjust[0], 3).tolist(), "pixels": np.round(adjust[1], 2).tolist(),
                          **r, "ms": ms} for r in score(photos, merged, adjust)]
                print(f"scales {scales} flip {flip} nms {nms_iou}: box adjustment {rows[-1]['fractions']} "
                      f"+ {rows[-1]['pixels']} px, {ms:.0f} ms/photo", flush=True)
    table = pd.DataFrame(rows)
    ok = table[table["false_alarms"] <= MAX_FALSE_ALARMS]
    best = ok.sort_values(["recall", "recall_32px"], ascending=False).groupby(["scales", "flip", "nms"]).head(1)
    pd.set_option("display.width", 200)
    print(f"\nbest score threshold per setting with <= {MAX_FALSE_ALARMS} false alarms per photo:")
    print(best.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
