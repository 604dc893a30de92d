"""The face verifier: its answers (P(face), the rule), FaceFinder, the candidates' roles, cache and fit, the composed
model, and predict and runs with a verifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REAL_DATA
from finders import scored
from synthetic import draw_face
from tinymodel import CLASS_NAMES as TINY_CLASSES
from tinymodel import REPORTS_AS, make_tiny_model

from maskclf import answers, candidates, detect
from maskclf.answers import SHOWN_DECIMALS, keep_by_rule, logit
from maskclf.candidates import MAX_FALSE_ALARMS, NEGATIVE_MAX_SCORE
from maskclf.detect import CANDIDATE_SCORE, CENTERFACE_SCORE, FaceFinder, make_face_finder
from maskclf.logreg import LinearFit

RULE = {"score": 1.0, "face": 1.0, "bias": -1.0}
"""Keeps a candidate when logit(score) + logit(P(face)) >= 1."""
VERIFIER = {"candidate_score": CANDIDATE_SCORE, "rule": RULE, "training_photos": {"faces_found": 0.9}}
BINARY = {"class_names": ["with_mask", "without_mask"]}
THREE = {"class_names": TINY_CLASSES, "reports_as": REPORTS_AS}


# --------------------------------------------------------------------------- answers


def test_keep_by_rule_on_hand_computed_values():
    scores = np.array([0.5, 0.75, 0.2, 0.9])
    p_face = np.array([0.5, 0.5, 0.8, 0.1])
    # z = 2 * logit(s) - 1 * logit(p) + 0.5: 0.5, 2 log 3 + 0.5, 2 log(1/4) - log 4 + 0.5, 2 log 9 + log 9 + 0.5
    rule = {"score": 2.0, "face": -1.0, "bias": 0.5}
    z = 2 * np.log(scores / (1 - scores)) - np.log(p_face / (1 - p_face)) + 0.5
    assert z == pytest.approx([0.5, 2 * np.log(3) + 0.5, 2 * np.log(0.25) - np.log(4) + 0.5, 3 * np.log(9) + 0.5])
    assert keep_by_rule(scores, p_face, rule).tolist() == [True, True, False, True]
    assert keep_by_rule(np.array([0.5]), np.array([0.5]), {"score": 1.0, "face": 1.0, "bias": 0.0}).tolist() == [True]
    assert keep_by_rule(np.array([0.5]), np.array([0.5]), {"score": 1.0, "face": 1.0, "bias": -1e-9}).tolist() == [False]
    assert keep_by_rule(np.zeros(0), np.zeros(0), rule).shape == (0,)


def test_logit_is_finite_at_zero_and_one():
    values = logit(np.array([0.0, 0.5, 1.0]))
    assert np.isfinite(values).all() and values[1] == 0 and values[0] == pytest.approx(-values[2]) and values[0] < -10


def test_face_and_class_probabilities_and_output_width_with_and_without_a_verifier():
    probs = np.array([[0.1, 0.2, 0.7, 0.9], [0.6, 0.3, 0.1, 0.05]])
    with_verifier = {**THREE, "face_verifier": VERIFIER}
    assert answers.output_width(THREE) == 3 and answers.output_width(with_verifier) == 4
    assert answers.output_width({**BINARY, "face_verifier": VERIFIER}) == 3 and answers.output_width(BINARY) == 2
    assert answers.face_probabilities(probs[:, :3], THREE) is None
    assert answers.face_probabilities(probs, with_verifier).tolist() == [0.9, 0.05]
    assert answers.class_probabilities(probs, with_verifier).tolist() == probs[:, :3].tolist()
    assert answers.class_probabilities(probs[:, :3], THREE).tolist() == probs[:, :3].tolist()
    assert answers.three_way_probabilities(probs, with_verifier).shape == (2, 3)


def test_binary_probabilities_ignore_the_face_column():
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    with_face = np.column_stack([probs, [0.99, 0.01]])
    config = {**THREE, "face_verifier": VERIFIER}
    expected = [[0.1, 0.9], [0.6, 0.4]]
    assert answers.binary_probabilities(probs, THREE) == pytest.approx(np.array(expected))
    assert answers.binary_probabilities(with_face, config) == pytest.approx(np.array(expected))
    assert answers.p_without_mask(with_face, config) == pytest.approx([0.9, 0.4])
    binary = np.array([[0.3, 0.7, 0.2]])
    assert answers.p_without_mask(binary, {**BINARY, "face_verifier": VERIFIER}) == pytest.approx([0.7])


# --------------------------------------------------------------------------- FaceFinder


def test_a_finder_without_a_rule_keeps_every_candidate():
    finder = FaceFinder(lambda image: ([], np.zeros(0)))
    assert finder.keep(np.array([0.01, 0.9, np.nan]), np.array([0.0, 0.1, 0.2])).tolist() == [True] * 3
    assert finder.keep(np.array([0.3, 0.4]), None).tolist() == [True, True]
    ruled = FaceFinder(finder.find, RULE)
    assert ruled.keep(np.array([0.01, 0.9]), None).tolist() == [True, True], "no P(face): a run without a verifier"


def test_a_finder_with_a_rule_keeps_exactly_those_at_or_over_zero_as_shown():
    rule = {"score": 0.0, "face": 1.0, "bias": 0.0}  # keep when P(face), as shown, is at least 0.5
    finder = FaceFinder(lambda image: ([], np.zeros(0)), rule)
    p_face = np.array([0.4999996, 0.4999994, 0.5, 0.9, 0.1])
    scores = np.full(len(p_face), 0.5)
    assert np.round(0.4999996, SHOWN_DECIMALS) == 0.5 and 0.4999996 < 0.5
    assert finder.keep(scores, p_face).tolist() == [True, False, True, True, False]
    rng = np.random.default_rng(0)
    scores, p_face = rng.uniform(0.2, 1, 200), rng.uniform(0, 1, 200)
    rule = {"score": 1.3, "face": 0.7, "bias": -0.4}
    z = 1.3 * logit(scores) + 0.7 * logit(np.round(p_face, SHOWN_DECIMALS)) - 0.4
    kept = FaceFinder(finder.find, rule).keep(scores, p_face)
    assert kept.tolist() == (z >= 0).tolist() and 0 < kept.sum() < 200


@pytest.fixture
def fake_candidate_finders(monkeypatch):
    """detect.make_candidate_finder and make_detector record their arguments instead of loading a detector."""
    made = []

    def candidate_finder(min_score=CANDIDATE_SCORE, min_face=10):
        made.append(("candidates", min_score, min_face))
        return lambda image: ([(0, 0, 4, 4)], np.array([min_score], np.float32))

    def detector(name, min_face):
        made.append((name, min_face))
        return lambda image: [(1, 1, 3, 3)]

    monkeypatch.setattr(detect, "make_candidate_finder", candidate_finder)
    monkeypatch.setattr(detect, "make_detector", detector)
    return made


def test_make_face_finder_uses_the_runs_candidate_score_and_rule(fake_candidate_finders):
    config = {**THREE, "face_verifier": {**VERIFIER, "candidate_score": 0.25}}
    finder = make_face_finder(config, "centerface", 12)
    assert finder.rule == RULE and fake_candidate_finders == [("candidates", 0.25, 12)]
    assert finder(np.zeros((8, 8, 3), np.uint8))[1].tolist() == [0.25]
    alone = make_face_finder(config, "centerface", 12, verify=False)
    assert alone.rule is None and fake_candidate_finders[-1] == ("candidates", CENTERFACE_SCORE, 12)
    plain = make_face_finder(THREE, "centerface", 12)
    assert plain.rule is None and fake_candidate_finders[-1] == ("candidates", CENTERFACE_SCORE, 12)
    haar = make_face_finder(config, "haar", 12)
    assert haar.rule is None and fake_candidate_finders[-1] == ("haar", 12)
    boxes, scores = haar(np.zeros((8, 8, 3), np.uint8))
    assert boxes == [(1, 1, 3, 3)] and np.isnan(scores).all() and len(scores) == 1


def test_the_candidate_finder_works_on_a_bounded_copy_and_keeps_scores_with_their_boxes(monkeypatch):
    from maskclf.images import WORK_SIDE

    seen = []

    def candidates_of(net, image, min_face, min_score):
        seen.append((image.shape, min_score))
        side = image.shape[1]
        boxes = np.array([[side + 5, 0, side + 50, 40], [10, 10, 50, 50], [-20, -20, 30, 30]], np.float32)
        return boxes, np.array([0.9, 0.5, 0.3], np.float32)  # the first lies outside the photo

    monkeypatch.setattr(detect, "CenterFaceNet", lambda: None)
    monkeypatch.setattr(detect, "centerface_candidates", candidates_of)
    find = detect.make_candidate_finder(0.25)
    boxes, scores = find(np.zeros((3000, 4000, 3), np.uint8))
    assert max(seen[0][0][:2]) <= WORK_SIDE and seen[0][1] == 0.25
    factor = 4000 / seen[0][0][1]
    assert scores.tolist() == pytest.approx([0.5, 0.3])
    assert boxes == [tuple(round(v * factor) for v in (10, 10, 50, 50)), (0, 0, round(30 * factor), round(30 * factor))]
    small_boxes, small_scores = find(np.zeros((100, 120, 3), np.uint8))
    assert seen[-1][0] == (100, 120, 3) and small_boxes == [(10, 10, 50, 50), (0, 0, 30, 30)]


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "images" / "maksssksksss0.png").is_file(), reason=f"{REAL_DATA} not present")
def test_candidates_over_the_detector_score_are_exactly_the_default_detectors_boxes():
    from maskclf.detect import detect_faces, make_candidate_finder, make_detector
    from maskclf.images import load_rgb

    image = np.asarray(load_rgb(REAL_DATA / "images" / "maksssksksss0.png"))  # 3 of its 6 candidates score >= 0.41
    boxes, scores = make_candidate_finder()(image)
    detected = detect_faces(make_detector(), image)
    assert len(boxes) == len(scores) > len(detected) > 0
    assert sorted(b for b, s in zip(boxes, scores) if s >= CENTERFACE_SCORE) == sorted(detected)
    alone, alone_scores = make_face_finder({**THREE, "face_verifier": VERIFIER}, verify=False)(image)
    assert sorted(alone) == sorted(detected) and (alone_scores >= CENTERFACE_SCORE).all()


# --------------------------------------------------------------------------- candidates' roles and cache


def test_candidate_roles():
    truth = np.array([[10, 10, 50, 50], [100, 100, 140, 140]], float)
    found = np.array([
        [12, 11, 50, 52],  # face 0
        [200, 200, 230, 230],  # far from every face, low score: negative
        [200, 10, 230, 40],  # far, but scoring high: ambiguous (most are faces left unlabelled)
        [100, 100, 120, 120],  # a quarter of face 1: touches it, unmatched: ambiguous
        [14, 14, 50, 50],  # a second box on face 0: ambiguous
        [50, 50, 80, 80],  # touches face 0 at a corner only (no overlap): negative
    ], float)
    scores = np.array([0.3, 0.3, NEGATIVE_MAX_SCORE, 0.25, 0.9, 0.21])
    roles, matched = candidate_roles_of(truth, found, scores)
    assert roles == ["face", "negative", "ambiguous", "ambiguous", "ambiguous", "negative"]
    assert matched.tolist() == [0, -1, -1, -1, -1, -1]
    roles, matched = candidate_roles_of(truth, found[[3, 0]], scores[[3, 0]])
    assert roles == ["ambiguous", "face"] and matched.tolist() == [-1, 0]
    roles, _ = candidate_roles_of(np.zeros((0, 4)), found[:2], scores[:2])
    assert roles == ["negative", "negative"]


def candidate_roles_of(truth, found, scores):
    return candidates.candidate_roles(truth, found, scores)


def test_a_negative_never_overlaps_an_annotated_face():
    from maskclf.detect import iou_matrix

    rng = np.random.default_rng(1)
    for _ in range(30):
        corners = rng.integers(0, 150, (8, 2))
        truth = np.column_stack([corners, corners + rng.integers(5, 40, (8, 2))]).astype(float)
        corners = rng.integers(0, 150, (40, 2))
        found = np.column_stack([corners, corners + rng.integers(5, 40, (40, 2))]).astype(float)
        scores = rng.uniform(0.2, 0.9, 40)
        roles, matched = candidates.candidate_roles(truth, found, scores)
        negative = np.array(roles) == "negative"
        assert (iou_matrix(found[negative], truth) == 0).all()
        assert (scores[negative] < NEGATIVE_MAX_SCORE).all()
        faces = np.flatnonzero(np.array(roles) == "face")
        assert sorted(matched[faces].tolist()) == sorted(set(matched[faces].tolist())), "one-to-one"
        assert all(iou_matrix(found[[j]], truth[[matched[j]]])[0, 0] >= candidates.MATCH_IOU for j in faces)
        assert (matched[np.array(roles) != "face"] == -1).all()


def write_photos(folder: Path, seed: int) -> None:
    """Two small photos of random pixels (each test its own bytes, so cache entries never meet)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("p2.png", "p10.png"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(folder / name)


MANIFEST = pd.DataFrame({
    "source_image": ["p10.png", "p2.png", "p10.png"], "fold": [3, 1, 3],
    "xmin": [40, 5, 0], "ymin": [10, 5, 0], "xmax": [70, 25, 20], "ymax": [40, 25, 20],
})
FOUND = {
    "p2.png": ([(5, 5, 25, 26), (50, 30, 70, 50)], [0.8, 0.3]),
    "p10.png": ([(41, 10, 70, 40), (0, 40, 20, 58), (60, 45, 80, 60), (1, 1, 21, 21)], [0.6, 0.7, 0.22, 0.5]),
}


def test_photo_candidates_roles_folds_and_faces_and_their_cache(tmp_path):
    from maskclf.features import FEATURES_DIR

    assert str(FEATURES_DIR).startswith(__import__("os").environ["MASKCLF_WORK_ROOT"]), "conftest isolates the cache"
    photos = tmp_path / "images"
    write_photos(photos, 10)
    calls = []

    def find(path: Path):
        calls.append(path.name)
        return FOUND[path.name]

    table = candidates.photo_candidates(MANIFEST, photos, find)
    assert calls == ["p2.png", "p10.png"]
    assert table.columns.tolist() == ["source_image", "fold", "xmin", "ymin", "xmax", "ymax", "score", "role", "face_row"]
    assert table["source_image"].tolist() == ["p2.png"] * 2 + ["p10.png"] * 4
    assert table["fold"].tolist() == [1, 1, 3, 3, 3, 3]
    assert table[["xmin", "ymin", "xmax", "ymax"]].to_numpy().tolist() == [list(b) for n in ("p2.png", "p10.png")
                                                                            for b in FOUND[n][0]]
    assert table["score"].tolist() == pytest.approx([0.8, 0.3, 0.6, 0.7, 0.22, 0.5])
    assert table["role"].tolist() == ["face", "negative", "face", "ambiguous", "negative", "face"]
    assert table["face_row"].tolist() == [1, -1, 0, -1, -1, 2]
    again = candidates.photo_candidates(MANIFEST, photos, find)
    assert calls == ["p2.png", "p10.png"], "the second call reads the cache"
    pd.testing.assert_frame_equal(again, table)
    write_photos(photos, 11)  # other bytes, the same names
    candidates.photo_candidates(MANIFEST, photos, find)
    assert calls == ["p2.png", "p10.png"] * 2, "changed photos are looked at again"


# --------------------------------------------------------------------------- the fit


def synthetic_candidates(seed: int = 0, folds: int = 5, faces: int = 40, negatives: int = 60):
    """Features (2-D Gaussian blobs: faces around (1.5, 1.5), negatives around (-1.5, -1.5)), the candidates'
    table, and the faces and photos per fold."""
    rng = np.random.default_rng(seed)
    rows, features = [], []
    for fold in range(folds):
        for is_face, n in ((True, faces), (False, negatives)):
            features.append(rng.normal(1.5 if is_face else -1.5, 1.0, (n, 2)))
            score = rng.uniform(0.3, 0.95, n) if is_face else rng.uniform(0.2, 0.5, n)
            rows += [{"fold": fold, "role": "face" if is_face else "negative", "score": s} for s in score]
        features.append(rng.normal(0, 1, (5, 2)))
        rows += [{"fold": fold, "role": "ambiguous", "score": s} for s in rng.uniform(0.2, 0.9, 5)]
    table = pd.DataFrame(rows)
    photos = pd.Series(10, index=range(folds))
    return np.concatenate(features), table, table[table["role"] == "face"].groupby("fold").size(), photos


def test_the_verifier_separates_faces_from_negatives():
    features, table, faces, photos = synthetic_candidates()
    verifier = candidates.fit_verifier(features, table, 0, 1.0, faces, photos)
    held_out = (table["fold"] == 0).to_numpy() & table["role"].isin(["face", "negative"]).to_numpy()
    p_face = candidates.face_probability(verifier.fit, features[held_out])
    is_face = (table["role"][held_out] == "face").to_numpy()
    assert ((p_face >= 0.5) == is_face).mean() > 0.9
    assert set(verifier.rule) == set(answers.RULE_KEYS) and all(np.isfinite(list(verifier.rule.values())))
    assert verifier.rule["face"] > 0, "more likely a face, more likely kept"
    assert verifier.figures["faces_found"] > verifier.figures["detector_faces_found"]
    assert verifier.figures["false_alarms_per_photo"] <= MAX_FALSE_ALARMS


def _fit_with_held_out(values: np.ndarray, val_fold: int = 2):
    features, table, faces, photos = synthetic_candidates(seed=3)
    features = features.copy()
    held_out = (table["fold"] == val_fold).to_numpy()
    features[held_out] = values[: held_out.sum()]
    table = table.copy()
    table.loc[held_out, "role"] = np.resize(["negative", "face"], held_out.sum())  # other roles too
    return candidates.fit_verifier(features, table, val_fold, 1.0, faces, photos)


def _same_verifier(a, b) -> None:
    for name in ("mean", "scale", "kernel", "bias"):
        assert np.array_equal(getattr(a.fit, name), getattr(b.fit, name)), name
    assert a.rule == b.rule and a.figures == b.figures


def test_the_verifier_fit_never_depends_on_the_held_out_fold():
    rng = np.random.default_rng(7)
    first = _fit_with_held_out(rng.normal(5, 3, (200, 2)))
    second = _fit_with_held_out(rng.normal(-40, 10, (200, 2)))
    _same_verifier(first, second)
    assert all(np.isfinite(v).all() for v in (first.fit.kernel, first.fit.bias, list(first.rule.values())))


def test_the_verifier_fit_never_reads_the_held_out_fold():
    nan = _fit_with_held_out(np.full((200, 2), np.nan))
    _same_verifier(nan, _fit_with_held_out(np.zeros((200, 2))))


def test_the_rules_false_alarms_on_its_training_data_are_within_the_limit():
    rng = np.random.default_rng(4)
    n_photos = 40
    is_face = rng.uniform(size=600) < 0.4
    scores = np.where(is_face, rng.uniform(0.25, 0.95, 600), rng.uniform(0.2, 0.6, 600))
    p_face = np.clip(np.where(is_face, rng.normal(0.7, 0.2, 600), rng.normal(0.3, 0.2, 600)), 0, 1)
    rule = candidates.fit_rule(scores, p_face, is_face, n_photos)
    kept = keep_by_rule(scores, p_face, rule)
    false_alarms = (kept & ~is_face).sum()
    assert false_alarms <= MAX_FALSE_ALARMS * n_photos
    assert (kept & is_face).sum() > (scores[is_face] >= 0.6).sum(), "more faces than a cut on the score alone"
    tighter = candidates.fit_rule(scores, p_face, is_face, 4)
    assert (keep_by_rule(scores, p_face, tighter) & ~is_face).sum() <= MAX_FALSE_ALARMS * 4 < false_alarms


def test_balanced_weights_give_both_classes_the_same_total():
    positive = np.array([True, True, True, False, False, True])
    rows = np.array([True, True, True, True, False, False])
    weight = candidates.balanced_weights(positive, rows)
    assert weight[rows & positive].sum() == pytest.approx(weight[rows & ~positive].sum()) == pytest.approx(2)
    assert (weight[~rows] == 0).all()


# --------------------------------------------------------------------------- the composed model


def tiny_fit() -> LinearFit:
    """A verifier on 3 features whose P(face) is sigmoid(2 * ((x0 - 0.5) / 0.25) - 3 * x2 + 0.5)."""
    kernel = np.array([[0.0, 2.0], [0.0, 0.0], [0.0, -3.0]])
    return LinearFit(np.array([0.5, 0.0, 0.0]), np.array([0.25, 1.0, 1.0]), kernel, np.array([0.0, 0.5]), True)


def test_with_verifier_adds_p_face_and_survives_saving(tmp_path):
    import keras

    from maskclf import layers  # noqa: F401  (registers the custom layers)

    inputs = keras.Input((4,))
    features = keras.layers.Dense(3, name="features")(inputs)
    head_in = keras.Input((3,))
    head = keras.Model(head_in, keras.layers.Dense(2, activation="softmax")(head_in), name="head")
    model = keras.Model(inputs, head(features), name="classifier")
    fit = tiny_fit()
    composed = candidates.with_verifier(model, model.get_layer("features").output, fit)
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    out = composed.predict_on_batch(x)
    feats = keras.Model(inputs, features).predict_on_batch(x)
    assert out.shape == (16, 3) and composed.name == "classifier"
    assert out[:, :2] == pytest.approx(model.predict_on_batch(x), abs=1e-6)
    assert out[:, 2] == pytest.approx(fit.probabilities(feats.astype(np.float64))[:, 1], abs=1e-5)
    assert 0.05 < out[:, 2].mean() < 0.95
    path = tmp_path / "composed.keras"
    keras.saving.save_model(composed, path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.predict_on_batch(x) == pytest.approx(out, abs=1e-6)


# --------------------------------------------------------------------------- predict and runs with a verifier


FACE_FIT = LinearFit(np.zeros(3), np.ones(3), np.array([[0.0, 30.0], [0.0, 0.0], [0.0, 0.0]]), np.array([0.0, -15.0]),
                     True)
"""The tiny model's verifier: P(face) = sigmoid(30 * (mean red of the crop - 0.5)): skin is a face, green is not."""


def make_verifier_run(run_dir: Path, rule=RULE) -> Path:
    """The tiny model with P(face) (FACE_FIT on its mean colour) and a verifier record in its config."""
    from maskclf.runs import save_run

    model = make_tiny_model()
    composed = candidates.with_verifier(model, model.get_layer("band_mean").output, FACE_FIT)
    config = {"image_size": 32, "class_names": TINY_CLASSES, "reports_as": REPORTS_AS, "run_id": "tiny-verifier",
              "backbone": "tiny", "weights": None, "face_verifier": {**VERIFIER, "rule": rule}}
    save_run(run_dir, composed, config)
    return run_dir


@pytest.fixture(scope="module")
def verifier_run(tmp_path_factory) -> Path:
    return make_verifier_run(tmp_path_factory.mktemp("model") / "verifier")


def face_and_patch() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 200x120 photo with an unmasked face, and a face-like patch of the background (dark eyes and a mouth on the
    green), and their boxes."""
    image = np.full((120, 200, 3), (90, 140, 90), np.uint8)
    image[20:60, 20:60] = draw_face(40, "without_mask")
    image[30:35, 130:135] = image[30:35, 145:150] = 30
    image[50:53, 133:147] = (60, 40, 40)
    return image, [(20, 20, 60, 60), (120, 20, 160, 60)]


def test_predict_paths_keeps_the_faces_the_verifier_keeps(verifier_run, tmp_path):
    from maskclf.predict import expand_paths, predict_paths
    from maskclf.runs import load_run

    model, config = load_run(verifier_run)
    image, boxes = face_and_patch()
    Image.fromarray(image).save(tmp_path / "photo.png")
    files, _ = expand_paths([tmp_path / "photo.png"])
    ruled = scored(boxes, [0.5, 0.5], config["face_verifier"]["rule"])
    [result] = predict_paths(model, config, files, finder=ruled)
    assert [face["box"] for face in result.faces] == [list(boxes[0])], "the face is kept, the patch dropped"
    face = result.faces[0]
    assert face["detector_score"] == 0.5 and face["p_face"] > 0.9 and face["label"] == "without_mask"
    assert result.summary["faces"] == 1
    [both] = predict_paths(model, config, files, finder=scored(boxes, [0.5, 0.5]))
    assert [f["box"] for f in both.faces] == [list(b) for b in boxes]
    p_patch = both.faces[1]["p_face"]
    assert p_patch < 0.5 and not keep_by_rule(np.array([0.5]), np.array([p_patch]), RULE)[0]
    assert both.faces[0]["p_face"] == face["p_face"], "P(face) is the model's last column, as shown"


def test_cli_with_a_verifier_and_with_no_verify(verifier_run, tmp_path, capsys, monkeypatch):
    """Candidates: the face at 0.5, the patch at 0.5 and a second face at 0.3, under the detector's own score."""
    from cli_run import run_cli

    image, boxes = face_and_patch()
    image[70:110, 150:190] = draw_face(40, "without_mask")
    boxes.append((150, 70, 190, 110))
    Image.fromarray(image).save(tmp_path / "photo.png")
    all_scores = np.array([0.5, 0.5, 0.3], np.float32)
    made = []

    def candidate_finder(min_score, min_face):
        made.append(min_score)
        return lambda img: ([b for b, s in zip(boxes, all_scores) if s >= min_score], all_scores[all_scores >= min_score])

    monkeypatch.setattr(detect, "make_candidate_finder", candidate_finder)
    status, out, err = run_cli(capsys, "predict", tmp_path / "photo.png", "--model", verifier_run)
    assert status == 0, err
    faces = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "face"]
    assert made == [CANDIDATE_SCORE]
    assert [f["box"] for f in faces] == [list(boxes[0]), list(boxes[2])], "both faces; the patch dropped"
    assert [f["detector_score"] for f in faces] == pytest.approx([0.5, 0.3])
    assert all(f["p_face"] > 0.9 for f in faces)
    status, out, err = run_cli(capsys, "predict", tmp_path / "photo.png", "--model", verifier_run, "--no-verify")
    assert status == 0, err
    faces = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "face"]
    assert made[-1] == CENTERFACE_SCORE
    assert [f["box"] for f in faces] == [list(boxes[0]), list(boxes[1])], "the detector alone: face and patch"
    assert all("p_face" in f and "detector_score" in f for f in faces)


@pytest.mark.parametrize("verifier", [
    {"candidate_score": 0.2, "rule": {"score": 1.0, "face": 1.0}},
    {"candidate_score": 0.2, "rule": {"score": 1.0, "face": float("nan"), "bias": 0.0}},
    {"candidate_score": 1.5, "rule": RULE},
    {"candidate_score": 0.2, "rule": {"score": "1", "face": 1.0, "bias": 0.0}},
    {"rule": RULE},
    [0.2, RULE],
])
def test_a_malformed_verifier_record_is_refused_naming_config_json(verifier_run, tmp_path, verifier):
    from maskclf.runs import RunFolderError, load_run

    run = Path(shutil.copytree(verifier_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "face_verifier": verifier}))  # NaN is written as NaN
    with pytest.raises(RunFolderError, match=r"config\.json: 'face_verifier' must hold"):
        load_run(run)


def test_a_model_whose_width_disagrees_with_the_verifier_record_is_refused(verifier_run, tiny_run, tmp_path):
    from maskclf.runs import RunFolderError, load_run

    assert load_run(verifier_run)[0].output_shape[-1] == 4
    plain = Path(shutil.copytree(tiny_run, tmp_path / "plain"))
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "face_verifier": VERIFIER}))
    with pytest.raises(RunFolderError, match=r"config\.json: 'class_names' and 'face_verifier' call for 4 scores .*, but the model outputs 3 scores"):
        load_run(plain)
    without = Path(shutil.copytree(verifier_run, tmp_path / "without"))
    config = json.loads((without / "config.json").read_text())
    del config["face_verifier"]
    (without / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match=r"config\.json: 'class_names' has 3 names, but the model outputs 4 scores"):
        load_run(without)
