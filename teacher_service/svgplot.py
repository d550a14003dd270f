"""A bench's plane as server-rendered SVG: each run a dot, each method's mean with its 95% interval as a cross,
each WiSE-FT curve (teacher → α points → fine-tuned end) as a line, the teacher as a black star.

Two planes: ID accuracy against OOD macro-F1 (robustness benches, classification students) and ID accuracy against
retention, −KL per token to the teacher on unrelated prompts (forgetting benches, causal-LM students).
`from_records` builds one from a cache's registry records (intervals: t over seeds); `from_results` from a
bench's results.json (its paired bootstrap intervals). `layout` turns either into pixel coordinates for the
`plot.html` template; nothing here draws, so the page works without JavaScript (hover is an enhancement).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pydantic import BaseModel

from robustkd.shared.methods import curve_end
from robustkd.shared.registry import Amount, Count, Proportion, RunRecord, number_at

# matplotlib's tab10, as in the report's PNG plots
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # t quantile, df = 1..10
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 480, 64, 16, 16, 52


def alpha_of(name: str) -> float:
    try:
        return float(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return math.nan


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95% t-interval of the mean over seeds; None with fewer than two."""
    n = len(values)
    if n < 2:
        return None
    t = T975[n - 2] if n - 2 < len(T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n)
    m = statistics.fmean(values)
    return m - half, m + half


def proportion(d: object, *keys: str) -> float | None:
    """The number at d[k1][k2]... when it is in [0, 1] (accuracy, macro-F1), else None."""
    v = number_at(d, *keys)
    return v if v is not None and 0 <= v <= 1 else None


def xy(metrics: object, who: str = "student") -> tuple[float | None, float | None]:
    """(ID test accuracy, OOD macro-F1) from a metrics.json: the robustness plane's coordinates."""
    return proportion(metrics, who, "test", "accuracy"), proportion(metrics, who, "ood_test", "macro_f1")


def retention_xy(metrics: object) -> tuple[float | None, float | None]:
    """(ID test accuracy, −KL per token on the unrelated prompts) from a causal-LM run's metrics.json (a forgetting
    bench evaluates its teacher as a run of its own)."""
    kl = number_at(metrics, "forgetting", "general", "kl_per_token")
    return proportion(metrics, "student", "test", "accuracy"), None if kl is None else -kl


class Axes(NamedTuple):
    x: str
    y: str
    y_short: str  # in hover boxes
    proportions: bool  # both axes within [0, 1]
    coordinates: Callable[[object], tuple[float | None, float | None]]


ROBUSTNESS = Axes("ID test accuracy", "OOD macro-F1", "OOD macro-F1", True, xy)
RETENTION = Axes("ID test accuracy", "−KL per token to the teacher (unrelated prompts)",
                 "−KL/token", False, retention_xy)


def from_records(records: Iterable[RunRecord]) -> dict:
    """Plot data of one cache's runs: dots, per-name means with t-intervals over seeds, curves, the teacher.
    Classification runs are drawn on the robustness plane; causal-LM runs with forgetting figures on retention."""
    records = list(records)
    axes = RETENTION if any(retention_xy(r.metrics)[1] is not None for r in records) \
        and not any(xy(r.metrics)[1] is not None for r in records) else ROBUSTNESS
    runs, groups, teacher = [], {}, None
    for r in records:
        x, y = axes.coordinates(r.metrics)
        if teacher is None and axes is ROBUSTNESS:
            tx, ty = xy(r.metrics, "teacher")
            teacher = {"x": tx, "y": ty} if tx is not None and ty is not None else None
        if x is None or y is None:
            continue
        runs.append({"name": r.name, "seed": r.seed, "x": x, "y": y, "href": f"/runs/{r.id}"})
        groups.setdefault(r.name, []).append((x, y))
    means = {}
    for name, pts in groups.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        means[name] = {"x": statistics.fmean(xs), "y": statistics.fmean(ys), "n": len(pts),
                       "xci": t_interval(xs), "yci": t_interval(ys)}
    if teacher:
        means["teacher"] = {**teacher, "n": 1, "xci": None, "yci": None}
    return {"runs": runs, "means": means, "curves": _curves(means), "axes": axes,
            "ci": "95% t-interval of the mean over seeds (methods with 2+ seeds)"}


def _curves(means: dict) -> dict[str, list[str]]:
    """teacher → WiSE points by α → the fine-tuned end, for each run that has WiSE points."""
    out: dict[str, list[str]] = {}
    for name in sorted((n for n in means if curve_end(n)), key=alpha_of):
        out.setdefault(curve_end(name), []).append(name)
    return {base: ["teacher", *pts, base] for base, pts in out.items() if base in means and "teacher" in means}


class Mean(BaseModel):
    mean: Proportion


class Interval(BaseModel):
    id_lo: Proportion | None = None
    id_hi: Proportion | None = None
    ood_lo: Proportion | None = None
    ood_hi: Proportion | None = None

    def x(self) -> tuple[float, float] | None:
        return None if self.id_lo is None or self.id_hi is None else (self.id_lo, self.id_hi)

    def y(self) -> tuple[float, float] | None:
        return None if self.ood_lo is None or self.ood_hi is None else (self.ood_lo, self.ood_hi)


class SummaryRow(BaseModel):
    id_acc: Mean | None = None
    ood_f1: Mean | None = None
    n_seeds: Count = 1
    ci: Interval | None = None


class Spread(BaseModel):
    """A forgetting bench's figure: its mean and 95% interval."""

    mean: Amount
    lo: Amount
    hi: Amount


class RetentionRow(BaseModel):
    id_acc: Spread | None = None
    kl: Spread | None = None
    n_seeds: Count = 1


class ResultRun(BaseModel):
    method: str
    seed: int
    metrics: dict = {}


class CurvePoint(BaseModel):
    method: str | None = None


class Curves(BaseModel):
    curves: dict[str, list[CurvePoint]] = {}


class Results(BaseModel):
    """What the plot reads of a robustness bench's results.json; any other shape fails validation (a ValueError)."""

    runs: list[ResultRun] = []
    summary: dict[str, SummaryRow] = {}
    curves: Curves | None = None


class ForgettingResults(BaseModel):
    """What the plot reads of a forgetting bench's results.json (`"suite": "forgetting"`)."""

    runs: list[ResultRun] = []
    summary: dict[str, RetentionRow] = {}
    curves: Curves | None = None


def from_results(results: object, run_ids: dict[tuple[str, int], str]) -> dict:
    """Plot data of a bench's results.json: its runs, its means with paired bootstrap intervals, its curves; on the
    retention plane for a forgetting bench."""
    forgetting = isinstance(results, dict) and results.get("suite") == "forgetting"
    res = (ForgettingResults if forgetting else Results).model_validate(results)
    axes = RETENTION if forgetting else ROBUSTNESS
    runs = []
    for r in res.runs:
        x, y = axes.coordinates(r.metrics)
        if x is None or y is None or r.method == "teacher":
            continue
        rid = run_ids.get((r.method, r.seed))
        runs.append({"name": r.method, "seed": r.seed, "x": x, "y": y, "href": rid and f"/runs/{rid}"})
    if forgetting:
        means = {name: {"x": row.id_acc.mean, "y": -row.kl.mean, "n": row.n_seeds,
                        "xci": (row.id_acc.lo, row.id_acc.hi), "yci": (-row.kl.hi, -row.kl.lo)}
                 for name, row in res.summary.items() if row.id_acc and row.kl}
    else:
        means = {name: {"x": row.id_acc.mean, "y": row.ood_f1.mean, "n": row.n_seeds,
                        "xci": row.ci and row.ci.x(), "yci": row.ci and row.ci.y()}
                 for name, row in res.summary.items() if row.id_acc and row.ood_f1}
    curves = {name: [p.method for p in pts if p.method in means]
              for name, pts in (res.curves.curves if res.curves else {}).items()}
    return {"runs": runs, "means": means, "curves": curves, "axes": axes,
            "ci": "95% paired bootstrap interval over seeds and test rows (the bench's)"}


def colours(names: Iterable[str]) -> dict[str, str]:
    """A colour per fine-tuned method; WiSE points take their curve's colour; the teacher is black."""
    out: dict[str, str] = {"teacher": "#000000"}
    for n in names:
        if n not in out and curve_end(n) is None:
            out[n] = COLOURS[(len(out) - 1) % len(COLOURS)]
    for n in names:
        if n not in out:
            out[n] = out.get(curve_end(n) or "", "#7f7f7f")
    return out


def ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    raw = (hi - lo) / n
    steps = [m * 10.0 ** e for e in range(-4, 4) for m in (1, 2, 2.5, 5)]
    step = min((s for s in steps if s >= raw), default=steps[-1])
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 6) for i in range(int((hi - first) / step + 1e-9) + 1)]


def layout(data: dict) -> dict | None:
    """Pixel coordinates for the template (viewBox W × H); None when there is nothing to draw."""
    means, runs, axes = data["means"], data["runs"], data.get("axes", ROBUSTNESS)
    if not means and not runs:
        return None
    xs = [v for m in means.values() for v in (m["x"], *(m["xci"] or ()))] + [r["x"] for r in runs]
    ys = [v for m in means.values() for v in (m["y"], *(m["yci"] or ()))] + [r["y"] for r in runs]
    (x0, x1), (y0, y1) = _span(xs), _span(ys, axes.proportions)

    def px(x: float) -> float:  # intervals wider than the axes (two seeds: t = 12.7) end at the frame
        return round(LEFT + (min(max(x, x0), x1) - x0) / (x1 - x0) * (W - LEFT - RIGHT), 1)

    def py(y: float) -> float:
        return round(H - BOTTOM - (min(max(y, y0), y1) - y0) / (y1 - y0) * (H - TOP - BOTTOM), 1)

    col = colours([*means, *(r["name"] for r in runs)])
    marks = []
    for name, m in means.items():
        tip = f"{name}: mean of {m['n']} — ID acc {m['x']:.3f}, {axes.y_short} {m['y']:.3f}"
        if m["xci"] and m["yci"]:
            tip += f" (ID {m['xci'][0]:.3f}–{m['xci'][1]:.3f}, {axes.y_short} {m['yci'][0]:.3f}–{m['yci'][1]:.3f})"
        marks.append({"name": name, "cx": px(m["x"]), "cy": py(m["y"]), "colour": col[name], "tip": tip,
                      "teacher": name == "teacher", "wise": curve_end(name) is not None,
                      "xci": m["xci"] and (px(m["xci"][0]), px(m["xci"][1])),
                      "yci": m["yci"] and (py(m["yci"][0]), py(m["yci"][1]))})
    dots = [{"cx": px(r["x"]), "cy": py(r["y"]), "colour": col[r["name"]], "href": r["href"],
             "tip": f"{r['name']} seed {r['seed']}: ID acc {r['x']:.3f}, {axes.y_short} {r['y']:.3f}"}
            for r in runs]
    lines = [{"name": name, "colour": col.get(pts[-1], "#7f7f7f"),
              "points": " ".join(f"{px(means[p]['x'])},{py(means[p]['y'])}" for p in pts)}
             for name, pts in data["curves"].items() if len(pts) > 1]
    return {"w": W, "h": H, "left": LEFT, "right": W - RIGHT, "top": TOP, "bottom": H - BOTTOM,
            "xticks": [(px(t), f"{t:g}") for t in ticks(x0, x1)], "yticks": [(py(t), f"{t:g}") for t in ticks(y0, y1)],
            "marks": marks, "dots": dots, "lines": lines, "legend": legend(col, [*means, *(r["name"] for r in runs)]),
            "ci": data["ci"], "x_label": axes.x, "y_label": axes.y}


def legend(col: dict[str, str], shown: list[str]) -> list[dict]:
    """The teacher, each fine-tuned method, then one entry per WiSE-FT curve with its α values."""
    out = [{"name": "teacher", "colour": col["teacher"], "kind": "teacher"}] if "teacher" in shown else []
    out += [{"name": n, "colour": col[n], "kind": "run"} for n in dict.fromkeys(shown)
            if n != "teacher" and curve_end(n) is None]
    alphas: dict[str, list[float]] = {}
    for n in dict.fromkeys(shown):
        if (b := curve_end(n)) is not None:
            alphas.setdefault(b, []).append(alpha_of(n))
    return out + [{"name": f"WiSE-FT of {b}, α = {', '.join(f'{a:g}' for a in sorted(al))}", "colour": col[b]
                   if b in col else "#7f7f7f", "kind": "wise"} for b, al in alphas.items()]


def _span(values: list[float], proportions: bool = True) -> tuple[float, float]:
    """The axis range: the values with a margin; within [0, 1] for a proportion (−KL is unbounded below; 0 at
    most)."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.01)
    return max(0.0, lo - pad) if proportions else lo - pad, min(1.0 if proportions else 0.0, hi + pad)
