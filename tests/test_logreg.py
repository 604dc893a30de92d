"""The L-BFGS logistic regression head against scikit-learn's, on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from maskclf.logreg import fit_logistic, standardisation


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 30)) * rng.uniform(0.1, 50, size=30) + rng.normal(size=30) * 10
    logits = x[:, :3] / x[:, :3].std(axis=0) @ np.array([[2.0, -1, 0], [0, 1.5, -1], [-1, 0, 2]])
    labels = np.array([rng.choice(3, p=np.exp(v) / np.exp(v).sum()) for v in logits])
    x[:, 5] = 3.0  # a constant feature
    return x, labels


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_scikit_learn(data, weighted):
    x, labels = data
    weights = np.where(labels == 2, 3.0, 1.0) if weighted else None
    fit = fit_logistic(x, labels, 3, c=0.05, sample_weight=weights, tol=1e-8)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(scaler.transform(x), labels, sample_weight=weights)
    assert fit.converged
    np.testing.assert_allclose(fit.probabilities(x), reference.predict_proba(scaler.transform(x)), atol=2e-4)


def test_history_per_iteration_on_merged_classes(data):
    x, labels = data
    merge = np.array([[1, 0], [0, 1], [0, 1]])
    binary = merge[labels].argmax(axis=1)
    fit = fit_logistic(x[:300], labels[:300], 3, c=1.0, validation=(x[300:], binary[300:]), merge=merge)
    h = fit.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"} and len(set(map(len, h.values()))) == 1
    assert h["loss"][-1] < h["loss"][0] and h["accuracy"][-1] > 0.6
    p = fit.probabilities(x[300:]) @ merge
    assert h["val_accuracy"][-1] == pytest.approx(float((p.argmax(axis=1) == binary[300:]).mean()))


def test_constant_features_and_bad_c(data):
    x, labels = data
    mean, scale = standardisation(x)
    assert scale[5] == 1.0 and np.all(scale > 0)
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic(x, labels, 3, c=0.0)
