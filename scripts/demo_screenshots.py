"""Screenshots of the web demo with a saved model: an example photo analysed, and the webcam mode.

Serves the demo on 127.0.0.1 (the model, the default detector, the example photos chosen by
`demo.EXAMPLE_RULE` from the extraction at `--faces`), opens it in headless Chromium whose
fake camera plays a clip of the second example photo, clicks the first example, then starts
the webcam, and saves `demo-upload.png` and `demo-webcam.png` under `--out`. Prints what the
page showed. Needs Debian's chromium and the data set; only loopback traffic.

    .venv/bin/python scripts/demo_screenshots.py --model models/<run> [--faces data/interim/face-mask-detection]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from maskclf.demo import create_app, example_photos
from maskclf.demo_browser import capture_example, capture_webcam, open_page, serve, write_y4m
from maskclf.detect import DEFAULT_DETECTOR, make_face_finder
from maskclf.fsutil import atomic_path
from maskclf.images import load_rgb, working_image
from maskclf.paths import DEFAULT_FACES_DIR, REPORTS_DIR
from maskclf.runtime import resolve_model

CLIP_SIDE = 640
"""Longest side of the fake camera's clip."""


def clip_frames(photo: Path, count: int = 10) -> list[np.ndarray]:
    """`count` still frames of `photo`, at most CLIP_SIDE px, cut to an even width and height."""
    image = working_image(np.asarray(load_rgb(photo)), CLIP_SIDE)[0]
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return [np.ascontiguousarray(image[:height, :width])] * count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder (default: the latest complete one under models/)")
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR), help="the extraction whose folds and data set give the examples")
    parser.add_argument("--out", default=str(REPORTS_DIR / "figures"), help="folder of the two screenshots (default: reports/figures)")
    args = parser.parse_args()

    examples = example_photos(args.faces)
    if len(examples) < 2:
        print(f"error: {args.faces}: fewer than 2 example photos (run `python -m maskclf extract` first)", file=sys.stderr)
        return 2
    model, config = resolve_model(args.model)
    app = create_app(model, config, make_face_finder(config, DEFAULT_DETECTOR),
                     large_detector=make_face_finder(config, DEFAULT_DETECTOR),
                     make_detector=lambda name: make_face_finder(config, name), examples=examples)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp, serve(app) as url:
        clip = write_y4m(clip_frames(examples[1]), Path(tmp) / "clip.y4m")
        with open_page(url, clip=clip) as (page, requests):
            with atomic_path(out / "demo-upload.png") as path:
                upload = capture_example(page, path, 0)
            with atomic_path(out / "demo-webcam.png") as path:
                webcam = capture_webcam(page, path, frames=2)
    print(f"demo-upload.png: {examples[0].name}: {upload['summary']}; {upload['labels']}")
    print(f"demo-webcam.png: a clip of {examples[1].name}: {webcam['summary']}; {webcam['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
