"""Training: a frozen backbone run once over the crops, a small head fitted on its cached outputs.

The flow, for one configuration (maskclf.trainconfig):

1. `featureset.prepare_features` splits the backbone at the fine-tuning cut (or keeps it whole),
   runs the frozen lower part once per crop (and augmented view) and caches the result;
   several backbones ("a+b") each get their own cache and their features are concatenated;
2. `heads.fit_heads` trains dropout + softmax on globally pooled features: with Adam and early
   stopping (the study), or as a logistic regression fitted to convergence with L-BFGS,
   every fold's in the same passes over the features;
3. `heads.fine_tune` (optional) unfreezes the top blocks, BatchNorm kept in inference mode, and
   trains them with a low learning rate on the cached activations at the cut;
4. `network.end_to_end_model` assembles raw crop in -> probabilities out, the model that is saved;
5. with `verifier: 1`, `candidates` fits a face verifier on the detector's candidates in the
   training folds' photos and adds its P(face) to the saved model as one more output.

`crossval` runs 2-4 fold by fold and caches cross-validation; this module runs the whole study
(`run_study`: features, folds, the end-to-end check, the comparison table, the run folder) and
the `train` command.

Models are built and fitted inside `tf.distribute.get_strategy().scope()`: the default
strategy, or the one the caller entered (`with tf.distribute.MirroredStrategy().scope(): ...`),
so the same code runs on one CPU or several GPUs without a strategy argument anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .answers import INCORRECT, p_without_mask
from .backbones import weights_id
from .candidates import candidate_loader, face_probability, train_verifier, verifier_record, with_verifier
from .config import stage_defaults
from .crossval import TrainResult, cached_cross_validate_together, cached_summary, train_fold
from .data import DataError, read_manifest, source_photos_dir
from .features import FEATURES_DIR
from .featureset import FeatureSet, derived_features, kept_faces, prepare_features, restrict_faces
from .fsutil import OutputError
from .labels import output_classes, training_labels
from .logreg import solver_identity
from .model import cached_predict_crops, cached_probabilities
from .paths import MODELS_DIR
from .runs import save_run
from .trainconfig import TrainConfig, config_label, default_run_name, run_id


# --------------------------------------------------------------------------- one call for notebooks and the CLI


@dataclass
class Study:
    """What `run_study` computed and saved, for the notebook to show and the CLI to print."""

    run_dir: Path
    saved: str
    """What happened to the run folder: created, unchanged, updated or retrained (runs.save_run)."""
    fs: FeatureSet
    """Without its cached arrays (FeatureSet.without_arrays): they are freed once cross-validation is done."""
    features: str
    """FeatureSet.summary of the arrays the study was fitted on."""
    manifest: pd.DataFrame
    result: TrainResult
    cv: dict[str, Any] | None
    end_to_end_crops: int
    end_to_end_gap: float
    """Largest |saved model - cached pipeline| in P(without_mask) over `end_to_end_crops` held-out crops."""
    end_to_end_agreement: float
    """The share of those crops that the saved model and the cached pipeline give the same label."""
    comparison: pd.DataFrame
    seconds: dict[str, float]
    """Wall time of each stage: features, cross-validation (the run's and the comparison's), verifier, check, save."""


END_TO_END_CROPS = 64
END_TO_END_TOLERANCE = 1e-4
"""With float32 features, the saved model must give the cached pipeline's probabilities on END_TO_END_CROPS held-out
crops within this."""
BFLOAT16_TOLERANCE = 0.1
BFLOAT16_AGREEMENT = 0.99
"""With bfloat16 features (maskclf.fastpass), the float32 saved model is checked on every held-out crop (and
END_TO_END_CROPS held-out verifier candidates): probabilities within BFLOAT16_TOLERANCE of the cached pipeline's,
the same label for at least this share. A wrong preprocessing or cut fails both by far."""


def check_end_to_end(saved: np.ndarray, cached: np.ndarray, precision: str, what: str) -> tuple[float, float]:
    """The largest |saved - cached| probability and the share of equal labels (p >= 0.5); RuntimeError when they
    are out of the bounds of `precision` (the backbone pass's)."""
    gap = float(np.abs(saved - cached).max(initial=0))
    agreement = float(((saved >= 0.5) == (cached >= 0.5)).mean()) if len(saved) else 1.0
    if precision == "float32" and not gap < END_TO_END_TOLERANCE:
        raise RuntimeError(f"the saved model's {what} differs from the cached pipeline's by {gap:.2e} (over "
                           f"{END_TO_END_TOLERANCE:g}) on {len(saved)} held-out crops: their preprocessing disagrees")
    if precision != "float32" and not (gap < BFLOAT16_TOLERANCE and agreement >= BFLOAT16_AGREEMENT):
        raise RuntimeError(f"the float32 saved model's {what} differs from the {precision} cached pipeline's by "
                           f"{gap:.3f} (bound {BFLOAT16_TOLERANCE:g}), labels agreeing on {agreement:.4f} (bound "
                           f"{BFLOAT16_AGREEMENT:g}) of {len(saved)} held-out crops: their preprocessing disagrees")
    return gap, agreement


def run_study(
    config: TrainConfig,
    faces_dir: str | Path,
    models_dir: str | Path = MODELS_DIR,
    run_name: str | None = None,
    cross_validate: bool = True,
    compare: Sequence[dict[str, Any]] = (),
    cache_dir: str | Path = FEATURES_DIR,
    verbose: int = 0,
) -> Study:
    """The whole training study, for 02_train and `python -m maskclf train` alike.

    In order: features (cached), 5-fold cross-validation keeping the model of
    `config.val_fold` (or that fold alone) and of each variant of `compare` (the comparison
    table), the face verifier (`verifier: 1`), the end-to-end check of the saved model against
    the cached pipeline (its pass cached as 03 reads it; RuntimeError if it fails, before
    anything is saved), then the run folder `models_dir/run_name`
    (default: `default_run_name`, which names the configuration and the data by their hash;
    a folder of another configuration is never written into).
    """
    clock = StageClock()
    every_face = read_manifest(faces_dir)
    every_feature = prepare_features(every_face, faces_dir, config, cache_dir, verbose)
    fs, manifest = restrict_faces(every_feature, every_face)
    run_dir = Path(models_dir) / (run_name or default_run_name(config, fs.data_sha256, fs.precision))
    clock.lap("features")
    variants = comparison_variants(faces_dir, config, compare, cache_dir, every_feature)
    studied = [(fs, manifest, config.val_fold)] if cross_validate else []
    fitted = [v for v in variants if v.cv is None]
    cvs = cached_cross_validate_together(studied + [(v.fs, v.faces, None) for v in fitted], cache_dir)
    cv, result = cvs.pop(0) if cross_validate else (None, train_fold(fs, manifest, config.val_fold))
    for variant, (variant_cv, _) in zip(fitted, cvs):
        variant.cv, variant.fs = variant_cv, None
    features, fs = fs.summary(), fs.without_arrays()
    del every_feature, studied  # with fs's arrays, the last references to them: 1.7 GiB freed for the verifier
    clock.lap("cross-validation")
    classes = output_classes(training_labels(manifest, config.labels))
    if config.verifier:
        result, classes["face_verifier"] = add_verifier(fs, result, every_face, faces_dir, cache_dir)
        clock.lap("verifier")
    check = result.val_index if fs.precision != "float32" else result.val_index[:END_TO_END_CROPS]
    paths = manifest["crop_file"].iloc[check].tolist()
    seen, probs = cached_predict_crops(result.model, paths, config.image_size)  # 03 reads the same cache
    if seen != paths:
        raise RuntimeError("the end-to-end check's pass did not keep the crops' order")
    gap, agreement = check_end_to_end(p_without_mask(probs, classes), result.val_probabilities[:len(check)],
                                      fs.precision, "P(without_mask)")
    clock.lap("check")
    rows = [cv_row(v.label, v.cv, v.faces) for v in variants]
    if cv:
        rows.append(cv_row(f"this run: {config_label(config)}", cv, manifest))
    comparison = pd.DataFrame(rows).set_index("configuration") if rows else pd.DataFrame()
    saved = save_result(run_dir, result, fs, manifest, classes, cv, comparison)
    clock.lap("save")
    return Study(run_dir, saved, fs, features, manifest, result, cv, len(check), gap, agreement, comparison,
                 clock.seconds)


class StageClock:
    """Wall time of consecutive stages: `lap(name)` ends the stage running since the last lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._start
        self._start = now


def add_verifier(fs: FeatureSet, result: TrainResult, every_face: pd.DataFrame, faces_dir: str | Path,
                 cache_dir: str | Path) -> tuple[TrainResult, dict[str, Any]]:
    """`result` whose model also outputs P(face), from the verifier fitted on the other folds' candidates
    (maskclf.candidates; `every_face`: the whole extraction's manifest), and the record config.json keeps of it;
    RuntimeError if the saved model's P(face) differs from the cached pipeline's on held-out candidates."""
    fold = fs.config.val_fold
    verifier, table, features = train_verifier(fs, every_face, faces_dir, fold, cache_dir)
    model = with_verifier(result.model, fs.frozen.output, verifier.fit)
    check = np.flatnonzero((table["fold"] == fold).to_numpy())[:END_TO_END_CROPS]
    load = candidate_loader(table, source_photos_dir(faces_dir), fs.config.image_size)
    crops = np.stack([load(int(i)) for i in check]).astype("float32")
    check_end_to_end(cached_probabilities(model, crops)[:, -1], face_probability(verifier.fit, features[check]),
                     fs.precision, "P(face)")
    return dataclasses.replace(result, model=model), verifier_record(verifier)


def save_result(
    run_dir: str | Path,
    result: TrainResult,
    fs: FeatureSet,
    manifest: pd.DataFrame,
    classes: dict[str, Any],
    cv: dict[str, Any] | None = None,
    comparison: pd.DataFrame | None = None,
) -> str:
    """Write the run folder (`runs.save_run`): model, config (with `output_classes`), history, metrics, CV scores and
    comparison table; return what happened to it."""
    config = fs.config
    metrics = {**result.metrics, "val_fold": config.val_fold, "n_faces": len(manifest), "n_val": len(result.val_index),
               "data_sha256": fs.data_sha256}
    run_config = {**config.to_dict(), **classes, **solver_identity(config.head), "data_sha256": fs.data_sha256,
                  "feature_precision": fs.precision,
                  "run_id": run_id(config, fs.data_sha256, fs.precision),
                  "weights_id": weights_id(config.weights),
                  "fine_tune_from": fs.upper.name if fs.upper is not None else None}
    oof = None
    if cv is not None:
        metrics["cv"] = {k: cv[k] for k in ("per_fold", "mean", "std")}
        oof = manifest[["crop_path", "source_image", "label", "fold"]].assign(p_without_mask=cv["oof_probability"])
    return save_run(run_dir, result.model, run_config, history=result.history, metrics=metrics,
                    cv_predictions=oof, comparison=comparison)


def cv_row(name: str, cv: dict[str, Any], manifest: pd.DataFrame) -> dict[str, Any]:
    """One line of a comparison table: a configuration's 5-fold mean and spread, and the out-of-fold share of the
    incorrectly worn masks called without_mask (`manifest`: the faces of `cv`, in its order)."""
    row: dict[str, Any] = {"configuration": name}
    for metric in ("accuracy", "roc_auc", "recall_without_mask"):
        row[f"{metric}_mean"] = cv["mean"][metric]
        row[f"{metric}_std"] = cv["std"][metric]
    incorrect = (manifest["original_label"] == INCORRECT).to_numpy()
    row["incorrect_mask_recall"] = float((np.asarray(cv["oof_probability"])[incorrect] >= 0.5).mean()) \
        if incorrect.any() else float("nan")
    return row


@dataclass
class Variant:
    """One configuration of the comparison table: its name, its faces and either its cached cross-validation or the
    features to cross-validate it on."""

    label: str
    faces: pd.DataFrame
    fs: FeatureSet | None
    """None when `cv` was read from the cache (its features are then never read), and once it is cross-validated."""
    cv: dict[str, Any] | None


def comparison_variants(
    faces_dir: str | Path,
    base: TrainConfig,
    variants: Sequence[dict[str, Any]],
    cache_dir: str | Path = FEATURES_DIR,
    base_features: FeatureSet | None = None,
    cached: bool = True,
) -> list[Variant]:
    """`base` updated with each dict of `variants`, named by the variant's `label` when it has one: the comparison
    table's configurations. A variant that changes nothing is left out (the run's own row stands for it).

    With `cached`, a variant whose cross-validation is cached comes with it and without features (a warm rerun reads
    no feature cache for it). Otherwise its features are some of `base_features`' views (every face, `base`'s) cut
    from them (`featureset.derived_features`: no second read or copy, and its L-BFGS folds share their passes with
    the run's in `crossval.cached_cross_validate_together`), or read or computed (`prepare_features`).
    """
    manifest = read_manifest(faces_dir)
    out = []
    for variant in variants:
        config = _config(base, variant)
        if config == base:
            continue
        label = variant.get("label") or config_label(config)
        faces = manifest.iloc[kept_faces(manifest, config.min_face)].reset_index(drop=True)
        if cached and base_features is not None:
            cv = cached_summary(config, base_features.data_sha256, base_features.precision, faces, cache_dir)
            if cv is not None:
                out.append(Variant(label, faces, None, cv))
                continue
        derived = derived_features(base_features, config) if base_features is not None else None
        fs, _ = restrict_faces(derived or prepare_features(manifest, faces_dir, config, cache_dir, verbose=0), manifest)
        out.append(Variant(label, faces, fs, None))
    return out


def _config(base: TrainConfig, variant: Mapping[str, Any]) -> TrainConfig:
    """`base` with a comparison variant's changes (another backbone brings its own native input size)."""
    overrides = _overrides(variant)
    if "backbone" in overrides:
        overrides = {"image_size": None, **overrides}
    return dataclasses.replace(base, **overrides)


def _overrides(variant: Mapping[str, Any]) -> dict[str, Any]:
    """A comparison variant's configuration changes: all of it but its `label`."""
    return {k: v for k, v in variant.items() if k != "label"}


# --------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration of `train`'s options: the ones not given take params.yaml's defaults."""
    return TrainConfig.from_params({**vars(args), "class_weight": False if args.no_class_weight else None})


def run(args: argparse.Namespace) -> int:
    """Run `train` from parsed arguments."""
    from .backbones import BackboneWeightsError
    from .data import DataNotFoundError

    try:
        config = config_from_args(args)
        study_params = stage_defaults("02_train")  # the study's steps: as in 02_train, unless switched off here
        out = Path(args.out) if args.out else None
        study = run_study(config, args.faces, out.parent if out else MODELS_DIR, out.name if out else None,
                          cross_validate=study_params["cross_validate"] and not args.no_cv,
                          compare=[] if args.no_compare else study_params["compare"] or [], verbose=1)
    except (BackboneWeightsError, DataError, DataNotFoundError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fs, m, cv = study.fs, study.result.metrics, study.cv
    print(f"features: {'cache hit' if fs.cache_hit else 'computed'} in {fs.seconds:.1f} s")
    print(f"fold {config.val_fold}: accuracy {m['accuracy']:.4f}, ROC AUC {m['roc_auc']:.4f}, "
          f"recall without_mask {m['recall']['without_mask']:.4f}")
    if cv:
        print("5-fold mean: " + ", ".join(f"{k} {v:.4f}" for k, v in cv["mean"].items()))
        print("5-fold std:  " + ", ".join(f"{k} {v:.4f}" for k, v in cv["std"].items()))
    print(f"end-to-end model vs cached pipeline ({fs.precision} features): max difference {study.end_to_end_gap:.2e}, "
          f"same label on {study.end_to_end_agreement:.4f} of {study.end_to_end_crops} validation crops")
    if len(study.comparison):
        print(study.comparison.round(4).to_string())
    print(f"model: {study.run_dir} ({study.saved})")
    print("seconds: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in study.seconds.items()))
    return 0
