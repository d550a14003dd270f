"""Statistics of a benchmark: paired bootstrap intervals over seeds and test rows."""

from __future__ import annotations

import numpy as np


def macro_f1_weighted(pred: np.ndarray, labels: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 for each row of weights w [B, N] (how often each test row is in each resample); a class with
    no true or predicted row scores 0, as sklearn's `zero_division=0`."""
    f1s = []
    for c in range(k):
        tp = (w * ((pred == c) & (labels == c))).sum(1)
        fp = (w * ((pred == c) & (labels != c))).sum(1)
        fn = (w * ((pred != c) & (labels == c))).sum(1)
        f1s.append(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0))
    return np.mean(f1s, 0)


def _metric(pred: np.ndarray, labels: np.ndarray, w: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "macro_f1":
        return macro_f1_weighted(pred, labels, w, k)
    if metric == "accuracy":
        return (w * (pred == labels)).sum(1) / w.sum(1)
    raise ValueError(f"metric: {metric!r} is not macro_f1 or accuracy")


def paired_bootstrap(preds_a: list[np.ndarray], preds_b: list[np.ndarray], labels: np.ndarray, k: int,
                     metric: str, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """95% interval of mean over seeds of metric(a) − metric(b), resampling test rows (the same resamples for
    both methods and every seed); `diff` is the point estimate on the full test set."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)
    one = np.ones((1, n))
    diffs, point = np.zeros(n_boot), 0.0
    for pa, pb in zip(preds_a, preds_b, strict=True):
        diffs += _metric(pa, labels, w, k, metric) - _metric(pb, labels, w, k, metric)
        point += float(_metric(pa, labels, one, k, metric)[0] - _metric(pb, labels, one, k, metric)[0])
    diffs /= len(preds_a)
    return {"diff": point / len(preds_a), "lo": float(np.percentile(diffs, 2.5)),
            "hi": float(np.percentile(diffs, 97.5))}
