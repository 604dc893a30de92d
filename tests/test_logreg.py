"""The L-BFGS logistic regression head against scikit-learn's, on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from maskclf import logreg
from maskclf.logreg import Subset, fit_logistic, standardisation


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 30)) * rng.uniform(0.1, 50, size=30) + rng.normal(size=30) * 10
    logits = x[:, :3] / x[:, :3].std(axis=0) @ np.array([[2.0, -1, 0], [0, 1.5, -1], [-1, 0, 2]])
    labels = np.array([rng.choice(3, p=np.exp(v) / np.exp(v).sum()) for v in logits])
    x[:, 5] = 3.0  # a constant feature
    return x, labels


def rows(n: int, idx, value: float | np.ndarray = 1.0, views: int = 1) -> np.ndarray:
    """Sample weights (views, faces): `value` on faces `idx` of every view, 0 elsewhere."""
    w = np.zeros((views, n))
    w[:, idx] = value
    return w


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_scikit_learn(data, weighted):
    x, labels = data
    weights = np.where(labels == 2, 3.0, 1.0) if weighted else np.ones(len(labels))
    [fit] = fit_logistic(x, labels, 3, c=0.05, subsets=[Subset(weights[None])], tol=1e-6)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(scaler.transform(x), labels, sample_weight=weights)
    assert fit.converged
    np.testing.assert_allclose(fit.probabilities(x), reference.predict_proba(scaler.transform(x)), atol=5e-4)


def scipy_objective(x: np.ndarray, labels: np.ndarray, w: np.ndarray, c: float) -> float:
    """The optimum of the objective found by scipy's L-BFGS-B on a standardised float64 copy, to a tight tolerance."""
    mean, scale = standardisation(x)
    z = (x - mean) / scale
    onehot = np.eye(3)[labels]
    total = w.sum()

    def f(params):
        kernel, bias = params[:-3].reshape(-1, 3), params[-3:]
        logp = log_softmax(z @ kernel + bias, axis=1)
        g = (np.exp(logp) - onehot) * w[:, None] / total
        grad = np.concatenate([(z.T @ g + kernel / (c * total)).ravel(), g.sum(axis=0)])
        return -(w * (onehot * logp).sum(axis=1)).sum() / total + (kernel**2).sum() / (2 * c * total), grad

    return minimize(f, np.zeros(z.shape[1] * 3 + 3), jac=True, method="L-BFGS-B",
                    options={"maxiter": 10000, "gtol": 1e-10, "ftol": 1e-15}).fun


def test_reaches_the_same_optimum_as_scipy(data):
    x, labels = data
    w = np.where(labels == 2, 3.0, 1.0)
    [fit] = fit_logistic(x, labels, 3, c=0.05, subsets=[Subset(w[None])])
    reference = scipy_objective(x, labels, w, 0.05)
    assert fit.converged and abs(fit.objective - reference) <= 1e-6 * abs(reference)


def test_a_fit_in_a_batch_of_folds_is_the_fit_alone(data, monkeypatch):
    """Folds share the passes over the rows, not their parameters; views are rows of their own."""
    monkeypatch.setattr(logreg, "CHUNK_ROWS", 64)  # several chunks per view
    x, labels = data
    views = np.stack([x, x[:, ::-1].copy() * 0.9])  # two "views" of 400 faces
    folds = np.arange(400) % 4
    subsets = [Subset(rows(400, np.flatnonzero(folds != k), views=2), np.flatnonzero(folds == k)) for k in range(4)]
    binary = (labels > 0).astype(int)
    merge = np.array([[1, 0], [0, 1], [0, 1]])
    batch = fit_logistic(views, labels, 3, 0.1, subsets, val_labels=binary, merge=merge)
    [alone] = fit_logistic(views, labels, 3, 0.1, subsets[2:3], val_labels=binary, merge=merge)
    assert batch[2].objective == pytest.approx(alone.objective, rel=1e-9)
    np.testing.assert_allclose(batch[2].kernel, alone.kernel, rtol=1e-5, atol=1e-7)
    assert len(batch[2].history["val_loss"]) == len(alone.history["val_loss"])
    assert not np.array_equal(batch[1].kernel, alone.kernel), "other folds learn from other rows"
    # a subset of rows of two views is the same problem as those rows stacked in one view
    train = np.flatnonzero(folds != 2)
    [stacked] = fit_logistic(np.concatenate([views[0, train], views[1, train]]), np.tile(labels[train], 2), 3, 0.1,
                             [Subset(np.ones((1, 2 * len(train))))])
    assert stacked.objective == pytest.approx(alone.objective, rel=1e-6)


def test_history_per_iteration_on_merged_classes(data):
    x, labels = data
    merge = np.array([[1, 0], [0, 1], [0, 1]])
    binary = merge[labels].argmax(axis=1)
    [fit] = fit_logistic(x, labels, 3, c=1.0, subsets=[Subset(rows(400, np.arange(300)), np.arange(300, 400))],
                         val_labels=binary, merge=merge)
    h = fit.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"} and len(set(map(len, h.values()))) == 1
    assert h["loss"][-1] < h["loss"][0] and h["accuracy"][-1] > 0.6
    p = fit.probabilities(x[300:]) @ merge
    assert h["val_accuracy"][-1] == pytest.approx(float((p.argmax(axis=1) == binary[300:]).mean()))
    train_p = np.clip(fit.probabilities(x[:300]) @ merge, 1e-12, 1)
    assert h["loss"][-1] == pytest.approx(float(-np.log(train_p[np.arange(300), binary[:300]]).mean()), rel=1e-5)


def test_constant_features_and_bad_c(data):
    x, labels = data
    mean, scale = standardisation(x)
    assert scale[5] == 1.0 and np.all(scale > 0)
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic(x, labels, 3, c=0.0, subsets=[Subset(np.ones((1, len(labels))))])


def test_each_subset_s_standardisation_is_that_of_its_own_rows_even_far_from_zero(monkeypatch):
    """The sums are matrix products in float32 chunks; the squares are taken about the mean of all rows, so a feature
    whose mean is a thousand times its spread keeps its variance."""
    monkeypatch.setattr(logreg, "CHUNK_ROWS", 64)  # several chunks per view
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 300, 5)).astype(np.float32)
    x[..., 0] = 1000 + x[..., 0]  # far from zero
    x[..., 1] = 7.0  # constant
    masks = [rng.random((2, 300)) < share for share in (0.2, 0.5, 0.9)]
    for mask, (mean, scale) in zip(masks, logreg._subset_standardisations(x, masks)):
        rows = x[mask].astype(np.float64)
        np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-6)
        expected = rows.std(axis=0)
        np.testing.assert_allclose(scale[[0, 2, 3, 4]], expected[[0, 2, 3, 4]], rtol=1e-4)
        assert scale[1] == 1.0, "a constant feature is left unscaled"


def test_the_correction_pairs_are_kept_in_float32_and_the_run_says_so(data, monkeypatch):
    x, labels = data
    solvers = []

    class Recorded(logreg._LBFGS):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            solvers.append(self)

    monkeypatch.setattr(logreg, "_LBFGS", Recorded)
    [fit] = fit_logistic(x, labels, 3, c=0.05, subsets=[Subset(np.ones((1, len(labels))))])
    pairs = [pair for solver in solvers for pair in solver.pairs]
    assert fit.converged and pairs and all(s.dtype == y.dtype == np.float32 for s, y, _ in pairs)
    assert logreg.solver_identity("lbfgs") == {"lbfgs_memory": logreg.MEMORY, "lbfgs_pairs": "float32"}
    assert logreg.solver_identity("adam") == {}


def test_bfloat16_features_fit_exactly_as_their_float32_values(data, monkeypatch):
    """Features held in bfloat16 (a bfloat16 pass's) are widened a chunk at a time, into a buffer the chunks share:
    the fits are those of the same values in float32, bit for bit, in every chunk and view."""
    from ml_dtypes import bfloat16

    monkeypatch.setattr(logreg, "CHUNK_ROWS", 64)  # several chunks per view, the last one short
    x, labels = data
    views = np.stack([x, x[:, ::-1] * 0.9]).astype(bfloat16)
    folds = np.arange(400) % 4
    subsets = [Subset(rows(400, np.flatnonzero(folds != k), views=2), np.flatnonzero(folds == k)) for k in range(2)]
    held = fit_logistic(views, labels, 3, 0.1, subsets)
    widened = fit_logistic(views.astype(np.float32), labels, 3, 0.1, subsets)
    assert logreg.compute_dtype(views) == np.float32
    for a, b in zip(held, widened):
        assert a.objective == b.objective
        np.testing.assert_array_equal(a.kernel, b.kernel)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.scale, b.scale)
