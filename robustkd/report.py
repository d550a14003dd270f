"""The benchmark report: the diagnosis first, then curves, tables, the proxy check, and only what intervals support."""

from __future__ import annotations

import math
from pathlib import Path

from robustkd.plots import all_plots

COLUMNS = (("id_acc", "ID acc"), ("id_f1", "ID F1"), ("id_bal_acc", "ID bal. acc"), ("ood_acc", "OOD acc"),
           ("ood_f1", "OOD F1"), ("ood_bal_acc", "OOD bal. acc"), ("ood_auroc", "OOD AUROC"), ("ood_ece", "OOD ECE"),
           ("heldout_acc", "held-out pert. acc"), ("ood_pred_pos", "OOD pred. pos"),
           ("single_class", "one-class runs"), ("train_s", "train s"), ("peak_rss_mb", "peak RSS MB"))


def _cell(v: dict | None, key: str) -> str:
    if v is None:
        return "–"
    if key in ("train_s", "peak_rss_mb", "single_class"):
        return f"{v['mean']:.0f}"
    return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v["std"] > 0 else "")


def results_table(summary: dict) -> str:
    lines = ["| method | seeds | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for method, row in summary.items():
        cells = " | ".join(_cell(row.get(k), k) for k, _ in COLUMNS)
        lines.append(f"| {method} | {row.get('n_seeds', '–')} | {cells} |")
    return "\n".join(lines)


def span(b: dict) -> str:
    if math.isnan(b["lo"]):
        return f"{b['diff']:+.3f} (no interval)"
    return f"{b['diff']:+.3f} (95% CI {b['lo']:+.3f} to {b['hi']:+.3f})"


def bootstrap_table(boot: dict, ours: str = "ours") -> str:
    cols = ("ood_test:macro_f1", "test:accuracy", "test_heldout:accuracy")
    names = ("OOD macro-F1", "ID accuracy", "held-out-perturbed accuracy")
    lines = [f"| {ours} − baseline | " + " | ".join(names) + " | seeds |", "|---" * (len(cols) + 2) + "|"]
    for method, d in boot.items():
        lines.append(f"| {method} | " + " | ".join(
            f"{d[c]['diff']:+.3f} [{d[c]['lo']:+.3f}, {d[c]['hi']:+.3f}]" for c in cols) + f" | {seed_list(d)} |")
    return "\n".join(lines)


def seed_list(d: dict) -> str:
    """The seeds a paired comparison used ("–" in results written before comparisons recorded them)."""
    return ", ".join(map(str, d["seeds"])) if "seeds" in d else "–"


def seeds_named(d: dict) -> str:
    """"seed 0" or "seeds 0, 1": the seeds of a comparison, in a sentence."""
    return f"seed{'s' * (len(d.get('seeds', [])) != 1)} {seed_list(d)}"


def verdict(boot: dict, summary: dict) -> str:
    """One sentence per baseline on OOD macro-F1, from the bootstrap interval only."""
    if not boot:
        return "No `ours` runs: nothing to compare."
    out = []
    for method, d in boot.items():
        b = d["ood_test:macro_f1"]
        if b["lo"] > 0:
            out.append(f"ours beats {method} on OOD macro-F1 by {span(b)}.")
        elif b["hi"] < 0:
            out.append(f"ours is worse than {method} on OOD macro-F1: {span(b)}.")
        else:
            out.append(f"ours and {method} are not distinguishable on OOD macro-F1: {span(b)}.")
    alone = [m for m in summary if m != "ours" and m not in boot]
    if alone:
        out.append(f"ours shares no seed with {', '.join(alone)}: not compared.")
    return " ".join(out)


def diagnosis_text(d: dict) -> str:
    """Is there robustness to preserve? (ft − teacher on OOD)"""
    if not d:
        return "No `ft` and `teacher` runs: no diagnosis."
    f1 = d["ood_macro_f1"]
    auroc = f" and on OOD AUROC {span(d['ood_auroc'])}" if "ood_auroc" in d else ""
    head = f"Fine-tuning (ft) − the frozen teacher on OOD macro-F1: {span(f1)}{auroc}. "
    if d["loses"]:
        text = head + ("**Fine-tuning loses OOD performance: there is robustness to preserve**, and robust "
                       "fine-tuning is judged on how much of it it keeps at what ID cost.")
        if "id_accuracy" in d and d["id_accuracy"]["diff"] <= 0:
            text += (f" But ft is not better than the teacher in distribution either (ID accuracy "
                     f"{span(d['id_accuracy'])}): this fine-tune did not learn the task beyond the frozen model, so "
                     "its OOD loss may say more about the training budget than about robustness.")
        return text
    if d["gains"]:
        return head + ("**Fine-tuning does not lose OOD performance here: it gains it.** There is no robustness to "
                       "preserve with this teacher; use the plain fine-tune. ours is judged only on doing no harm.")
    return head + ("**Fine-tuning does not lose OOD performance detectably** (the interval includes 0): there is no "
                   "robustness to preserve that these seeds can show; use the plain fine-tune. ours is judged only on "
                   "doing no harm.")


def recommendation(d: dict) -> str | None:
    """One line for a report whose diagnosis finds no robustness to preserve: use the plain fine-tune."""
    if not d or d["loses"]:
        return None
    return (f"**Recommendation: use the plain fine-tune (`ft`).** It does not lose OOD macro-F1 against this teacher "
            f"({span(d['ood_macro_f1'])}), so there is no robustness here for a robust method to preserve.")


def gap_text(ours: str, gap: dict) -> str:
    if math.isnan(gap["diff"]):
        return f"The {ours} and WiSE-FT curves cover no common range of ID accuracy: no gap to measure."
    where = "lies above" if gap["lo"] > 0 else "lies below" if gap["hi"] < 0 else "is not distinguishable from"
    return (f"At matched ID accuracy the {ours} curve **{where}** the WiSE-FT curve: mean OOD macro-F1 gap "
            f"{span(gap)} over the ID-accuracy range both curves cover (paired bootstrap over test rows; "
            f"{seeds_named(gap)}: what every point of both curves has).")


def curves_text(c: dict, d: dict) -> list[str]:
    out = [gap_text("ours", c["ours_minus_wise_ft"])] if c.get("ours_minus_wise_ft") else []
    if not out and {"ours", "wise-ft"} <= set(c.get("curves", {})):
        out.append("The ours and WiSE-FT curves share no seed: no gap to measure.")
    g = c.get("goal")
    if g:
        on = f" on {seeds_named(g)}" if "seeds" in g else ""
        best = g["ours_best_ood_f1_within_1pt_of_ft_id"]
        if math.isnan(best):
            out.append(f"The goal: the ours curve never comes within 1 point of ft's ID accuracy "
                       f"({g['ft_id_acc']:.3f}{on}), so it **does not reach** the teacher's OOD macro-F1 there.")
        else:
            reach = "reaches" if g["reaches_teacher_ood_near_ft_id"] else "does not reach"
            out.append(f"The goal: with ID accuracy within 1 point of ft's ({g['ft_id_acc']:.3f}{on}) the ours curve's "
                       f"best OOD macro-F1 is {best:.3f}; it **{reach}** the teacher's {g['teacher_ood_f1']:.3f}.")
        if d and not d.get("loses"):
            harm = "reaches" if g["reaches_ft_point"] else "does not reach"
            out.append(f"No harm: within 1 point of ft's ID accuracy the ours curve **{harm}** ft's OOD macro-F1 "
                       f"({g['ft_ood_f1']:.3f}{on}).")
    return out


def proxy_text(p: dict) -> str:
    if not p:
        return "Too few runs with held-out-perturbed validation figures for the proxy check."
    s = p["spearman"]
    if math.isnan(s["rho"]):
        return f"Across {p['runs']} runs the figures do not vary: no rank correlation to measure."
    picks = ", ".join(f"seed {q['seed']}: {q['picked']} ({q['picked_ood_f1']:.3f}; best {q['best']} "
                      f"{q['best_ood_f1']:.3f})" for q in p["picks"])
    trust = "can" if s["lo"] > 0 else "cannot"
    return (f"Across {p['runs']} runs, Spearman's ρ between held-out-perturbed validation macro-F1 and OOD macro-F1 is "
            f"{s['rho']:+.2f} (95% CI {s['lo']:+.2f} to {s['hi']:+.2f}): a user without OOD labels **{trust}** rely "
            f"on it to rank models here. Picking the run with the best proxy per seed: {picks}; mean regret "
            f"{p['mean_regret']:.3f} OOD macro-F1.")


def write_report(results: dict, out: Path) -> str:
    summary = results["summary"]
    files = all_plots(results, out)
    first = next((r for r in summary.values() if "drift" in r), None)
    drift = []
    if first:
        layers = sorted(first["drift"], key=int)
        drift = ["| method | " + " | ".join(f"layer {k}" for k in layers) + " |", "|---" * (len(layers) + 1) + "|",
                 *(f"| {m} | " + " | ".join(f"{r['drift'][k]:.3f}" for k in layers) + " |"
                   for m, r in summary.items() if "drift" in r)]
    c, d = results.get("curves", {}), results.get("diagnosis", {})
    t = results["teacher"]
    text = [
        f"# robustkd benchmark: {results['task']} — {t['family']} teacher, {t['head']} head", "",
        f"Model `{t['model']}`; budget `{results['budget']}`, {results['seeds']} seed{'s' * (results['seeds'] != 1)}; "
        f"cache `{results['cache_key'][:12]}` "
        f"({results['cache_rows']} rows). Training settings shared by all methods: `{results['train_config']}`. "
        "ID = `test`; OOD = `ood_test` (natural shift); held-out perturbations = test rows perturbed by transforms "
        "the training recipe never used. "
        + ("Cells: mean ± std over seeds." if results["seeds"] > 1 else "One seed: no spread over seeds; the "
           "intervals below resample test rows only."), "",
        *([rec, ""] if (rec := recommendation(d)) else []),
        "## Is there robustness to preserve?", "", diagnosis_text(d), "",
        "## Curves: ours against WiSE-FT", "",
        "Each curve runs from the teacher (α = 0: pre-trained backbone and the cache's head) through weight-space "
        "interpolations of every weight, head included (α = 0.25, 0.5, 0.75), to the fine-tuned run (α = 1): "
        "`wise-ft` interpolates `lp-ft`, `ours-wise` interpolates `ours`.", "",
        *(x for line in curves_text(c, d) for x in (line, "")),
        f"![ID vs OOD]({files[0]})", "",
        "## All runs", "", results_table(summary), "",
        "Paired bootstrap (1,000 resamples of test rows; each row over the seeds both methods have, set seed against "
        "seed), difference ours − baseline, 95% interval:", "",
        bootstrap_table(results["bootstrap"]), "", "**Reading.** " + verdict(results["bootstrap"], summary), "",
        "## Can the validation proxy be trusted?", "", proxy_text(results.get("proxy", {})), "",
        "## Activation drift and cost", "",
        "Relative distance of the student's pooled activations to the teacher's on OOD rows (0 = unchanged):", "",
        *drift, "", f"![drift]({files[2]})", f"![cost]({files[1]})", "",
    ]
    if results.get("separate"):
        sep = results["separate"]
        text += ["## A separate setting: unlabelled target-domain text", "", results.get("unlabelled_note", ""), "",
                 "Its runs are in none of the figures above (table, curves, intervals, proxy).", "",
                 results_table(sep["summary"]), "",
                 *([gap_text("ours-unlabelled", sep["curve_gap"]), ""] if sep.get("curve_gap") else []),
                 "Paired bootstrap, difference ours-unlabelled − baseline, 95% interval:", "",
                 bootstrap_table(sep["bootstrap"], "ours-unlabelled"), ""]
    if results.get("sweep"):
        sw = results["sweep"]
        text += [f"Sweep ({sw['criterion']}): chosen {sw['chosen']}.", ""]
    report = "\n".join(text)
    (out / "report.md").write_text(report)
    return report
