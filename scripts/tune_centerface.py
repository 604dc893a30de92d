"""Choose CenterFace's upscaling, flip, NMS overlap, box adjustment and score threshold on TRAINING photos.

Only the photos of folds 1-4 of the manifest are used (fold 0 is the validation set and is
never looked at). For each upscaling, the network passes (and their mirror images) are run
once per photo and cached; every combination of flip, NMS overlap and score threshold is
then scored from the cache: recall at IoU >= 0.5 over all faces and faces >= 32 px, false
alarms per photo and ms per photo. The box adjustment is the median offset of each side
between annotated boxes and the detections matched to them (IoU >= 0.3), as fractions of
the detection's width and height. The chosen values go into maskclf/detect.py by hand.

    python scripts/tune_centerface.py --data ../shared/datasets/face-mask-detection --scales 1.5,2,2.5
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
from maskclf.detect import CenterFaceNet, adjust_boxes, centerface_pass, centerface_passes, nms  # noqa: E402
from maskclf.images import load_rgb  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.wholephoto import match_boxes, photos_from_manifest  # noqa: E402

TRAINING_FOLDS = (1, 2, 3, 4)
MAX_FALSE_ALARMS = 0.5


def cached_passes(net: CenterFaceNet, images: list[np.ndarray], scale: float) -> tuple[list, list, float, float]:
    """Per photo, (boxes, scores) of the plain and the mirrored passes; ms per photo of each."""
    plain, mirrored, ms = [], [], [0.0, 0.0]
    for image in images:
        height, width = image.shape[:2]
        for mirror, out in ((False, plain), (True, mirrored)):
            start = time.perf_counter()
            found = [centerface_pass(net, image, s, window, mirror) for s, window in centerface_passes(width, height, scale)]
            ms[mirror] += 1000 * (time.perf_counter() - start)
            out.append((np.concatenate([b for b, _ in found]), np.concatenate([s for _, s in found])))
    return plain, mirrored, ms[0] / len(images), ms[1] / len(images)


def fit_offsets(photos, merged) -> np.ndarray:
    """Median side offsets from detections to the annotated boxes they match with IoU >= 0.3."""
    rows = []
    for photo, (boxes, scores) in zip(photos, merged):
        boxes = boxes[scores >= 0.3]
        matched = match_boxes(photo.boxes, boxes, 0.3)
        for i, j in enumerate(matched):
            if j >= 0:
                det = boxes[j]
                w, h = det[2] - det[0], det[3] - det[1]
                rows.append((photo.boxes[i] - det) / np.array([w, h, w, h]))
    return np.median(np.array(rows), axis=0)


def score(photos, merged, thresholds, offsets) -> list[dict]:
    """Recall (all, >= 32 px) and false alarms per photo at each score threshold."""
    out = []
    for t in thresholds:
        hits = big_hits = n_big = n = alarms = 0
        for photo, (boxes, scores) in zip(photos, merged):
            kept = adjust_boxes(boxes[scores >= t], offsets)
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
    parser.add_argument("--scales", default="1.5,2,2.5", help="upscalings to try (default: %(default)s)")
    parser.add_argument("--nms", default="0.3,0.4,0.5", help="NMS overlaps to try (default: %(default)s)")
    args = parser.parse_args(argv)
    photos = photos_from_manifest(read_manifest(args.faces), resolve_data_dir(args.data, download=False) / "images",
                                  TRAINING_FOLDS)
    assert all(p.fold != 0 for p in photos)
    images = [np.asarray(load_rgb(p.path)) for p in photos]
    print(f"{len(photos)} training photos (folds {TRAINING_FOLDS}), {sum(len(p.labels) for p in photos)} faces", flush=True)
    net = CenterFaceNet()
    thresholds = np.round(np.arange(0.2, 0.75, 0.05), 2)
    rows = []
    for scale in map(float, args.scales.split(",")):
        plain, mirrored, ms_plain, ms_mirror = cached_passes(net, images, scale)
        for flip in (False, True):
            for nms_iou in map(float, args.nms.split(",")):
                merged = []
                for (b0, s0), (b1, s1) in zip(plain, mirrored):
                    boxes, scores = (np.concatenate([b0, b1]), np.concatenate([s0, s1])) if flip else (b0, s0)
                    keep = nms(boxes, scores, nms_iou)
                    merged.append((boxes[keep], scores[keep]))
                offsets = fit_offsets(photos, merged)
                for name, off in (("none", np.zeros(4)), ("fitted", offsets)):
                    for r in score(photos, merged, thresholds, off):
                        rows.append({"scale": scale, "flip": flip, "nms": nms_iou, "adjust": name,
                                     "offsets": np.round(off, 3).tolist(), **r,
                                     "ms": ms_plain + ms_mirror * flip})
                print(f"scale {scale} flip {flip} nms {nms_iou}: offsets {np.round(offsets, 3).tolist()}", flush=True)
    table = pd.DataFrame(rows)
    ok = table[table["false_alarms"] <= MAX_FALSE_ALARMS]
    best = ok.sort_values(["recall", "recall_32px"], ascending=False).groupby(["scale", "flip", "nms", "adjust"]).head(1)
    pd.set_option("display.width", 200)
    print(f"\nbest score threshold per configuration with <= {MAX_FALSE_ALARMS} false alarms per photo:")
    print(best.drop(columns="offsets").round(3).to_string(index=False))
    print("\noffsets:", table.drop_duplicates(["scale", "flip", "nms", "adjust"])[["scale", "flip", "nms", "adjust", "offsets"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
