"""Four untried attempts at the incorrectly worn mask (issue #19), on the default 5 grouped folds.

1. finer spatial pooling: a 3x3 grid (average and max) of the last stage's 7x7 map added to the
   band features, original view only, against the band features of the original view alone;
2. a one-hidden-layer MLP head on the saved configuration's band features (all cached views),
   against the L-BFGS head;
3. fine-tuning the last residual block (conv5_block3) on cached activations at its input,
   original view only, fold 0 only, against the frozen single-view baseline on fold 0;
4. a multiplier on P(mask_weared_incorrect) chosen by inner cross-validation on the training
   folds of each outer fold, on top of the saved configuration's L-BFGS heads.

Every fixed setting is a module constant below, set before any fold result was seen. The saved
configuration's cached features are read from --cache-dir (never written); what this script
computes (one backbone pass of the original view, float16, and each attempt's rows) goes
under --scratch. MASKCLF_FEATURES_DIR is set to --cache-dir, where the detector boxes are cached
too. Prints the table (docs/results.md, "Four more attempts").

    PYTHONPATH=. .venv/bin/python scripts/incorrect_mask_attempts.py \\
        --faces data/interim/face-mask-detection --cache-dir data/processed/features
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

GRID = 3
"""Attempt 1: the last stage's 7x7 map pooled over a GRID x GRID grid of overlapping cells (rows and columns
[0,3), [2,5), [4,7), as adaptive pooling cuts 7 into 3), average and max of each cell."""
MLP_HIDDEN, MLP_DROPOUT, MLP_LR, MLP_BATCH, MLP_EPOCHS, MLP_PATIENCE = 256, 0.5, 1e-3, 256, 30, 4
"""Attempt 2: standardised features -> Dense(256, relu) -> Dropout(0.5) -> softmax over the 3 classes, Adam 1e-3,
batches of 256, at most 30 epochs, stopped on the early-stopping photos' loss (patience 4, best weights kept);
class weights as the L-BFGS head's (balanced, incorrect x3)."""
FT_EPOCHS, FT_LR, FT_BATCH, FT_FOLD = 3, 1e-4, 32, 0
"""Attempt 3: conv5_block3 trained (BatchNorm frozen) with an average-pooled softmax head initialised by the L-BFGS
fit on the frozen block's pooled output, Adam 1e-4, batches of 32, 3 epochs, fold 0 only."""
MULTIPLIERS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
"""Attempt 4: P(mask_weared_incorrect) is multiplied by m and the three probabilities renormalised; m from this
grid. Rule a: the m of highest inner out-of-fold accuracy (ties: the smaller m). Rule b: the largest m whose inner
accuracy is at most TOLERANCE below m=1's."""
TOLERANCE = 0.002
CUT_LAYER, TOP_LAYER = "conv5_block2_out", "conv5_block3_out"
METRICS = ("accuracy", "roc_auc", "recall_without_mask")


# --------------------------------------------------------------------------- data and the saved configuration


def load_saved(faces: str, cache_dir: str) -> tuple[Any, Any]:
    """The saved configuration's FeatureSet (every cached view) and the manifest, all from the cache."""
    from maskclf.config import load_params
    from maskclf.featureset import prepare_features
    from maskclf.trainconfig import TrainConfig
    from maskclf.data import read_manifest

    config = TrainConfig.from_params(load_params())
    manifest = read_manifest(faces)
    fs = prepare_features(manifest, faces, config, cache_dir=cache_dir, verbose=0)
    if not fs.cache_hit:
        raise SystemExit("the saved configuration's features were not all cached")
    return fs, manifest


@dataclass
class Folds:
    """The outer folds as crossval.train_folds makes them: held-out faces, fitting faces, early-stopping faces."""

    ids: list[int]
    val: list[np.ndarray]
    fit: list[np.ndarray]
    stop: list[np.ndarray]


def outer_folds(manifest, seed: int) -> Folds:
    """crossval.train_folds' splits: each fold held out, a grouped tenth of the rest kept for early stopping."""
    from maskclf.splits import early_stopping_split, train_val_indices

    ids = [int(k) for k in sorted(manifest["fold"].unique())]
    val, fit, stop = [], [], []
    for k in ids:
        train_idx, val_idx = train_val_indices(manifest["fold"], k)
        f, s = early_stopping_split(manifest["label"], manifest["source_image"], train_idx, seed=seed)
        val.append(val_idx), fit.append(f), stop.append(s)
    return Folds(ids, val, fit, stop)


def sample_weights(labels, config, fit_idx: np.ndarray, n_views: int, available: np.ndarray | None) -> np.ndarray:
    """(views, faces) L-BFGS sample weights of the faces `fit_idx`, as train's heads weigh them."""
    from maskclf.labels import head_class_weights

    weight = np.zeros((n_views, len(labels.values)))
    per_class = head_class_weights(labels.values[fit_idx], labels.names, config)
    weight[:, fit_idx] = np.array(list(per_class.values()))[labels.values[fit_idx]]
    return weight if available is None else weight * available


def fit_lbfgs(x: np.ndarray, labels, config, fit_sets: Sequence[np.ndarray], available: np.ndarray | None = None):
    """One L-BFGS head (maskclf.logreg, the saved head's objective and C) per training set, fitted in lockstep."""
    from maskclf.logreg import Subset, fit_logistic

    subsets = [Subset(sample_weights(labels, config, idx, x.shape[0], available)) for idx in fit_sets]
    return fit_logistic(x, labels.values, len(labels.names), config.head_c, subsets)


def binary_p(p3: np.ndarray, labels) -> np.ndarray:
    """P(without_mask) from probabilities over the trained classes."""
    return np.clip(p3 @ labels.merge[:, 1], 0.0, 1.0)  # float32 sums may pass 1 by a rounding


# --------------------------------------------------------------------------- the table


def summary_row(name: str, manifest, y: np.ndarray, folds: Sequence[tuple[int, np.ndarray, np.ndarray]],
                seconds: float, cost: str = "") -> dict[str, Any]:
    """Mean and spread over folds of (fold, held-out faces, P(without_mask)), out-of-fold incorrect-mask shares."""
    from maskclf.answers import INCORRECT
    from maskclf.data import face_size
    from maskclf.evaluate import binary_metrics, fold_metrics, summarize_folds

    oof = np.full(len(manifest), np.nan)
    per_fold = []
    for k, idx, p in folds:
        oof[idx] = p
        per_fold.append({"fold": k, **fold_metrics(binary_metrics(y[idx], p))})
    table = summarize_folds(per_fold)
    seen = ~np.isnan(oof)
    incorrect = (manifest["original_label"] == INCORRECT).to_numpy() & seen
    large = incorrect & (face_size(manifest) >= 32).to_numpy()
    row = {"attempt": name, "folds": [k for k, _, _ in folds], "seconds": round(seconds, 1), "cost": cost,
           "incorrect": float((oof[incorrect] >= 0.5).mean()), "n_incorrect": int(incorrect.sum()),
           "incorrect_32": float((oof[large] >= 0.5).mean()), "n_incorrect_32": int(large.sum())}
    for m in METRICS:
        row[m] = float(table.loc["mean", m])
        row[m + "_std"] = float(table.loc["std", m]) if len(folds) > 1 else float("nan")
    return row


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """The rows as a Markdown table."""
    print("| attempt | folds | accuracy | ROC AUC | recall of without_mask | incorrect masks called without_mask "
          "| the same, faces >= 32 px | cost |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        folds = "all 5" if len(r["folds"]) == 5 else ",".join(map(str, r["folds"]))
        acc = f"{r['accuracy']:.4f}" + ("" if np.isnan(r["accuracy_std"]) else f" ± {r['accuracy_std']:.4f}")
        print(f"| {r['attempt']} | {folds} | {acc} | {r['roc_auc']:.4f} | {r['recall_without_mask']:.4f} "
              f"| {r['incorrect']:.3f} ({r['n_incorrect']}) | {r['incorrect_32']:.3f} ({r['n_incorrect_32']}) "
              f"| {r['cost'] or str(r['seconds']) + ' s'} |")


def cached_rows(path: Path, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """An attempt's rows from `path` (scratch), computed and written there the first time."""
    if path.is_file():
        return json.loads(path.read_text())
    rows = compute()
    path.write_text(json.dumps(rows, indent=1, default=float))
    return rows


def peak_rss_gib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- one backbone pass of the original view


def grid_pool(fmap: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(batch, h, w, c) -> (batch, grid*grid*2*c): average then max of each cell of an adaptive grid x grid."""
    h, w = fmap.shape[1:3]
    rows = [(i * h // grid, -(-(i + 1) * h // grid)) for i in range(grid)]
    cols = [(j * w // grid, -(-(j + 1) * w // grid)) for j in range(grid)]
    cells = [fmap[:, r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]
    return np.concatenate([c.mean(axis=(1, 2)) for c in cells] + [c.max(axis=(1, 2)) for c in cells], axis=1)


def original_view_pass(manifest, scratch: Path, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, float]:
    """The original view's activations at conv5_block3's input (float16, memory-mapped) and the 3x3 grid of its output.

    Computed once into `scratch` (one ResNet-50 pass over every crop), then read back; returns
    (activations (faces, 7, 7, 2048), grid features (faces, 2*9*2048), seconds of the pass).
    """
    acts_file, grid_file, info_file = scratch / "conv5_block2_out.npy", scratch / "grid3.npy", scratch / "pass.json"
    if not info_file.is_file():
        seconds = _backbone_pass(manifest, acts_file, grid_file, batch_size)
        info_file.write_text(json.dumps({"seconds": seconds, "crops": manifest["crop_path"].tolist()}))
    info = json.loads(info_file.read_text())
    if info["crops"] != manifest["crop_path"].tolist():
        raise SystemExit(f"{scratch}: the cached pass is of other crops; delete it")
    return np.load(acts_file, mmap_mode="r"), np.load(grid_file), info["seconds"]


def resnet_parts() -> tuple[Any, Any, Any]:
    """ResNet-50 (ImageNet) split before conv5_block3: (raw crop -> conv5_block2_out, that -> conv5_block3_out, base)."""
    import keras
    from maskclf.backbones import get_backbone

    spec = get_backbone("resnet50")
    base = spec.build("imagenet", spec.image_size)
    base.trainable = False
    inputs = keras.Input((spec.image_size, spec.image_size, 3))
    cut = base.get_layer(CUT_LAYER).output
    lower = keras.Model(inputs, keras.Model(base.input, cut)(spec.preprocess("preprocess")(inputs), training=False))
    upper_in = keras.Input(cut.shape[1:])
    x, skip = upper_in, upper_in
    layers = [l for l in base.layers if l.name.startswith("conv5_block3_")]
    for layer in layers[:-2]:  # conv1..conv3 (conv, bn, relu); then add and out
        x = layer(x)
    out = layers[-1](layers[-2]([skip, x]))
    upper = keras.Model(upper_in, out, name="conv5_block3")
    return lower, upper, base


def _backbone_pass(manifest, acts_file: Path, grid_file: Path, batch_size: int) -> float:
    """Write every crop's activations and grid features batch by batch into memory-mapped files; the seconds."""
    from maskclf.features import crop_dataset

    t0 = time.perf_counter()
    lower, upper, _ = resnet_parts()
    n = len(manifest)
    acts = np.lib.format.open_memmap(acts_file, mode="w+", dtype=np.float16, shape=(n, 7, 7, 2048))
    grid = np.lib.format.open_memmap(grid_file, mode="w+", dtype=np.float32, shape=(n, GRID * GRID * 2 * 2048))
    start = 0
    for batch in crop_dataset(list(manifest["crop_file"]), 224, batch_size):
        a = lower(batch, training=False)
        top = upper(a, training=False).numpy()
        acts[start:start + len(top)] = a.numpy().astype(np.float16)
        grid[start:start + len(top)] = grid_pool(top)
        start += len(top)
        print(f"\r{start}/{n} crops, {time.perf_counter() - t0:.0f} s", end="", file=sys.stderr, flush=True)
    acts.flush(), grid.flush()
    del acts, grid
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- attempt 1: finer spatial pooling


def attempt_pooling(fs, manifest, labels, y: np.ndarray, folds: Folds, grid: np.ndarray,
                    pass_seconds: float) -> list[dict[str, Any]]:
    """The original view's band features, then the same plus the 3x3 grid of the last stage, same L-BFGS head."""
    rows = []
    bands = np.ascontiguousarray(fs.pooled[:1])
    for name, x, extra in (("1. band features, original view only (baseline)", bands, ""),
                           ("1. + 3x3 grid (avg, max) of the last stage, original view only",
                            np.concatenate([bands, grid[None].astype(bands.dtype)], axis=-1),
                            f"; the backbone pass of the original view {pass_seconds:.0f} s")):
        t0 = time.perf_counter()
        fits = fit_lbfgs(x, labels, fs.config, folds.fit)
        seconds = time.perf_counter() - t0
        preds = [(k, idx, binary_p(f.probabilities(x[0, idx]), labels)) for k, idx, f in zip(folds.ids, folds.val, fits)]
        cost = f"{x.shape[-1]:,} features, 5 head fits {seconds:.0f} s{extra}"
        rows.append(summary_row(name, manifest, y, preds, seconds, cost))
        rows.append(summary_row(name + f", fold {FT_FOLD} only", manifest, y, fold_subset(preds, FT_FOLD), seconds, cost))
        del x
    return rows


# --------------------------------------------------------------------------- attempt 4 (and the L-BFGS baseline of 2)


def adjusted_p(p3: np.ndarray, labels, m: float) -> np.ndarray:
    """P(without_mask) after multiplying P(mask_weared_incorrect) by `m` and renormalising."""
    from maskclf.answers import INCORRECT

    q = p3.copy()
    q[:, labels.names.index(INCORRECT)] *= m
    return binary_p(q / q.sum(axis=1, keepdims=True), labels)


def choose_multipliers(inner: list[tuple[np.ndarray, np.ndarray]], labels) -> tuple[float, float]:
    """Rules a and b (see MULTIPLIERS) on inner out-of-fold (3-class probabilities, binary labels)."""
    p3 = np.concatenate([p for p, _ in inner])
    yb = np.concatenate([t for _, t in inner])
    acc = np.array([((adjusted_p(p3, labels, m) >= 0.5) == yb).mean() for m in MULTIPLIERS])
    rule_a = MULTIPLIERS[int(np.argmax(acc))]
    rule_b = max(m for m, a in zip(MULTIPLIERS, acc) if a >= acc[0] - TOLERANCE)
    return rule_a, rule_b


def attempt_decision_rule(fs, manifest, labels, y: np.ndarray, folds: Folds) -> tuple[list[dict[str, Any]], list]:
    """The saved configuration's L-BFGS heads (the baseline row), then a multiplier on P(incorrect) chosen inside
    each outer fold by inner CV on its training folds: one head per pair of held-out folds (10 fits serve the 20
    inner folds, on every face of the other three folds), fitted in lockstep with the 5 outer heads.

    Also returns the outer fits' held-out 3-class probabilities, for attempt 2's comparison."""
    fold_of = manifest["fold"].to_numpy()
    pairs = [(a, b) for i, a in enumerate(folds.ids) for b in folds.ids[i + 1:]]
    pair_sets = [np.flatnonzero(~np.isin(fold_of, pair)) for pair in pairs]
    t0 = time.perf_counter()
    fits = fit_lbfgs(fs.pooled, labels, fs.config, folds.fit + pair_sets, fs.available())
    seconds = time.perf_counter() - t0
    outer, pair_fit = fits[:len(folds.ids)], dict(zip(pairs, fits[len(folds.ids):]))
    outer_p3 = [f.probabilities(fs.pooled[0, idx]) for f, idx in zip(outer, folds.val)]
    base, rule_a, rule_b, chosen = [], [], [], []
    for k, idx, p3 in zip(folds.ids, folds.val, outer_p3):
        inner = [(pair_fit[tuple(sorted((k, j)))].probabilities(fs.pooled[0, fold_of == j]), y[fold_of == j])
                 for j in folds.ids if j != k]
        m_a, m_b = choose_multipliers(inner, labels)
        chosen.append((m_a, m_b))
        base.append((k, idx, binary_p(p3, labels)))
        rule_a.append((k, idx, adjusted_p(p3, labels, m_a)))
        rule_b.append((k, idx, adjusted_p(p3, labels, m_b)))
    cost = f"15 head fits in lockstep {seconds:.0f} s"
    rows = [summary_row("L-BFGS head, saved configuration, all 5 views (baseline, recomputed)", manifest, y, base,
                        seconds, f"5 head fits (in the lockstep below)"),
            summary_row("4a. x m on P(incorrect), m of best inner accuracy (m per fold: "
                        + ", ".join(f"{a:g}" for a, _ in chosen) + ")", manifest, y, rule_a, seconds, cost),
            summary_row(f"4b. x m on P(incorrect), largest m within {TOLERANCE} of m=1's inner accuracy (m per fold: "
                        + ", ".join(f"{b:g}" for _, b in chosen) + ")", manifest, y, rule_b, seconds, cost)]
    return rows, outer_p3


# --------------------------------------------------------------------------- attempt 2: an MLP head


def mlp_model(n_features: int, n_classes: int, mean: np.ndarray, scale: np.ndarray):
    """Standardisation, one hidden ReLU layer, dropout, softmax (see MLP_HIDDEN...)."""
    import keras
    from maskclf.layers import Standardize

    inputs = keras.Input((n_features,))
    standardize = Standardize(n_features)
    x = standardize(inputs)
    standardize.set_weights([mean.astype("float32"), scale.astype("float32")])
    x = keras.layers.Dense(MLP_HIDDEN, activation="relu")(x)
    x = keras.layers.Dropout(MLP_DROPOUT)(x)
    model = keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(MLP_LR), keras.losses.SparseCategoricalCrossentropy())
    return model


def chunked_standardisation(x: np.ndarray, rows: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of the (view, face) `rows` of `x`, without a copy of them."""
    total, squares = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
    for i in range(0, len(rows), chunk):
        part = x[rows[i:i + chunk, 0], rows[i:i + chunk, 1]].astype(np.float64)
        total += part.sum(axis=0)
        squares += (part ** 2).sum(axis=0)
    mean = total / len(rows)
    scale = np.sqrt(np.maximum(squares / len(rows) - mean ** 2, 0.0))
    return mean, np.where(scale > 1e-6, scale, 1.0)  # maskclf.logreg's rule for (nearly) constant features


def row_batches(x: np.ndarray, rows: np.ndarray, targets: np.ndarray, weights: np.ndarray, seed: int):
    """A Keras PyDataset of shuffled batches gathered from `x` (views, faces, features) at (view, face) `rows`."""
    import keras

    class Rows(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch, self.order = 0, np.arange(len(rows))
            self.on_epoch_end()

        def __len__(self) -> int:
            return -(-len(rows) // MLP_BATCH)

        def __getitem__(self, i: int):
            b = np.sort(self.order[i * MLP_BATCH:(i + 1) * MLP_BATCH])
            return x[rows[b, 0], rows[b, 1]], targets[b], weights[b].astype(np.float32)

        def on_epoch_end(self) -> None:
            self.order = np.random.default_rng(seed + self.epoch).permutation(len(rows))
            self.epoch += 1

    return Rows()


def fit_mlp(fs, labels, fit_idx: np.ndarray, stop_idx: np.ndarray) -> tuple[Any, int]:
    """An MLP head on every available view of the faces `fit_idx`, stopped on the original view of `stop_idx`.

    Batches are gathered from the feature array as they are needed: no copy of the training rows."""
    import keras
    from maskclf.labels import head_class_weights

    keras.utils.set_random_seed(fs.config.train_seed)
    views, faces = np.nonzero(fs.available()[:, fit_idx] > 0)
    rows = np.stack([views, fit_idx[faces]], axis=1)
    targets = labels.values[rows[:, 1]]
    per_class = head_class_weights(targets, labels.names, fs.config)
    weights = np.array(list(per_class.values()))[targets]
    model = mlp_model(fs.pooled.shape[-1], len(labels.names), *chunked_standardisation(fs.pooled, rows))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=MLP_PATIENCE, restore_best_weights=True)
    history = model.fit(row_batches(fs.pooled, rows, targets, weights, fs.config.train_seed), epochs=MLP_EPOCHS,
                        verbose=0, callbacks=[stop],
                        validation_data=(fs.pooled[0, stop_idx], labels.values[stop_idx]))
    return model, len(history.history["loss"])


def attempt_mlp(fs, manifest, labels, y: np.ndarray, folds: Folds) -> list[dict[str, Any]]:
    """The MLP head on the saved configuration's features, one per outer fold."""
    preds, epochs, t0 = [], [], time.perf_counter()
    for k, val, fit, stop in zip(folds.ids, folds.val, folds.fit, folds.stop):
        model, n = fit_mlp(fs, labels, fit, stop)
        preds.append((k, val, binary_p(model.predict(fs.pooled[0, val], verbose=0), labels)))
        epochs.append(n)
        print(f"MLP fold {k}: {n} epochs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    return [summary_row(f"2. MLP head ({MLP_HIDDEN} ReLU, dropout {MLP_DROPOUT}, Adam), all 5 views", manifest, y,
                        preds, seconds, f"5 fits {seconds:.0f} s ({', '.join(map(str, epochs))} epochs)")]


# --------------------------------------------------------------------------- attempt 3: fine-tuning conv5_block3


def pooled_top(upper, acts: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Global average of the frozen conv5_block3's output for activations at its input (float16 in, float32 out)."""
    out = [upper(acts[i:i + batch_size].astype(np.float32), training=False).numpy().mean(axis=(1, 2))
           for i in range(0, len(acts), batch_size)]
    return np.concatenate(out)


def fine_tune_model(upper, fit) -> Any:
    """A trainable copy of conv5_block3 (BatchNorm frozen) -> average pooling -> softmax initialised from `fit`."""
    import keras

    block = keras.models.clone_model(upper)
    block.set_weights(upper.get_weights())
    block.trainable = True
    for layer in block.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    inputs = keras.Input(upper.input.shape[1:])
    dense = keras.layers.Dense(fit.kernel.shape[1], activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(block(inputs, training=False)))
    kernel = fit.kernel / fit.scale[:, None]
    dense.set_weights([kernel.astype("float32"), (fit.bias - (fit.mean / fit.scale) @ fit.kernel).astype("float32")])
    return keras.Model(inputs, outputs)


def train_epoch(model, optimizer, acts: np.ndarray, targets: np.ndarray, weights: np.ndarray, seed: int) -> float:
    """One epoch of Adam over the faces of `acts` (float16, any order) in shuffled batches; returns its seconds."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x, t, w):
        with tf.GradientTape() as tape:
            loss = loss_fn(t, model(x, training=False), sample_weight=w)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    t0 = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(targets))
    for i in range(0, len(order), FT_BATCH):
        b = np.sort(order[i:i + FT_BATCH])
        step(acts[b].astype(np.float32), targets[b], weights[b].astype(np.float32))
    return time.perf_counter() - t0


def attempt_fine_tune(fs, manifest, labels, y: np.ndarray, folds: Folds, acts: np.ndarray,
                      epochs: int = FT_EPOCHS) -> list[dict[str, Any]]:
    """Fold 0: the frozen block's average-pooled L-BFGS head, then conv5_block3 and that head trained `epochs` epochs."""
    import keras
    from maskclf.labels import head_class_weights

    i = folds.ids.index(FT_FOLD)
    k, val, fit_idx = FT_FOLD, folds.val[i], np.sort(folds.fit[i])
    _, upper, _ = resnet_parts()
    t0 = time.perf_counter()
    pooled = pooled_top(upper, acts)
    frozen_pass = time.perf_counter() - t0
    fit = fit_lbfgs(pooled[None], labels, fs.config, [fit_idx])[0]
    frozen = summary_row("3. frozen conv5_block3, average pooling, L-BFGS head (fine-tuning's start), original view",
                         manifest, y, [(k, val, binary_p(fit.probabilities(pooled[val]), labels))],
                         time.perf_counter() - t0, f"frozen block on every face {frozen_pass:.0f} s")
    keras.utils.set_random_seed(fs.config.train_seed)
    model = fine_tune_model(upper, fit)
    optimizer = keras.optimizers.Adam(FT_LR)
    train_acts = np.asarray(acts[fit_idx])  # float16 in memory: about 0.65 GB
    per_class = head_class_weights(labels.values[fit_idx], labels.names, fs.config)
    weights = np.array(list(per_class.values()))[labels.values[fit_idx]]
    seconds = [train_epoch(model, optimizer, train_acts, labels.values[fit_idx], weights, fs.config.train_seed + e)
               for e in range(epochs)]
    del train_acts
    p3 = np.concatenate([model(acts[val[j:j + 64]].astype(np.float32), training=False).numpy()
                         for j in range(0, len(val), 64)])
    cost = (f"{np.mean(seconds):.0f} s per epoch ({len(fit_idx)} faces; epochs "
            + ", ".join(f"{s:.0f}" for s in seconds) + f" s), peak RSS {peak_rss_gib():.1f} GiB")
    tuned = summary_row(f"3. conv5_block3 fine-tuned {epochs} epochs (Adam {FT_LR:g}), original view",
                        manifest, y, [(k, val, binary_p(p3, labels))], sum(seconds), cost)
    return [frozen, tuned]


def fold_subset(row_folds: list[tuple[int, np.ndarray, np.ndarray]], fold: int):
    """The (fold, faces, P) triple of `fold` only."""
    return [t for t in row_folds if t[0] == fold]


# --------------------------------------------------------------------------- main

ATTEMPTS = ("4", "1", "3", "2")
"""Run order: 4 first (it gives the L-BFGS baseline), the MLP last (the longest)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default="data/interim/face-mask-detection", help="extracted faces (faces.csv)")
    parser.add_argument("--cache-dir", default="data/processed/features", help="the saved configuration's feature cache")
    parser.add_argument("--scratch", default="scratch/incorrect-attempts", help="where this script writes")
    parser.add_argument("--attempts", nargs="+", default=list(ATTEMPTS), choices=ATTEMPTS)
    parser.add_argument("--ft-epochs", type=int, default=FT_EPOCHS, help="fine-tuning epochs (1: the cost only)")
    return parser.parse_args(argv)


def run_attempts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every asked-for attempt's rows, each cached in the scratch folder."""
    from maskclf.evaluate import encode_labels
    from maskclf.train import training_labels

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    fs, manifest = load_saved(args.faces, args.cache_dir)
    labels, y = training_labels(manifest, fs.config.labels), encode_labels(manifest["label"])
    folds = outer_folds(manifest, fs.config.train_seed)
    rows = []
    for attempt in [a for a in ATTEMPTS if a in args.attempts]:
        path = scratch / f"attempt{attempt}.json"
        if attempt == "4":
            rows += cached_rows(path, lambda: attempt_decision_rule(fs, manifest, labels, y, folds)[0])
        elif attempt == "1":
            _, grid, seconds = original_view_pass(manifest, scratch)
            rows += cached_rows(path, lambda: attempt_pooling(fs, manifest, labels, y, folds, grid, seconds))
        elif attempt == "3":
            acts, _, _ = original_view_pass(manifest, scratch)
            path = scratch / f"attempt3-{args.ft_epochs}epochs.json"
            rows += cached_rows(path, lambda: attempt_fine_tune(fs, manifest, labels, y, folds, acts, args.ft_epochs))
        else:
            rows += cached_rows(path, lambda: attempt_mlp(fs, manifest, labels, y, folds))
        print(f"attempt {attempt} done, peak RSS {peak_rss_gib():.1f} GiB", file=sys.stderr, flush=True)
    return rows


def cpu_name() -> str:
    """The CPU's model name, as lscpu gives it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or read back) the asked-for attempts and print their table."""
    args = parse_args(argv)
    os.environ["MASKCLF_FEATURES_DIR"] = str(Path(args.cache_dir).resolve())  # before maskclf is imported
    rows = run_attempts(args)
    print_table(rows)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; peak RSS of this run {peak_rss_gib():.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
