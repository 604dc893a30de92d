"""Fake face finders for tests: a detector without scores made into a FaceFinder the package's own way."""

from __future__ import annotations

from typing import Callable, Sequence
from unittest import mock

import numpy as np

from maskclf import detect
from maskclf.detect import FaceFinder


def unscored(detector: Callable[[np.ndarray], Sequence[tuple[int, int, int, int]]]) -> FaceFinder:
    """`detector` (RGB image -> boxes) as `make_face_finder` makes the FaceFinder of a named detector without
    scores: found on a copy shrunk to WORK_SIDE (`detect_faces`), boxes in the photo's pixels, scores NaN, no rule."""
    with mock.patch.object(detect, "make_detector", lambda name, min_face: detector):
        return detect.make_face_finder({}, "haar")


def scored(boxes: Sequence[tuple[int, int, int, int]], scores: Sequence[float], rule=None) -> FaceFinder:
    """A FaceFinder that finds `boxes` with detector `scores` in every image, with a verifier `rule` (or none)."""
    return FaceFinder(lambda image: (list(boxes), np.asarray(scores, np.float32)), rule)
