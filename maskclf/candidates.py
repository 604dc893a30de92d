"""The detector's candidates on the study's photos: the face verifier's examples, its fit and its decision rule.

CenterFace runs at a low score (detect.CANDIDATE_SCORE) on every photo of the extraction.
Each candidate gets a role against its photo's annotated faces:

- `face`: matched one-to-one to an annotated face at IoU >= MATCH_IOU (the evaluation's match);
- `negative`: overlaps no annotated face at all, and scores under NEGATIVE_MAX_SCORE (above it, most
  are real faces the annotators left out: see docs/detector.md);
- `ambiguous`: anything else (a second box on a face, a box on part of one); never an example.

The verifier is a logistic model (face or not) on the same pooled backbone features as the
mask head, fitted on the `face` and `negative` candidates of the training folds only. Its
decision rule keeps a candidate when w_score * logit(score) + w_face * logit(P(face)) + bias
>= 0: a logistic model on both, fitted on out-of-fold P(face) of the training photos (inner
folds), its cut-off chosen there for the most faces found with at most MAX_FALSE_ALARMS per
photo. The held-out fold is never read for any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from .answers import RULE_KEYS, keep_by_rule, logit
from .detect import CENTERFACE_SCORE
from .framing import cut_face, manifest_boxes
from .logreg import LinearFit, Subset, fit_logistic, solver_identity

if TYPE_CHECKING:
    from .features import KnownRows

ROLES = ("face", "negative", "ambiguous")
MATCH_IOU = 0.5
"""A candidate is a face from this IoU with an annotated face (one-to-one), as in the whole-photo evaluation."""
NEGATIVE_MAX_SCORE = 0.5
"""Candidates scoring this or more that touch no annotated face are left out of the negatives: most are faces."""
MIN_EXAMPLES = 10
"""The fewest faces, and the fewest negatives, the verifier is fitted on."""
MAX_FALSE_ALARMS = 0.5
"""The rule's cut-off: the most faces found on the training photos with at most this many false alarms per photo."""
VIEW = "candidates"
"""The candidates' name as a view in the feature cache."""
RECIPE = 1
"""Bumped when the candidates' cut changes in a way their features' cache key cannot see."""
FIT_VERSION = 3
"""Bumped when the verifier's fit changes in a way its cache key cannot see (2: only the training folds' rows; 3: the
logistic fit's standardisation and sums by matrix products, maskclf.logreg)."""


def photo_candidates(manifest: pd.DataFrame, photos_dir: str | Path,
                     find: Callable[[Path], tuple[Sequence[Sequence[int]], np.ndarray]] | None = None,
                     only_cached: bool = False) -> pd.DataFrame | None:
    """Every candidate of the photos of `manifest`: source_image, fold, xmin..ymax, score, role, face_row.

    `face_row` is the manifest row of the matched face (-1 for none). `find` (a photo's path
    -> boxes, scores) defaults to the default candidate finder on the photo; what it finds is
    cached (maskclf.memo) by the finder's settings (a custom `find` by its name) and the photos.
    `only_cached`: None instead of running the finder when the cache does not hold them.
    """
    from . import detect
    from .memo import cached_arrays, files_fingerprint, stored_arrays

    names = sorted(manifest["source_image"].unique(), key=lambda n: (len(n), n))
    finder = detect.candidate_settings() if find is None else {"custom": f"{find.__module__}.{find.__qualname__}"}
    key = {"finder": finder, "photos": files_fingerprint(Path(photos_dir) / n for n in names)}

    def compute() -> dict[str, np.ndarray]:
        find_in = find or _default_finder()
        photo, boxes, scores = [], [], []
        for p, name in enumerate(names):
            found, score = find_in(Path(photos_dir) / name)
            photo += [p] * len(score)
            boxes.append(np.asarray(found, np.int64).reshape(-1, 4))
            scores.append(np.asarray(score, np.float32))
        return {"photo": np.asarray(photo, np.int64), "boxes": np.concatenate(boxes).reshape(-1, 4),
                "scores": np.concatenate(scores)}

    stored = stored_arrays("candidates", key) if only_cached else cached_arrays("candidates", key, compute)
    if stored is None:
        return None
    table = pd.DataFrame(stored["boxes"], columns=["xmin", "ymin", "xmax", "ymax"])
    table.insert(0, "source_image", np.asarray(names, dtype=object)[stored["photo"]] if len(names) else [])
    table.insert(1, "fold", manifest.groupby("source_image")["fold"].first().loc[table["source_image"]].to_numpy())
    table["score"] = stored["scores"]
    truth = np.asarray(manifest_boxes(manifest), float).reshape(-1, 4)
    found, scores = table[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), table["score"].to_numpy()
    roles, face_rows = np.full(len(table), "ambiguous", dtype=object), np.full(len(table), -1, np.int64)
    faces_of = manifest.groupby("source_image").indices
    for name, mine in table.groupby("source_image", sort=False).indices.items():
        faces = faces_of.get(name, np.zeros(0, np.int64))
        roles[mine], matched = candidate_roles(truth[faces], found[mine], scores[mine])
        face_rows[mine] = [faces[j] if j >= 0 else -1 for j in matched]
    table["role"], table["face_row"] = roles, face_rows
    return table


def candidate_roles(truth: np.ndarray, found: np.ndarray, scores: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each candidate's role (ROLES) against a photo's annotated boxes, and for each its matched face (-1: none)."""
    from .detect import iou_matrix
    from .wholephoto import match_boxes

    matched_face = np.full(len(found), -1, int)
    for face, j in enumerate(match_boxes(truth, found, MATCH_IOU)):
        if j >= 0:
            matched_face[j] = face
    touches = (iou_matrix(found, truth) > 0).any(axis=1) if len(truth) else np.zeros(len(found), bool)
    roles = ["face" if m >= 0 else "negative" if not t and s < NEGATIVE_MAX_SCORE else "ambiguous"
             for m, t, s in zip(matched_face, touches, scores)]
    return roles, matched_face


def _default_finder() -> Callable[[Path], tuple[list[tuple[int, int, int, int]], np.ndarray]]:
    """A photo's path -> the default candidate finder's boxes and scores on it."""
    from .detect import make_candidate_finder
    from .images import load_rgb

    find = make_candidate_finder()
    return lambda path: find(np.asarray(load_rgb(path)))


def candidate_loader(table: pd.DataFrame, photos_dir: str | Path, image_size: int) -> Callable[[int], np.ndarray]:
    """index -> the candidate at that row of `table` cut from its photo, as the model sees it."""
    boxes = manifest_boxes(table)
    photos = [str(Path(photos_dir) / name) for name in table["source_image"]]
    return lambda i: cut_face(photos[i], boxes[i], image_size)


# --------------------------------------------------------------------------- features and fit


def candidate_name(photo: str, box: Sequence[int]) -> str:
    """A candidate's name in the feature cache: its photo and box."""
    return f"{photo}#{','.join(str(int(v)) for v in box)}"


def candidate_features(fs: Any, table: pd.DataFrame, manifest: pd.DataFrame, photos_dir: str | Path,
                       cache_dir: str | Path) -> np.ndarray:
    """(candidates, features): the pooled backbone features of every candidate of `table`, as the mask head sees a
    face (`fs`: the study's FeatureSet of `manifest`'s faces, frozen backbone), cached like a view of the faces. The
    candidates that are the detector view's crops are read from that view's cache (`detector_view_rows`)."""
    from .backbones import weights_id
    from .detect import candidate_settings
    from .features import cached_outputs
    from .fsutil import files_fingerprint

    config = fs.config
    if fs.upper is not None:
        raise ValueError("the face verifier needs a frozen backbone (fine_tune_blocks: 0)")
    names = [candidate_name(row.source_image, (row.xmin, row.ymin, row.xmax, row.ymax)) for row in table.itertuples()]
    known = detector_view_rows(fs, names, manifest, photos_dir)
    photos = sorted(set(table["source_image"]))
    key = {"backbone": config.backbone, "weights": weights_id(config.weights), "cut": "pooled",
           "pooling": config.pooling, "init_seed": config.train_seed if config.weights is None else None,
           "photos": files_fingerprint(Path(photos_dir) / name for name in photos)}
    outputs, _ = cached_outputs(fs.frozen, names, config.image_size, key, cache_dir, batch_size=config.batch_size,
                                views=[VIEW], seed=config.train_seed, verbose=0,
                                loaders={VIEW: candidate_loader(table, photos_dir, config.image_size)},
                                recipes={VIEW: {"finder": candidate_settings(), "recipe": RECIPE}}, precision=fs.precision,
                                known={} if known is None else {VIEW: known})
    return outputs[0]


def detector_view_rows(fs: Any, names: Sequence[str], manifest: pd.DataFrame,
                       photos_dir: str | Path) -> KnownRows | None:
    """The candidates `names` that are crops of `fs`'s detector view, as `features.KnownRows` of its cache file (None:
    none, or no such file in `fs.view_files`). The view's boxes are the default finder's candidates that score
    CENTERFACE_SCORE or more (maskclf.detector_views), cut alike: in the study, 3,535 of the 5,456 candidates."""
    from .detector_views import VIEW as DETECTOR_VIEW
    from .detector_views import available, detector_boxes
    from .features import KnownRows, cache_names

    if fs.view_files is None or DETECTOR_VIEW not in fs.views:
        return None
    boxes = detector_boxes(manifest, photos_dir)
    photos = manifest["source_image"].to_numpy()
    faces = {candidate_name(photos[i], boxes[i]): i for i in np.flatnonzero(available(boxes))}
    pairs = np.array([(j, faces[name]) for j, name in enumerate(names) if name in faces], dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return None
    return KnownRows(pairs[:, 0], fs.view_files[fs.views.index(DETECTOR_VIEW)], pairs[:, 1],
                     cache_names(manifest["crop_file"]))


@dataclass
class Verifier:
    """A fitted verifier: its logistic model on pooled features, its decision rule and the rule's training figures."""

    fit: LinearFit  # two classes: (not a face, face)
    rule: dict[str, float]  # keep when score * logit(detector score) + face * logit(P(face)) + bias >= 0
    figures: dict[str, float]  # on the training photos: faces found and false alarms per photo, with and without it


def fit_verifier(features: np.ndarray, table: pd.DataFrame, val_fold: int, c: float,
                 faces_per_fold: pd.Series, photos_per_fold: pd.Series) -> Verifier:
    """The verifier and its rule for a model validated on `val_fold`, from the candidates of the other folds only.

    `faces_per_fold` and `photos_per_fold` count the annotated faces and the photos of each
    fold (the denominators of faces found and false alarms per photo).
    """
    folds = sorted(int(k) for k in photos_per_fold.index if k != val_fold)
    train = np.flatnonzero(np.isin(table["fold"], folds))  # the held-out fold's rows are never read
    table, features = table.iloc[train], np.asarray(features[train])
    example = table["role"].isin(["face", "negative"]).to_numpy()
    is_face = (table["role"] == "face").to_numpy()
    found = {"faces": int((example & is_face).sum()), "negatives": int((example & ~is_face).sum())}
    if min(found.values()) < MIN_EXAMPLES:
        raise ValueError(f"the face verifier needs at least {MIN_EXAMPLES} faces and {MIN_EXAMPLES} negatives among the "
                         f"detector's candidates in the training folds' photos, found {found['faces']} and "
                         f"{found['negatives']}: train without it (-p verifier=0)")
    inner = [(table["fold"] != j).to_numpy() for j in folds]
    subsets = [Subset(balanced_weights(is_face, example & rows)[None]) for rows in [*inner, np.ones(len(table), bool)]]
    fits = fit_logistic(features, is_face.astype(int), 2, c, subsets)
    p_face = np.full(len(table), np.nan)
    for j, fit in zip(folds, fits):
        rows = (table["fold"] == j).to_numpy()
        p_face[rows] = face_probability(fit, features[rows])
    scores = table["score"].to_numpy()
    faces, photos = int(faces_per_fold.loc[folds].sum()), int(photos_per_fold.loc[folds].sum())
    rule = fit_rule(scores, p_face, is_face, photos)
    kept, alone = keep_by_rule(scores, p_face, rule), scores >= CENTERFACE_SCORE
    figures = {"faces_found": float((kept & is_face).sum() / faces),
               "false_alarms_per_photo": float((kept & ~is_face).sum() / photos),
               "detector_faces_found": float((alone & is_face).sum() / faces),
               "detector_false_alarms_per_photo": float((alone & ~is_face).sum() / photos)}
    return Verifier(fits[-1], rule, figures)


def balanced_weights(positive: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sample weights over `rows` that give both classes the same total weight (0 elsewhere)."""
    weight = np.zeros(len(positive))
    for cls in (True, False):
        chosen = rows & (positive == cls)
        if chosen.any():
            weight[chosen] = rows.sum() / (2 * chosen.sum())
    return weight


def face_probability(fit: LinearFit, features: np.ndarray) -> np.ndarray:
    """P(face) of candidates' pooled features under a fitted verifier."""
    return fit.probabilities(np.asarray(features, np.float64))[:, 1] if len(features) else np.zeros(0)


def fit_rule(scores: np.ndarray, p_face: np.ndarray, is_face: np.ndarray, n_photos: int) -> dict[str, float]:
    """The decision rule on (detector score, P(face)): a logistic model on both logits, its cut-off giving the most
    faces with at most MAX_FALSE_ALARMS false alarms per photo over `n_photos` photos."""
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([logit(scores), logit(p_face)])
    model = LogisticRegression().fit(x, is_face)
    z = x @ model.coef_[0] + model.intercept_[0]
    order = np.argsort(-z, kind="stable")
    false_alarms = np.cumsum(~is_face[order])
    allowed = np.flatnonzero(false_alarms <= MAX_FALSE_ALARMS * n_photos)
    last = int(allowed[-1]) if len(allowed) else -1
    if last < 0:
        cut = z[order[0]] + 1.0  # not even the best candidate
    elif last + 1 >= len(z):
        cut = z[order[last]] - 1.0  # every candidate
    else:
        cut = (z[order[last]] + z[order[last + 1]]) / 2
    return {"score": float(model.coef_[0][0]), "face": float(model.coef_[0][1]),
            "bias": float(model.intercept_[0] - cut)}


def train_verifier(fs: Any, manifest: pd.DataFrame, faces_dir: str | Path, val_fold: int,
                   cache_dir: str | Path) -> tuple[Verifier, pd.DataFrame, np.ndarray]:
    """The verifier of a model validated on `val_fold`, cached (maskclf.memo), with the candidates and their features.

    `manifest` holds every annotated face of the extraction (also those a `min_face` run leaves
    out: they are faces, never negatives).
    """
    from .data import source_photos_dir
    from .memo import array_fingerprint, cached_arrays

    photos_dir = source_photos_dir(faces_dir)
    table = photo_candidates(manifest, photos_dir)
    features = candidate_features(fs, table, manifest, photos_dir, cache_dir)
    faces_per_fold = manifest.groupby("fold").size()
    photos_per_fold = manifest.groupby("fold")["source_image"].nunique()
    key = {"features": array_fingerprint(features), "fit": FIT_VERSION, **solver_identity("lbfgs"),
           "val_fold": val_fold, "c": fs.config.head_c,
           "max_false_alarms": MAX_FALSE_ALARMS, "detector_score": CENTERFACE_SCORE,
           "table": pd.util.hash_pandas_object(table).sum().item(),
           "faces": faces_per_fold.to_dict(), "photos": photos_per_fold.to_dict()}

    def compute() -> dict[str, np.ndarray]:
        v = fit_verifier(features, table, val_fold, fs.config.head_c, faces_per_fold, photos_per_fold)
        return {"mean": v.fit.mean, "scale": v.fit.scale, "kernel": v.fit.kernel, "bias": v.fit.bias,
                "converged": np.asarray(v.fit.converged), "rule": np.array([v.rule[k] for k in RULE_KEYS]),
                "figures": np.array([v.figures[k] for k in FIGURE_KEYS])}

    stored = cached_arrays("verifier", key, compute, cache_dir)
    fit = LinearFit(stored["mean"], stored["scale"], stored["kernel"], stored["bias"], bool(stored["converged"]))
    verifier = Verifier(fit, dict(zip(RULE_KEYS, map(float, stored["rule"]))),
                        dict(zip(FIGURE_KEYS, map(float, stored["figures"]))))
    return verifier, table, features


FIGURE_KEYS = ("faces_found", "false_alarms_per_photo", "detector_faces_found", "detector_false_alarms_per_photo")


def with_verifier(model: Any, features: Any, fit: LinearFit) -> Any:
    """The end-to-end `model` with P(face) as one more output column, computed from `features`, the pooled
    features (a tensor of its graph: the frozen part's output) its head takes."""
    import keras

    from .layers import Standardize

    standardize = Standardize(features.shape[-1], name="verifier_standardize")
    face = keras.layers.Dense(1, activation="sigmoid", name="verifier_face")
    p_face = face(standardize(features))
    standardize.set_weights([np.asarray(v, dtype="float32") for v in (fit.mean, fit.scale)])
    face.set_weights([(fit.kernel[:, 1:] - fit.kernel[:, :1]).astype("float32"),
                      (fit.bias[1:] - fit.bias[:1]).astype("float32")])
    outputs = keras.layers.Concatenate(name="classes_and_face")([model.output, p_face])
    return keras.Model(model.input, outputs, name=model.name)


def verifier_record(verifier: Verifier) -> dict[str, Any]:
    """What config.json records of a verifier: the candidates' score, the rule and its training figures."""
    from .detect import CANDIDATE_SCORE

    return {"candidate_score": CANDIDATE_SCORE, "rule": verifier.rule, "training_photos": verifier.figures}
