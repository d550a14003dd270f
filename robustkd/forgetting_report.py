"""The forgetting bench's report: the diagnosis first (does plain fine-tuning forget, did it learn the task), then the
task-vs-retention plane with each WiSE-FT curve, then every run. Only what the paired intervals support is said."""

from __future__ import annotations

import math
from pathlib import Path

from robustkd.forgetting_analysis import FORGETTING, METRICS, RETENTION
from robustkd.plots import _fig, style
from robustkd.report import seeds_named

COLUMNS = ("id_acc", "id_f1", "ood_acc", "ood_f1", "format_share", "kl", "nll", "transfer_acc")
SHORT = {"id_acc": "ID acc", "id_f1": "ID F1", "ood_acc": "OOD acc", "ood_f1": "OOD F1", "format_share": "format share",
         "kl": "KL/token", "nll": "NLL/token", "transfer_acc": "transfer acc"}


def signed(x: float) -> str:
    """3 decimals, or 3 significant digits below 0.01 (a KL can differ by 1e-5)."""
    return f"{x:+.3f}" if x == 0 or abs(x) >= 0.01 else f"{x:+.2e}"


def span(b: dict) -> str:
    if math.isnan(b["lo"]):
        return f"{signed(b['diff'])} (no interval)"
    return f"{signed(b['diff'])} (95% CI {signed(b['lo'])} to {signed(b['hi'])})"


def _cell(v: dict | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v['mean']:.{digits}f}" + (f" ± {v['std']:.{digits}f}" if v.get("std", 0) > 0 else "")


def runs_table(summary: dict) -> str:
    lines = ["| method | seeds | " + " | ".join(SHORT[c] for c in COLUMNS) + " | s/step |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for m, row in summary.items():
        cells = [str(row["n_seeds"]), *(_cell(row.get(c)) for c in COLUMNS), _cell(row.get("s_per_step"), 2)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnosis_text(results: dict) -> list[str]:
    d, s = results.get("diagnosis", {}), results["summary"]
    if not d:
        return ["No `ft` and `teacher` runs: no diagnosis."]
    lines = ["| metric | teacher | ft | ft − teacher (95% CI) | reading |", "|---|---|---|---|---|"]
    for metric, x in d["metrics"].items():
        worse = "higher" if FORGETTING[metric] > 0 else "lower"
        reading = f"**forgets** ({worse} is worse)" if x["forgets"] else "no detectable loss"
        lines.append(f"| {METRICS[metric][1]} | {_cell(s['teacher'].get(metric))} | {_cell(s['ft'].get(metric))} | "
                     f"{span(x)} | {reading} |")
    names = [METRICS[m][1] for m in d["forgets"]]
    over = f"{seeds_named(d)} and rows" if "seeds" in d else "seeds and rows"
    if names:
        verdict = (f"**Plain fine-tuning (ft) forgets**: against the untouched teacher it loses general behaviour on "
                   f"{', '.join(names)} (paired bootstrap over {over}): there is something to preserve, and "
                   "the methods below are judged on how much of it they keep at what task accuracy.")
    else:
        verdict = ("**Plain fine-tuning (ft) does not forget detectably** on any of these measures (every interval "
                   "includes no loss): with this budget there is no general behaviour to preserve that these seeds and "
                   "prompts can show. **Recommendation: use the plain fine-tune (`ft`).**")
    acc = d.get("id_acc")
    if acc is None:
        learned = "ID accuracy was not measured for ft and the teacher."
    elif d["learned"]:
        learned = f"ft learned the task beyond the teacher: ID accuracy {span(acc)}."
    else:
        learned = (f"**ft did not learn the task beyond the teacher** (ID accuracy ft − teacher {span(acc)}): at this "
                   "budget the fine-tune is not better at its own task, so what it loses is not bought with task "
                   "accuracy; a larger budget (more steps or rows) is needed before the curves below mean much.")
    return [verdict, "", *lines, "", learned]


def gaps_text(results: dict) -> list[str]:
    out = []
    for retention, gaps in results.get("curves", {}).get("gaps", {}).items():
        for pair, g in gaps.items():
            a, b = pair.split(" − ")
            if "seeds" in g and not g["seeds"]:
                out.append(f"- {RETENTION[retention]}: the {a} and {b} curves share no seed: not compared.")
                continue
            if math.isnan(g["diff"]):
                out.append(f"- {RETENTION[retention]}: the {a} and {b} curves cover no common range of ID accuracy.")
                continue
            where = "lies above" if g["lo"] > 0 else "lies below" if g["hi"] < 0 else "is not distinguishable from"
            out.append(f"- {RETENTION[retention]}: at matched ID accuracy the {a} curve **{where}** the {b} curve "
                       f"(mean gap {span(g)}{f', {seeds_named(g)}' if 'seeds' in g else ''}).")
    return out or ["- Not enough curves to compare (each needs the teacher, its three WiSE points and its run)."]


def plane(results: dict, path: Path) -> None:
    """ID accuracy against each retention measure: every curve (teacher → WiSE points → the fine-tuned run) with
    95% interval crosses."""
    plt = _fig()
    panels = results.get("curves", {}).get("retention", {})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 5), squeeze=False)
    st = style(list(results["summary"]))
    for ax, (retention, curves) in zip(axes[0], panels.items(), strict=False):
        for name, pts in curves.items():
            colour = st[name][0]
            ax.plot([p["id_acc"] for p in pts], [p["retention"] for p in pts], "-", color=colour, lw=1.2,
                    label=f"{name} (WiSE α = 0 … 1)")
            for p in pts:
                ax.errorbar(p["id_acc"], p["retention"], xerr=[[p["id_acc"] - p["id_lo"]], [p["id_hi"] - p["id_acc"]]],
                            yerr=[[p["retention"] - p["lo"]], [p["hi"] - p["retention"]]],
                            fmt="*" if p["method"] == "teacher" else st.get(p["method"], (colour, "o"))[1],
                            color="black" if p["method"] == "teacher" else colour, ms=7, lw=0.8, capsize=2)
        ax.set_xlabel("ID task accuracy")
        ax.set_ylabel(f"retention: {RETENTION[retention]} (higher keeps more)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['task']}: task accuracy vs retention on unrelated prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples(results: dict) -> list[str]:
    """A few held-out unrelated prompts with the teacher's and ft's (first seed's) first words."""
    by = {(r["method"], r["seed"]): r["metrics"] for r in results["runs"]}
    t, f = by.get(("teacher", 0)), by.get(("ft", 0))
    if not t or not f:
        return []
    rows = ["| prompt | teacher | ft (seed 0) |", "|---|---|---|"]
    for a, b in zip(t["forgetting"]["general"]["examples"], f["forgetting"]["general"]["examples"], strict=False):
        cells = [" ".join(x.split()).replace("|", "\\|")[:80] for x in (a["prompt"], a["generated"], b["generated"])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write_report(results: dict, out: Path) -> str:
    plot = "task_vs_retention.png"
    plane(results, out / plot)
    t, g = results["teacher"], results["general"]
    cfg = results["train_config"]
    transfer = results.get("transfer_task")
    template = "its chat template" if g["spec"]["chat_template"] else "no template"
    vocab = ", ".join(g["vocabulary"][:6]) + (", …" if len(g["vocabulary"]) > 6 else "")
    ex = examples(results)
    text = [
        f"# robustkd forgetting benchmark: {results['task']} — causal LM `{t['model']}`", "",
        f"Budget `{results['budget']}`, {results['seeds']} seed{'s' * (results['seeds'] != 1)}; cache "
        f"`{results['cache_key'][:12]}` ({results['cache_rows']} rows, top-k or dense targets); training settings "
        f"shared by all methods: `{cfg}`. Task accuracy is on the ID `test` rows (OOD: `ood_test`). Retention is "
        f"measured on {g['n']} unrelated prompts no method trained on, which the teacher answered itself (greedy, "
        f"{g['spec']['max_new_tokens']} new tokens, {template}); format share counts answers starting with one of "
        f"the task's answers ({vocab}). "
        + (f"Zero-shot transfer: accuracy on `{transfer}`'s ID test rows. " if transfer else "No transfer task. ")
        + "Intervals: paired bootstrap over seeds and rows (docs/forgetting.md).", "",
        "## Does fine-tuning forget?", "", *diagnosis_text(results), "",
        "## Task accuracy vs retention", "",
        "Each curve runs from the teacher (α = 0) through WiSE-FT interpolations of every weight (α = 0.25, 0.5, "
        "0.75) to the fine-tuned run (α = 1): `ft`, `lora`, `ours` (KD on perturbed task prompts) and `ours-general` "
        "(ours plus the unrelated prompts' distillation half as distillation-only rows). A curve above another at "
        "the same ID accuracy keeps more of the teacher. A curve is drawn over the seeds all its points have, and two "
        "curves are compared over the seeds both have.", "",
        *gaps_text(results), "", f"![task vs retention]({plot})", "",
        "## All runs", "", "Mean ± std over seeds (the teacher: one evaluation).", "", runs_table(results["summary"]),
        "", *(["## Unrelated prompts: the teacher's and ft's answers", "", *ex, ""] if ex else []),
    ]
    report = "\n".join(text)
    (out / "report.md").write_text(report)
    return report
