"""L2-regularised multinomial logistic regression fitted to convergence with L-BFGS.

On thousands of standardised, concatenated features, Adam with early stopping stops far
from the regularised optimum; L-BFGS on the convex objective reaches it and is
deterministic. The objective is scikit-learn's `LogisticRegression(C=...)` one, divided by
the total sample weight:

    sum_i w_i * cross_entropy_i / sum_i w_i  +  ||W||^2 / (2 * C * sum_i w_i)

Several fits on subsets of the rows of one feature array (the folds of a cross-validation)
run in lockstep: each round reads the array once, a chunk at a time, and one matrix product
per chunk serves every fit. The fits share no parameters, so each reaches its own optimum;
to the last bits of rounding, its path depends on which others share its products. The features are neither copied nor standardised in memory: the standardisation is
folded into the weights, z @ K = x @ (K / s) - (m / s) @ K. Features held in bfloat16 (a bfloat16 pass's) are widened
to float32 a chunk at a time: the fits are those of the same values held in float32, bit for bit.

The fitted standardisation and weights are copied into a Keras head (see `train`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from ml_dtypes import bfloat16
from scipy.special import log_softmax

CHUNK_ROWS = 1024
"""Rows read at a time: small enough to stay in the CPU's cache for both products."""
MEMORY = 50
"""L-BFGS correction pairs kept. On the study's 22,016 band-pooled features, 50 took 98 passes over them where
scipy's default of 10 took 219, to the same tolerance (5-fold CV, docs/performance.md)."""
PAIRS_DTYPE = np.float32
"""How the correction pairs are kept; the recursion runs in float64 on them. In float64, the 20 lockstep fits of the
study's cross-validation (66,051 parameters each) kept 0.98 GiB of pairs beside the feature array (1.67 GiB in float32); float32
halves that, and the fits stop within tolerance of the same optimum (docs/performance.md#memory)."""
LINE_SEARCH_TRIES = 20
"""Evaluations one line search may take."""


def solver_identity(head: str) -> dict[str, int | str]:
    """What the head's solver adds to a run's identity: the L-BFGS memory and how its pairs are kept (the fit stops
    within tolerance of the optimum at a point that depends on them, so a run fitted otherwise has its own folder);
    nothing for Adam."""
    return {"lbfgs_memory": MEMORY, "lbfgs_pairs": np.dtype(PAIRS_DTYPE).name} if head == "lbfgs" else {}


@dataclass
class LinearFit:
    """Standardisation and softmax weights of a fitted model, and its per-iteration history."""

    mean: np.ndarray  # (features,)
    scale: np.ndarray  # (features,), 1 where a feature is constant
    kernel: np.ndarray  # (features, classes), on standardised features
    bias: np.ndarray  # (classes,)
    converged: bool
    objective: float = float("nan")  # the objective at the returned weights
    history: dict[str, list[float]] = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of raw (unstandardised) features."""
        return np.exp(log_softmax(((x - self.mean) / self.scale) @ self.kernel + self.bias, axis=1))


@dataclass
class Subset:
    """The rows one fit learns from, and the faces whose loss it only records."""

    weight: np.ndarray  # (views, faces) sample weight of every row; 0 for rows the fit does not learn from
    val_index: np.ndarray | None = None  # faces (first view) whose loss and accuracy are recorded per iteration


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float64), with 1 for (nearly) constant features."""
    return x.mean(axis=0, dtype=np.float64), _usable_scale(x.std(axis=0, dtype=np.float64))


def _usable_scale(scale: np.ndarray) -> np.ndarray:
    """`scale` with 1 where a feature is (nearly) constant, so that dividing by it is safe."""
    return np.where(scale > 1e-6, scale, 1.0)


def compute_dtype(x: np.ndarray) -> np.dtype:
    """The dtype the products over `x` run in: its own, float32 for bfloat16 features (held in half the memory,
    widened exactly a chunk at a time)."""
    return np.dtype(np.float32) if x.dtype == bfloat16 else x.dtype


def _chunks(x: np.ndarray):
    """(view, first row, rows) over the feature array, in a fixed order; bfloat16 rows come widened to float32, in a
    buffer that the next chunk reuses."""
    widened = np.empty((min(CHUNK_ROWS, x.shape[1]), x.shape[-1]), np.float32) if x.dtype == bfloat16 else None
    for v in range(x.shape[0]):
        for start in range(0, x.shape[1], CHUNK_ROWS):
            rows = x[v, start:start + CHUNK_ROWS]
            if widened is not None:
                np.copyto(widened[:len(rows)], rows)
                rows = widened[:len(rows)]
            yield v, start, rows


def _subset_standardisations(x: np.ndarray, masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`standardisation` of each subset's rows (mask (views, faces)), in two passes over `x` without a copy of it.

    Each chunk's sums, over every subset at once, are one matrix product with the subsets' 0/1 indicator rows
    (float32 within a chunk, float64 across chunks). The squares are taken about the mean of all rows, near every
    subset's own, so that the variance loses no digits to cancellation."""
    d, dtype = x.shape[-1], compute_dtype(x)
    indicators = np.stack([np.ones(x.shape[:2], bool), *masks]).astype(dtype)  # row 0: every row
    sums = np.zeros((len(indicators), d))
    for v, start, rows in _chunks(x):
        sums += indicators[:, v, start:start + len(rows)] @ rows
    counts = indicators.sum(axis=(1, 2), dtype=np.float64)[:, None]
    means = sums / counts
    centre = means[0].astype(dtype)
    squares = np.zeros((len(indicators), d))
    for v, start, rows in _chunks(x):
        squares += indicators[:, v, start:start + len(rows)] @ np.square(rows - centre)
    variances = squares / counts - (means - means[0]) ** 2
    return [(mean, _usable_scale(np.sqrt(np.maximum(var, 0.0)))) for mean, var in zip(means[1:], variances[1:])]


@dataclass
class _Problem:
    """One fit's constants: its rows, weights and standardisation."""

    weight: np.ndarray  # (views, faces)
    val_index: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    total: float  # sum of the sample weights


@dataclass
class _Point:
    """The objective, its gradient and the training/validation metrics at one parameter vector."""

    params: np.ndarray
    value: float = 0.0
    grad: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _evaluate(x: np.ndarray, onehot: np.ndarray, val_labels: np.ndarray | None, merge: np.ndarray,
              c: float, problems: list[_Problem], points: list[_Point]) -> None:
    """Fill in value, gradient and metrics of each problem's point, in one pass over `x`.

    Every chunk of rows goes through two matrix products, for all problems at once: the
    logits, and the gradient's sum over the rows.
    """
    k, d, m = onehot.shape[1], x.shape[-1], len(points)
    kernels = [point.params[:-k].reshape(d, k) for point in points]
    folded = np.concatenate([kernel / prob.scale[:, None] for kernel, prob in zip(kernels, problems)], axis=1)
    folded = folded.astype(compute_dtype(x))
    biases = np.stack([point.params[-k:] - (prob.mean / prob.scale) @ kernel
                       for point, prob, kernel in zip(points, problems, kernels)])
    weights = np.stack([prob.weight for prob in problems])  # (problems, views, faces)
    totals = np.array([prob.total for prob in problems])
    output = (onehot @ merge).argmax(axis=1)  # every face's output class
    xg = np.zeros((d, k * m))
    gsum = np.zeros((m, k))
    ll = np.zeros(m)
    sums = {name: np.zeros((m, 3)) for name in ("", "val_")}  # loss, correct, count
    for v, start, rows in _chunks(x):
        n = len(rows)
        logp = log_softmax((rows @ folded).astype(np.float64).reshape(n, m, k) + biases, axis=2)  # (rows, problems, k)
        oh, w = onehot[start:start + n, None, :], weights[:, v, start:start + n].T
        ll += (w * (oh * logp).sum(axis=2)).sum(axis=0)
        g = (np.exp(logp) - oh) * (w / totals)[:, :, None]
        gsum += g.sum(axis=0)
        xg += (g.reshape(n, m * k).astype(folded.dtype).T @ rows).T  # this order of the product is the faster one
        loss, correct = _row_metrics(logp, output[start:start + n], merge)
        learn = w > 0
        sums[""] += np.stack([(loss * learn).sum(axis=0), (correct & learn).sum(axis=0), learn.sum(axis=0)], axis=1)
        if v == 0 and val_labels is not None:
            for i, prob in enumerate(problems):
                if prob.val_index is not None:
                    inside = prob.val_index[(prob.val_index >= start) & (prob.val_index < start + n)] - start
                    if len(inside):
                        loss, correct = _row_metrics(logp[inside, i:i + 1], val_labels[start + inside], merge)
                        sums["val_"][i] += [loss.sum(), correct.sum(), len(inside)]
    for i, (prob, point, kernel) in enumerate(zip(problems, points, kernels)):
        reg = c * prob.total
        point.value = -ll[i] / prob.total + float((kernel**2).sum()) / (2 * reg)
        grad_kernel = (xg[:, i * k:(i + 1) * k] - np.outer(prob.mean, gsum[i])) / prob.scale[:, None] + kernel / reg
        point.grad = np.concatenate([grad_kernel.ravel(), gsum[i]])
        point.metrics = {f"{prefix}{name}": total[i, j] / total[i, 2] for prefix, total in sums.items() if total[i, 2]
                         for j, name in enumerate(("loss", "accuracy"))}


def _row_metrics(logp: np.ndarray, y: np.ndarray, merge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy and correctness, on the output classes, of each row of `logp` (rows, problems, classes) with
    output labels `y` (rows,): two (rows, problems) arrays."""
    p = np.clip(np.exp(logp) @ merge, 1e-12, 1.0)
    picked = np.take_along_axis(p, y[:, None, None], axis=2)[..., 0]  # the index broadcasts over the problems
    return -np.log(picked), p.argmax(axis=2) == y[:, None]


class _LBFGS:
    """One problem's L-BFGS state: it proposes the next point to evaluate and takes its value back.

    The line search brackets a step satisfying the weak Wolfe conditions (sufficient
    decrease, and a slope no longer steeply negative) by doubling and bisection, so that
    every stored correction pair carries real curvature.
    """

    def __init__(self, start: _Point, max_iter: int, tol: float) -> None:
        self.point, self.max_iter, self.tol = start, max_iter, tol
        self.pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=MEMORY)
        self.iterations = 0
        self.history: dict[str, list[float]] = {}
        self.converged = self.done = bool(np.abs(start.grad).max() <= tol)
        self._new_direction()
        self.step = min(1.0, 1.0 / float(np.linalg.norm(start.grad)))

    def trial(self) -> _Point:
        return _Point(self.point.params + self.step * self.direction)

    def take(self, trial: _Point) -> None:
        """Accept `trial`, or choose the next step of the line search."""
        slope = float(self.point.grad @ self.direction)
        self.tries += 1
        if trial.value > self.point.value + 1e-4 * self.step * slope:
            self.high = self.step
        elif float(trial.grad @ self.direction) < 0.9 * slope and self.tries < LINE_SEARCH_TRIES:
            self.low, self.best = self.step, trial
        else:
            self._accept(trial)
            return
        if self.tries >= LINE_SEARCH_TRIES:
            if self.best is None:
                self.done = True  # no decrease along a descent direction: at the optimum to rounding
                return
            self._accept(self.best)
            return
        self.step = 2 * self.low if self.high is None else (self.low + self.high) / 2

    def _accept(self, trial: _Point) -> None:
        s = (trial.params - self.point.params).astype(PAIRS_DTYPE)
        y = (trial.grad - self.point.grad).astype(PAIRS_DTYPE)
        sy, yy = _dot(s, y), _dot(y, y)
        if sy > 1e-10 * yy:
            self.pairs.append((s, y, 1.0 / sy))
        self.point = trial
        self.iterations += 1
        for name, value in trial.metrics.items():
            self.history.setdefault(name, []).append(value)
        self.converged = bool(np.abs(trial.grad).max() <= self.tol)
        self.done = self.converged or self.iterations >= self.max_iter
        self._new_direction()
        self.step = 1.0

    def _new_direction(self) -> None:
        """The two-loop recursion: -H g with the stored pairs (steepest descent when it is no descent)."""
        q = -self.point.grad.copy()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * _dot(s, q)
            q -= a * y.astype(np.float64)
            alphas.append(a)
        if self.pairs:
            s, y, rho = self.pairs[-1]
            q *= 1.0 / (rho * _dot(y, y))
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            q += (a - rho * _dot(y, q)) * s.astype(np.float64)
        if float(q @ self.point.grad) >= 0:
            self.pairs.clear()
            q = -self.point.grad.copy()
        self.direction = q
        self.tries, self.low, self.high, self.best = 0, 0.0, None, None


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b in float64, whatever the two vectors are kept in."""
    return float(a.astype(np.float64, copy=False) @ b.astype(np.float64, copy=False))


def fit_logistic(
    x: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    c: float,
    subsets: list[Subset],
    val_labels: np.ndarray | None = None,
    merge: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> list[LinearFit]:
    """One fit per subset of the rows of features `x` (views, faces, features), with face `labels` (0..n_classes-1).

    `merge` (n_classes x outputs, 0/1) maps training classes to the reported ones; each fit's
    history records, per L-BFGS iteration, the loss and accuracy on those output classes of
    its training rows and of its `val_index` faces (labelled by `val_labels`, output classes).
    A fit stops when its largest gradient component is below `tol` (scikit-learn's default)
    or after `max_iter` iterations.
    """
    if c <= 0:
        raise ValueError(f"C must be positive, got {c}")
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    labels = np.asarray(labels)
    onehot = np.eye(n_classes)[labels]
    merge = np.eye(n_classes) if merge is None else np.asarray(merge, dtype=np.float64)
    masks = [np.asarray(s.weight) > 0 for s in subsets]
    problems = [_Problem(np.asarray(s.weight, dtype=np.float64), s.val_index, mean, scale, float(np.sum(s.weight)))
                for s, (mean, scale) in zip(subsets, _subset_standardisations(x, masks))]
    starts = [_Point(np.zeros(x.shape[-1] * n_classes + n_classes)) for _ in problems]
    _evaluate(x, onehot, val_labels, merge, c, problems, starts)
    solvers = [_LBFGS(point, max_iter, tol) for point in starts]
    while active := [i for i, solver in enumerate(solvers) if not solver.done]:
        trials = [solvers[i].trial() for i in active]
        _evaluate(x, onehot, val_labels, merge, c, [problems[i] for i in active], trials)
        for i, trial in zip(active, trials):
            solvers[i].take(trial)
    fits = []
    for prob, solver in zip(problems, solvers):
        params = solver.point.params
        fits.append(LinearFit(prob.mean, prob.scale, params[:-n_classes].reshape(-1, n_classes), params[-n_classes:],
                              solver.converged, solver.point.value, solver.history))
    return fits
