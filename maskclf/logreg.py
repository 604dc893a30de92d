"""L2-regularised multinomial logistic regression fitted to convergence with L-BFGS.

On thousands of standardised, concatenated features, Adam with early stopping stops far
from the regularised optimum; L-BFGS on the convex objective reaches it in seconds and
is deterministic. The objective is scikit-learn's `LogisticRegression(C=...)` one,
divided by the total sample weight:

    sum_i w_i * cross_entropy_i / sum_i w_i  +  ||W||^2 / (2 * C * sum_i w_i)

The fitted standardisation and weights are copied into a Keras head (see `train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax


@dataclass
class LinearFit:
    """Standardisation and softmax weights of a fitted model, and its per-iteration history."""

    mean: np.ndarray  # (features,)
    scale: np.ndarray  # (features,), 1 where a feature is constant
    kernel: np.ndarray  # (features, classes), on standardised features
    bias: np.ndarray  # (classes,)
    converged: bool
    history: dict[str, list[float]] = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of raw (unstandardised) features."""
        return np.exp(log_softmax(((x - self.mean) / self.scale) @ self.kernel + self.bias, axis=1))


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float64), with 1 for (nearly) constant features."""
    mean = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def _logits(z: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float64 logits; the large product runs in z's float32 (it is memory-bound)."""
    return (z @ kernel.astype(z.dtype)).astype(np.float64) + bias


def _loss_and_grad(params: np.ndarray, z: np.ndarray, onehot: np.ndarray, w: np.ndarray, c: float, last: dict):
    d, k = z.shape[1], onehot.shape[1]
    kernel, bias = params[: d * k].reshape(d, k), params[d * k:]
    logp = log_softmax(_logits(z, kernel, bias), axis=1)
    last.update(params=params.copy(), logp=logp)
    total = w.sum()
    loss = -(w * (onehot * logp).sum(axis=1)).sum() / total + (kernel**2).sum() / (2 * c * total)
    g = (np.exp(logp) - onehot) * w[:, None] / total
    grad_kernel = (z.T @ g.astype(z.dtype)).astype(np.float64) + kernel / (c * total)
    return loss, np.concatenate([grad_kernel.ravel(), g.sum(axis=0)])


def _metrics(logp: np.ndarray, y: np.ndarray, merge: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, from log-probabilities of the training classes, on the output classes."""
    p = np.clip(np.exp(logp) @ merge, 1e-12, 1.0)
    return float(-np.log(p[np.arange(len(y)), y]).mean()), float((p.argmax(axis=1) == y).mean())


def fit_logistic(
    x: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    c: float,
    sample_weight: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    merge: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> LinearFit:
    """Fit on features `x` and integer `labels` (0..n_classes-1).

    `merge` (n_classes x outputs, 0/1) maps training classes to the reported ones; the
    history records, per L-BFGS iteration, the training and `validation` (features,
    output labels) loss and accuracy on those output classes. It stops when the largest
    gradient component is below `tol` (scikit-learn's default) or after `max_iter` iterations.
    """
    x = np.asarray(x)  # float32 features stay float32: the statistics accumulate in float64 without a copy
    labels = np.asarray(labels)
    if c <= 0:
        raise ValueError(f"C must be positive, got {c}")
    mean, scale = standardisation(x)
    z = ((x - mean) / scale).astype(np.float32)
    onehot = np.eye(n_classes)[labels]
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    merge = np.eye(n_classes) if merge is None else np.asarray(merge, dtype=np.float64)
    y_out = (onehot @ merge).argmax(axis=1)
    fit = LinearFit(mean, scale, np.zeros((x.shape[1], n_classes)), np.zeros(n_classes), False)
    fit.history = {f"{prefix}{m}": [] for prefix in ("", "val_")[: 1 + (validation is not None)] for m in ("loss", "accuracy")}

    sets = {"": (z, y_out)}
    if validation is not None:
        z_val = ((np.asarray(validation[0]) - mean) / scale).astype(np.float32)
        sets["val_"] = (z_val, np.asarray(validation[1]))

    last: dict[str, np.ndarray] = {}

    def record(params: np.ndarray) -> None:
        kernel, bias = params[:-n_classes].reshape(-1, n_classes), params[-n_classes:]
        for prefix, (zs, ys) in sets.items():
            if prefix == "" and np.array_equal(params, last["params"]):
                logp = last["logp"]  # the accepted point is usually the last one evaluated
            else:
                logp = log_softmax(_logits(zs, kernel, bias), axis=1)
            loss, acc = _metrics(logp, ys, merge)
            fit.history[f"{prefix}loss"].append(loss)
            fit.history[f"{prefix}accuracy"].append(acc)

    result = minimize(
        _loss_and_grad, np.zeros(x.shape[1] * n_classes + n_classes), args=(z, onehot, w, c, last), jac=True,
        method="L-BFGS-B", callback=record, options={"maxiter": max_iter, "gtol": tol},
    )
    fit.kernel, fit.bias = result.x[:-n_classes].reshape(-1, n_classes), result.x[-n_classes:]
    fit.converged = bool(result.success)
    return fit
