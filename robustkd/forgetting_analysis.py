"""What a forgetting bench's runs say: does plain fine-tuning forget, and at matched task accuracy which curve keeps
most of the teacher's general behaviour.

Inputs are the bench's run records ({"method", "seed", "run", "metrics"}) and each run's predictions.npz (per-row
figures: `<split>.correct`, `.pred`, `.label` on the task's splits and `transfer`; `general.format`, `.kl`, `.nll`,
`.tokens` on the unrelated prompts). Every interval is a paired bootstrap over seeds and rows: a comparison takes the
seeds every method in it has (the teacher, one evaluation, limits nothing), and each resample draws the rows of every
split (the same draw for every method) and those seeds (with replacement; the same draw for every method, so runs of
one seed stay paired), and averages over the drawn seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustkd import stats

ALPHAS = (0.25, 0.5, 0.75)
# metric -> (split of its rows, what it is)
METRICS = {"id_acc": ("test", "ID accuracy"), "id_f1": ("test", "ID macro-F1"), "ood_acc": ("ood_test", "OOD accuracy"),
           "ood_f1": ("ood_test", "OOD macro-F1"), "format_share": ("general", "format share"),
           "kl": ("general", "KL(teacher ‖ student) per token"), "nll": ("general", "NLL per token of the teacher's "
                                                                                  "answers"),
           "transfer_acc": ("transfer", "zero-shot transfer accuracy")}
FORGETTING = {"format_share": 1, "kl": 1, "nll": 1, "transfer_acc": -1}  # the sign of a loss of general behaviour
RETENTION = {"kl": "−KL per token", "format_share": "1 − format share"}  # the plane's y axes: higher keeps more
CURVES = ("ft", "lora", "ours", "ours-general")
COMPARE = (("ours", "ft"), ("ours", "lora"), ("ours-general", "ft"), ("ours-general", "lora"))


def wise_name(method: str, alpha: float) -> str:
    return f"{method}-wise-{alpha:g}"


def metric_values(a: dict[str, np.ndarray], metric: str, w: np.ndarray, k: int) -> np.ndarray | None:
    """The metric of one run under each row of weights w [B, n] (how often each row is in each resample)."""
    split = METRICS[metric][0]
    if metric in ("id_f1", "ood_f1"):
        if f"{split}.pred" not in a:
            return None
        return stats.macro_f1_weighted(a[f"{split}.pred"], a[f"{split}.label"], w, k)
    if metric in ("kl", "nll"):
        v = a.get(f"general.{metric}")
        if v is None or np.isnan(v).any():
            return None
        return (w * v).sum(1) / (w * a["general.tokens"]).sum(1)
    hit = a.get("general.format" if metric == "format_share" else f"{split}.correct")
    return None if hit is None else (w * hit).sum(1) / w.sum(1)


class Rows(stats.Runs):
    """Every run's per-row arrays and the shared resamples of rows and seeds."""

    def __init__(self, runs: list[dict], k: int, n_boot: int = stats.N_BOOT) -> None:
        super().__init__(runs)
        self.k, self.n_boot = k, n_boot
        self._arrays: dict[str, list[tuple[int, dict]]] = {}  # method -> (seed, predictions.npz) per run
        first = self.arrays(runs[0]["method"])[0]
        sizes = {METRICS[m][0]: len(first[key]) for m in METRICS
                 if (key := ("general.format" if METRICS[m][0] == "general" else f"{METRICS[m][0]}.correct")) in first}
        self.w = {s: stats.resample_weights(n, n_boot, seed=i) for i, (s, n) in enumerate(sorted(sizes.items()))}

    def arrays(self, method: str, seeds: list[int] | None = None) -> list[dict]:
        """Per seed (sorted; only `seeds` if given, except for the teacher), the method's predictions.npz."""
        if method not in self._arrays:
            rs = sorted((r for r in self.runs if r["method"] == method), key=lambda r: r["seed"])
            self._arrays[method] = [(r["seed"], dict(np.load(Path(r["run"]) / "predictions.npz"))) for r in rs]
        keep = seeds is None or method == "teacher"
        return [a for seed, a in self._arrays[method] if keep or seed in seeds]

    def seed_draws(self, n_seeds: int) -> np.ndarray:
        """[B, n_seeds] seed indices of each resample; the same for every method on the same seeds."""
        return np.random.default_rng([7, n_seeds]).integers(0, n_seeds, (self.n_boot, n_seeds))

    def point(self, a: dict[str, np.ndarray], metric: str) -> float:
        """The metric of one run on all rows (its split's rows each weighted once)."""
        return float(metric_values(a, metric, np.ones((1, len(self.w[METRICS[metric][0]][0]))), self.k)[0])

    def boot(self, method: str, metric: str, seeds: list[int] | None = None) -> tuple[np.ndarray, float] | None:
        """(bootstrap values [B], point estimate: the mean over seeds on all rows) over the method's seeds (or
        `seeds`), or None where not measured."""
        split = METRICS[metric][0]
        arrays = self.arrays(method, seeds) if method in self.methods() else []
        if not arrays or split not in self.w:
            return None
        per_seed, points = [], []
        for a in arrays:
            v = metric_values(a, metric, self.w[split], self.k)
            if v is None:
                return None
            per_seed.append(v)
            points.append(self.point(a, metric))
        vals = np.stack(per_seed)  # [S, B]
        draws = self.seed_draws(len(vals))
        return vals[draws, np.arange(self.n_boot)[:, None]].mean(1), float(np.mean(points))

    def diff(self, a: str, b: str, metric: str) -> dict | None:
        """a − b with its paired 95% interval, over the seeds both have (`seeds`)."""
        seeds = self.common_seeds(a, b)
        x, y = self.boot(a, metric, seeds), self.boot(b, metric, seeds)
        return None if x is None or y is None else {**stats.interval(x[0] - y[0], x[1] - y[1]), "seeds": seeds}


def diagnosis(p: Rows) -> dict:
    """ft − teacher on each forgetting metric (and on ID accuracy: did ft learn the task beyond the teacher?)."""
    if not {"ft", "teacher"} <= set(p.methods()):
        return {}
    out: dict = {"metrics": {}}
    for metric, sign in FORGETTING.items():
        d = p.diff("ft", "teacher", metric)
        if d is not None:
            out["metrics"][metric] = {**d, "forgets": bool(d["lo"] > 0 if sign > 0 else d["hi"] < 0)}
    out["forgets"] = [m for m, d in out["metrics"].items() if d["forgets"]]
    out["id_acc"] = p.diff("ft", "teacher", "id_acc")
    out["learned"] = bool(out["id_acc"] and out["id_acc"]["lo"] > 0)
    out["seeds"] = p.seeds("ft")
    return out


def curve_points(p: Rows, name: str) -> list[str]:
    """teacher → WiSE points → the fine-tuned end; [] if any is missing."""
    pts = ["teacher", *(wise_name(name, a) for a in ALPHAS), name]
    return pts if set(pts) <= set(p.methods()) else []


def curve_boot(p: Rows, methods: list[str], retention: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """([B, P, 2] bootstrap curves, [P, 2] point curve) of (ID accuracy, retention) per point, over `seeds`."""
    boots, point = [], []
    for m in methods:
        x, y = p.boot(m, "id_acc", seeds), p.boot(m, retention, seeds)
        if x is None or y is None:
            return None
        sign = -1.0  # −KL; 1 − format share (a constant shift changes no gap)
        boots.append(np.stack([x[0], sign * y[0]], 1))
        point.append((x[1], sign * y[1]))
    return np.stack(boots, 1), np.asarray(point)


def curves(p: Rows) -> dict:
    """Each curve's points per retention metric (`retention`, over the seeds all its points have), the gaps of
    COMPARE at matched ID accuracy (paired CIs over the seeds both curves have), and `curves`: each curve's methods
    in order (what the dashboard's plane draws)."""
    points = {name: pts for name in CURVES if (pts := curve_points(p, name))}
    out: dict = {"curves": {name: [{"method": m} for m in pts] for name, pts in points.items()},
                 "retention": {}, "gaps": {}}
    memo: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}

    def curve(name: str, retention: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        key = (name, retention, tuple(seeds))
        if key not in memo:
            memo[key] = curve_boot(p, points[name], retention, seeds)
        return memo[key]

    for retention in RETENTION:
        shift = 1.0 if retention == "format_share" else 0.0
        for name, methods in points.items():
            cb = curve(name, retention, p.common_seeds(*methods))
            if cb is None:
                continue
            lo, hi = np.percentile(cb[0], 2.5, axis=0), np.percentile(cb[0], 97.5, axis=0)  # [P, 2]
            out["retention"].setdefault(retention, {})[name] = [
                {"method": m, "id_acc": float(x), "retention": float(y + shift), "id_lo": float(lo[i, 0]),
                 "id_hi": float(hi[i, 0]), "lo": float(lo[i, 1] + shift), "hi": float(hi[i, 1] + shift)}
                for i, (m, (x, y)) in enumerate(zip(methods, cb[1], strict=True))]
        for a, b in COMPARE:
            if a not in points or b not in points:
                continue
            seeds = p.common_seeds(*points[a], *points[b])
            if not seeds:  # nothing to pair: recorded as such, no interval
                gap = stats.interval(np.array([]), float("nan"))
            elif (ca := curve(a, retention, seeds)) is None or (cb := curve(b, retention, seeds)) is None:
                continue
            else:
                vals = np.array([stats.curve_gap(ca[0][i], cb[0][i]) for i in range(len(ca[0]))])
                gap = stats.interval(vals, stats.curve_gap(ca[1], cb[1]))
            out["gaps"].setdefault(retention, {})[f"{a} − {b}"] = {**gap, "seeds": seeds}
    return out


def summarise(p: Rows) -> dict[str, dict]:
    """Per method: each metric's mean over seeds with its bootstrap 95% interval, its std over seeds, and cost."""
    out = {}
    for method in p.methods():
        rs = [r for r in p.runs if r["method"] == method]
        row: dict = {"n_seeds": len(rs)}
        for metric in METRICS:
            b = p.boot(method, metric)
            if b is None:
                continue
            one = [p.point(a, metric) for a in p.arrays(method)]
            row[metric] = {"mean": b[1], "std": float(np.std(one)), "lo": float(np.percentile(b[0], 2.5)),
                           "hi": float(np.percentile(b[0], 97.5))}
        for cost in ("train_s", "s_per_step"):
            vals = [r["metrics"].get("train", {}).get(cost) for r in rs]
            if all(v is not None for v in vals):
                row[cost] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        out[method] = row
    return out


def compare(runs: list[dict], k: int) -> dict:
    p = Rows(runs, k)
    return {"summary": summarise(p), "diagnosis": diagnosis(p), "curves": curves(p), "runs": runs}
