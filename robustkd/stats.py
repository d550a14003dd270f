"""Statistics of a benchmark: paired bootstrap intervals over test rows, curve gaps, rank correlation.

Every interval resamples test rows with replacement (the same resamples for every method and seed, so
differences are paired) and averages over seeds inside each resample.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 1000


class Runs:
    """Run records ({"method", "seed", ...}) and the seeds a paired comparison of them may use."""

    def __init__(self, runs: list[dict]) -> None:
        self.runs = runs

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.runs))

    def seeds(self, method: str) -> list[int]:
        return sorted({r["seed"] for r in self.runs if r["method"] == method})

    def common_seeds(self, *methods: str) -> list[int]:
        """The seeds all of `methods` have: a paired comparison sets each seed's run against the same seed's run.
        The teacher is one model under every seed, so it limits nothing."""
        sets = [set(self.seeds(m)) for m in methods if m != "teacher"]
        return sorted(set.intersection(*sets)) if sets else self.seeds("teacher")


def resample_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n] counts of each of n rows in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)


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


def metric(pred: np.ndarray, labels: np.ndarray, w: np.ndarray, k: int, name: str) -> np.ndarray:
    """`macro_f1` or `accuracy` of predictions under each row of weights w [B, N]."""
    if name == "macro_f1":
        return macro_f1_weighted(pred, labels, w, k)
    if name == "accuracy":
        return (w * (pred == labels)).sum(1) / w.sum(1)
    raise ValueError(f"metric: {name!r} is not macro_f1 or accuracy")


def paired_bootstrap(preds_a: list[np.ndarray], preds_b: list[np.ndarray], labels: np.ndarray, k: int,
                     name: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """95% interval of mean over seeds of metric(a) − metric(b), resampling test rows (the same resamples for
    both methods and every seed); `diff` is the point estimate on the full test set."""
    w = resample_weights(len(labels), n_boot, seed)
    one = np.ones((1, len(labels)))
    diffs, point = np.zeros(n_boot), 0.0
    for pa, pb in zip(preds_a, preds_b, strict=True):
        diffs += metric(pa, labels, w, k, name) - metric(pb, labels, w, k, name)
        point += float(metric(pa, labels, one, k, name)[0] - metric(pb, labels, one, k, name)[0])
    diffs /= len(preds_a)
    return {"diff": point / len(preds_a), "lo": float(np.percentile(diffs, 2.5)),
            "hi": float(np.percentile(diffs, 97.5))}


def interval(values: np.ndarray, point: float) -> dict[str, float]:
    """Point estimate with the 2.5 and 97.5 percentiles of its bootstrap values (NaNs, e.g. undefined, dropped)."""
    v = values[~np.isnan(values)]
    if len(v) == 0 or np.isnan(point):
        return {"diff": float(point), "lo": float("nan"), "hi": float("nan")}
    return {"diff": float(point), "lo": float(np.percentile(v, 2.5)), "hi": float(np.percentile(v, 97.5))}


def curve_gap(a: np.ndarray, b: np.ndarray, grid: int = 101) -> float:
    """Mean vertical gap a − b between two curves over the x range where both are defined.

    `a` and `b` are [P, 2] arrays of (x, y) points (x: ID accuracy, y: OOD macro-F1); each curve is the piecewise
    linear interpolation of its points sorted by x. NaN when the x ranges do not overlap.
    """
    a, b = a[np.argsort(a[:, 0])], b[np.argsort(b[:, 0])]
    lo, hi = max(a[0, 0], b[0, 0]), min(a[-1, 0], b[-1, 0])
    if hi < lo:
        return float("nan")
    xs = np.linspace(lo, hi, grid) if hi > lo else np.array([lo])
    return float(np.mean(np.interp(xs, a[:, 0], a[:, 1]) - np.interp(xs, b[:, 0], b[:, 1])))


def curve_height(curve: np.ndarray, x: float) -> float:
    """The curve's y at x (linear between its points sorted by x); NaN outside its x range."""
    c = curve[np.argsort(curve[:, 0])]
    return float(np.interp(x, c[:, 0], c[:, 1])) if c[0, 0] <= x <= c[-1, 0] else float("nan")


def best_height_from(curve: np.ndarray, x_min: float, grid: int = 201) -> float:
    """The highest y the curve reaches at x >= x_min (between points too); NaN if it never gets that far."""
    c = curve[np.argsort(curve[:, 0])]
    if c[-1, 0] < x_min:
        return float("nan")
    xs = np.linspace(max(x_min, c[0, 0]), c[-1, 0], grid)
    return float(np.max(np.interp(xs, c[:, 0], c[:, 1])))


def spearman(x: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Spearman's rank correlation of paired values, with a bootstrap 95% interval over the pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if len(np.unique(x[i])) > 1 and len(np.unique(y[i])) > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    return {"rho": rho, **{k: v for k, v in interval(np.asarray(boots, float), rho).items() if k != "diff"},
            "n": len(x)}
