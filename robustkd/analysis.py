"""What a benchmark's runs say: is there robustness to preserve, how the curves compare, can the proxy be trusted.

Inputs are the bench's run records ({"method", "seed", "run", "metrics"}) and each run's predictions.npz
(logits per evaluation split). Every interval is a paired bootstrap over test rows (`robustkd.stats`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustkd import stats
from robustkd.shared.methods import METHODS, TABLE, curve_end
from robustkd.shared.registry import METRICS

ALPHAS = (0.25, 0.5, 0.75)
# curve name -> (the fine-tuned end, the prefix of its interpolated points); every curve starts at the teacher
CURVES = {m.curve: (m.name, m.wise) for m in TABLE if m.wise}
ID_SLACK = 0.01  # "ID accuracy within 1 point of ft"
# runs that saw unlabelled target-domain text: information the other methods lack, so a setting of their own
SEPARATE = next(m.name for m in TABLE if m.separate)


def is_separate(method: str) -> bool:
    """A run (or WiSE point) of a separate setting of the method table."""
    m = METHODS.get(curve_end(method) or method)
    return m is not None and m.separate


class Predictions(stats.Runs):
    """Argmax predictions and positive-class scores of every run, with the shared bootstrap resamples."""

    def __init__(self, runs: list[dict], labels: dict[str, np.ndarray], k: int) -> None:
        super().__init__(runs)
        self.labels, self.k = labels, k
        self.w = {s: stats.resample_weights(len(v), seed=i) for i, (s, v) in enumerate(sorted(labels.items()))}
        self._cache: dict[tuple[str, str], list[np.ndarray]] = {}

    def logits(self, method: str, split: str, seeds: list[int] | None = None) -> list[np.ndarray]:
        """Per seed (sorted; only `seeds` if given, except for the teacher), the method's logits on a split."""
        key = (method, split)
        if key not in self._cache:
            rs = sorted((r for r in self.runs if r["method"] == method), key=lambda r: r["seed"])
            self._cache[key] = [(r["seed"], np.load(Path(r["run"]) / "predictions.npz")[split]) for r in rs]
        keep = seeds is None or method == "teacher"
        return [x for seed, x in self._cache[key] if keep or seed in seeds]

    def pred(self, method: str, split: str, seeds: list[int] | None = None) -> list[np.ndarray]:
        return [x.argmax(1) for x in self.logits(method, split, seeds)]

    def boot(self, method: str, split: str, name: str, seeds: list[int] | None = None) -> tuple[np.ndarray, float]:
        """(bootstrap values [B], point estimate) of a metric, averaged over the method's seeds (or `seeds`)."""
        lab, w = self.labels[split], self.w[split]
        preds = self.pred(method, split, seeds)
        vals = np.mean([stats.metric(p, lab, w, self.k, name) for p in preds], 0)
        point = float(np.mean([stats.metric(p, lab, np.ones((1, len(lab))), self.k, name)[0] for p in preds]))
        return vals, point

    def auroc_boot(self, method: str, split: str, n: int = 200) -> tuple[np.ndarray, float]:
        from sklearn.metrics import roc_auc_score

        lab = self.labels[split]
        scores = [softmax(x)[:, 1] for x in self.logits(method, split)]
        point = float(np.mean([roc_auc_score(lab, s) for s in scores]))
        w = self.w[split][:n]
        vals = np.array([np.mean([roc_auc_score(lab, s, sample_weight=wi) for s in scores]) for wi in w])
        return vals, point


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def diagnosis(p: Predictions) -> dict:
    """ft − teacher on OOD macro-F1 (and AUROC for two classes): is there robustness to preserve?"""
    if not {"ft", "teacher"} <= set(p.methods()):
        return {}
    ft, fp = p.boot("ft", "ood_test", "macro_f1")
    te, tp = p.boot("teacher", "ood_test", "macro_f1")
    out = {"ood_macro_f1": stats.interval(ft - te, fp - tp)}
    (fi, fip), (ti, tip) = p.boot("ft", "test", "accuracy"), p.boot("teacher", "test", "accuracy")
    out["id_accuracy"] = stats.interval(fi - ti, fip - tip)  # did ft learn the task at all?
    if p.k == 2:
        (fa, fap), (ta, tap) = p.auroc_boot("ft", "ood_test"), p.auroc_boot("teacher", "ood_test")
        out["ood_auroc"] = stats.interval(fa - ta, fap - tap)
    out["seeds"] = p.seeds("ft")
    f1 = out["ood_macro_f1"]
    out["loses"] = bool(f1["hi"] < 0)
    out["gains"] = bool(f1["lo"] > 0)
    return out


def curve_methods(p: Predictions, name: str) -> list[str]:
    """The methods on a curve, from the teacher (α = 0) to the fine-tuned end (α = 1); [] if it was not run."""
    end, prefix = CURVES[name]
    have = set(p.methods())
    points = ["teacher", *(f"{prefix}-{a}" for a in ALPHAS), end]
    return points if all(m in have for m in points) else []


def curve_boot(p: Predictions, methods: list[str], seeds: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([B, P, 2] bootstrap curves, [P, 2] point curve) of (ID accuracy, OOD macro-F1) per point, over each point's
    seeds or only `seeds`."""
    boots, point = [], []
    for m in methods:
        (xb, x), (yb, y) = p.boot(m, "test", "accuracy", seeds), p.boot(m, "ood_test", "macro_f1", seeds)
        boots.append(np.stack([xb, yb], 1))
        point.append((x, y))
    return np.stack(boots, 1), np.asarray(point)


def curves(p: Predictions) -> dict:
    """Each curve's mean points with bootstrap intervals; ours − WiSE-FT at matched ID accuracy; the goal checks."""
    out: dict = {"curves": {}}
    pts = {}
    for name in CURVES:
        methods = curve_methods(p, name)
        if not methods:
            continue
        boot, point = curve_boot(p, methods)
        pts[name] = (boot, point)
        out["curves"][name] = [{"method": m, "id_acc": float(x), "ood_f1": float(y),
                                "id_lo": float(np.percentile(boot[:, i, 0], 2.5)),
                                "id_hi": float(np.percentile(boot[:, i, 0], 97.5)),
                                "ood_lo": float(np.percentile(boot[:, i, 1], 2.5)),
                                "ood_hi": float(np.percentile(boot[:, i, 1], 97.5))}
                               for i, (m, (x, y)) in enumerate(zip(methods, point, strict=True))]
    for ours in ("ours", SEPARATE):
        if ours in pts and "wise-ft" in pts:
            mine, wise = curve_methods(p, ours), curve_methods(p, "wise-ft")
            if not (seeds := p.common_seeds(*mine, *wise)):
                continue
            (ob, op), (wb, wp) = curve_boot(p, mine, seeds), curve_boot(p, wise, seeds)
            vals = np.array([stats.curve_gap(ob[b], wb[b]) for b in range(len(ob))])
            out[f"{ours}_minus_wise_ft"] = {**stats.interval(vals, stats.curve_gap(op, wp)), "seeds": seeds}
    if "ours" in pts and {"ft", "teacher"} <= set(p.methods()) and (
            seeds := p.common_seeds("ft", *curve_methods(p, "ours"))):
        (_, ft_id), (_, ft_ood) = p.boot("ft", "test", "accuracy", seeds), p.boot("ft", "ood_test", "macro_f1", seeds)
        _, teacher_ood = p.boot("teacher", "ood_test", "macro_f1")
        op = curve_boot(p, curve_methods(p, "ours"), seeds)[1]
        best = stats.best_height_from(op, ft_id - ID_SLACK)
        out["goal"] = {"seeds": seeds, "ft_id_acc": ft_id, "ft_ood_f1": ft_ood, "teacher_ood_f1": teacher_ood,
                       "ours_best_ood_f1_within_1pt_of_ft_id": best,
                       "reaches_teacher_ood_near_ft_id": bool(best >= teacher_ood),
                       # no harm: with the same 1-point slack on ID accuracy, ours' curve reaches ft's OOD macro-F1
                       "reaches_ft_point": bool(np.nan_to_num(best, nan=-1) >= ft_ood)}
    return out


def proxy(p: Predictions) -> dict:
    """Can a user without OOD labels trust held-out-perturbed validation? Spearman between each run's
    validation_heldout macro-F1 and its OOD macro-F1 (every method and seed), and the regret of picking by it."""
    rows = []
    for r in p.runs:
        s = r["metrics"]["student"]
        if "validation_heldout" in s and (r["method"] != "teacher" or r["seed"] == 0):
            rows.append((r["method"], r["seed"], s["validation_heldout"]["macro_f1"], s["ood_test"]["macro_f1"]))
    if len(rows) < 4:
        return {}
    x, y = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    picks = []
    for seed in sorted({r[1] for r in rows}):
        cand = [r for r in rows if r[1] == seed or r[0] == "teacher"]
        pick = max(cand, key=lambda r: r[2])
        best = max(cand, key=lambda r: r[3])
        picks.append({"seed": seed, "picked": pick[0], "picked_ood_f1": pick[3], "best": best[0],
                      "best_ood_f1": best[3], "regret": best[3] - pick[3]})
    return {"spearman": stats.spearman(x, y), "picks": picks,
            "mean_regret": float(np.mean([q["regret"] for q in picks])), "runs": len(rows)}


SUMMARY_KEYS = METRICS  # one list of headline metrics: the report's table and the registry's


def _mean_std(vals: list) -> dict[str, float] | None:
    vals = [float(v) for v in vals if v is not None]
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals else None


def summarise(runs: list[dict], p: Predictions | None = None) -> dict[str, dict]:
    """Per method: mean and std over seeds of the headline metrics, one-class runs, cost, drift; with `p`, the
    bootstrap 95% interval of its mean ID accuracy and OOD macro-F1 (the plot's crosses)."""
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        st = [r["metrics"]["student"] for r in rs]
        row = {name: v for name, (split, m) in SUMMARY_KEYS.items()
               if (v := _mean_std([s.get(split, {}).get(m) for s in st])) is not None}
        names = rs[0]["metrics"]["label_names"]
        pos = names[-1]
        row["ood_pred_pos"] = _mean_std([s["ood_test"]["predicted_rate"][pos] for s in st])
        row["ood_true_pos"] = _mean_std([st[0]["ood_test"]["true_rate"][pos]])
        row["single_class"] = {"mean": float(sum(s["test"].get("single_class", False) or
                                                 s["ood_test"].get("single_class", False) for s in st)), "std": 0.0}
        for name in ("train_s", "peak_rss_mb"):
            if (v := _mean_std([r["metrics"].get("train", {}).get(name) for r in rs])) is not None:
                row[name] = v
        drift = [s["ood_test"].get("activation_drift") for s in st]
        if drift[0]:
            row["drift"] = {layer: float(np.mean([d[layer] for d in drift])) for layer in drift[0]}
        row["n_seeds"] = len(rs)
        if p is not None:
            (xb, _), (yb, _) = p.boot(method, "test", "accuracy"), p.boot(method, "ood_test", "macro_f1")
            row["ci"] = {"id_lo": float(np.percentile(xb, 2.5)), "id_hi": float(np.percentile(xb, 97.5)),
                         "ood_lo": float(np.percentile(yb, 2.5)), "ood_hi": float(np.percentile(yb, 97.5))}
        out[method] = row
    return out


def ours_vs_each(p: Predictions, ours: str = "ours", against: tuple[str, ...] | None = None) -> dict:
    """Paired bootstrap of `ours` − each other method (or those in `against`) over the seeds both have: OOD
    macro-F1, ID accuracy, held-out-perturbed accuracy. A method that shares no seed with `ours` is left out."""
    if ours not in p.methods():
        return {}
    pairs = (("ood_test", "macro_f1"), ("test", "accuracy"), ("test_heldout", "accuracy"))
    out = {}
    for method in p.methods():
        if method == ours or (against is not None and method not in against):
            continue
        if not (seeds := p.common_seeds(ours, method)):
            continue
        row: dict = {"seeds": seeds}
        for split, name in pairs:
            a, ap = p.boot(ours, split, name, seeds)
            b, bp = p.boot(method, split, name, seeds)
            row[f"{split}:{name}"] = stats.interval(a - b, ap - bp)
        out[method] = row
    return out


def compare(runs: list[dict], labels: dict[str, np.ndarray], k: int) -> dict:
    """Everything a report says. The main comparison (summary, diagnosis, curves, intervals, proxy) leaves out the
    runs of the separate setting; those get their own rows, curve gap and intervals against ours, ft and the
    teacher under `separate`."""
    main = [r for r in runs if not is_separate(r["method"])]
    p = Predictions(main, labels, k)
    out = {"summary": summarise(main, p), "diagnosis": diagnosis(p), "curves": curves(p), "bootstrap": ours_vs_each(p),
           "proxy": proxy(p), "runs": runs}
    if len(main) < len(runs):
        p_all = Predictions(runs, labels, k)
        out["separate"] = {
            "summary": summarise([r for r in runs if is_separate(r["method"])], p_all),
            "curve_gap": curves(p_all).get(f"{SEPARATE}_minus_wise_ft"),
            "bootstrap": ours_vs_each(p_all, SEPARATE, against=("ours", "ft", "teacher"))}
    return out
