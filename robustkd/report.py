"""The benchmark report: Markdown tables, plots, and a paragraph that says only what the numbers support."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = (("id_acc", "ID acc"), ("id_f1", "ID F1"), ("ood_acc", "OOD acc"), ("ood_f1", "OOD F1"),
           ("ood_auroc", "OOD AUROC"), ("ood_ece", "OOD ECE"), ("heldout_acc", "held-out pert. acc"),
           ("ood_pred_pos", "OOD pred. pos"), ("train_s", "train s"), ("peak_rss_mb", "peak RSS MB"))


def _cell(v: dict | None, key: str) -> str:
    if v is None:
        return "–"
    if key in ("train_s", "peak_rss_mb"):
        return f"{v['mean']:.0f}"
    return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v["std"] > 0 else "")


def results_table(summary: dict) -> str:
    lines = ["| method | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, row in summary.items():
        lines.append(f"| {method} | " + " | ".join(_cell(row.get(k), k) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def bootstrap_table(boot: dict) -> str:
    cols = ("ood_test:macro_f1", "test:accuracy", "test_heldout:accuracy")
    names = ("OOD macro-F1", "ID accuracy", "held-out-perturbed accuracy")
    lines = ["| ours − baseline | " + " | ".join(names) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, d in boot.items():
        lines.append(f"| {method} | " + " | ".join(
            f"{d[c]['diff']:+.3f} [{d[c]['lo']:+.3f}, {d[c]['hi']:+.3f}]" for c in cols) + " |")
    return "\n".join(lines)


def verdict(boot: dict, summary: dict) -> str:
    """One sentence per baseline on OOD macro-F1, from the bootstrap interval only."""
    if not boot:
        return "No `ours` runs: nothing to compare."
    out = []
    for method, d in boot.items():
        b = d["ood_test:macro_f1"]
        span = f"{b['diff']:+.3f} (95% CI {b['lo']:+.3f} to {b['hi']:+.3f})"
        if b["lo"] > 0:
            out.append(f"ours beats {method} on OOD macro-F1 by {span}.")
        elif b["hi"] < 0:
            out.append(f"ours is worse than {method} on OOD macro-F1: {span}.")
        else:
            out.append(f"ours and {method} are not distinguishable on OOD macro-F1: {span}.")
    wise = [m for m in summary if m.startswith("wise-ft")]
    if wise and "ours" in summary:
        above = _above_wise_curve(summary, wise)
        out.append(f"At equal ID accuracy, ours lies {'above' if above else 'not above'} the WiSE-FT curve "
                   "(linear interpolation of the mean WiSE-FT points; means only, no interval).")
    return " ".join(out)


def _above_wise_curve(summary: dict, wise: list[str]) -> bool:
    pts = [(summary[m]["id_acc"]["mean"], summary[m]["ood_f1"]["mean"]) for m in wise + ["lp-ft", "teacher"]
           if m in summary]
    pts.sort()
    x, y = summary["ours"]["id_acc"]["mean"], summary["ours"]["ood_f1"]["mean"]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return bool(y > np.interp(x, xs, ys))


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, runs = results["summary"], results["runs"]
    files = []
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for method in summary:
        rs = [r for r in runs if r["method"] == method]
        xs = [r["metrics"]["student"]["test"]["accuracy"] for r in rs]
        ys = [r["metrics"]["student"]["ood_test"]["macro_f1"] for r in rs]
        ax.scatter(xs, ys, label=method, s=22, marker="*" if method.startswith("ours") else "o")
    if "teacher" in summary and "ft" in summary:
        t, f = summary["teacher"], summary["ft"]
        ax.plot([t["id_acc"]["mean"], f["id_acc"]["mean"]], [t["ood_f1"]["mean"], f["ood_f1"]["mean"]], "k--", lw=1,
                label="teacher – ft")
    ax.set_xlabel("ID test accuracy")
    ax.set_ylabel("OOD macro-F1")
    ax.set_title(f"{results['task']}: ID vs OOD (a point per method and seed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "id_vs_ood.png", dpi=110)
    files.append("id_vs_ood.png")
    plt.close(fig)

    trained = [m for m in summary if "train_s" in summary[m] and summary[m]["train_s"]["mean"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].barh(trained, [summary[m]["train_s"]["mean"] for m in trained])
    axes[0].set_xlabel("fine-tuning wall time (s)")
    axes[1].barh(trained, [summary[m].get("peak_rss_mb", {"mean": 0})["mean"] for m in trained])
    axes[1].set_xlabel("peak RSS during fine-tuning (MB)")
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=110)
    files.append("cost.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, row in summary.items():
        if "drift" in row:
            layers = sorted(row["drift"], key=int)
            ax.plot([int(x) for x in layers], [row["drift"][x] for x in layers], marker="o",
                    label=method)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("‖a_student − a_teacher‖ / ‖a_teacher‖ on OOD rows")
    ax.set_title("activation drift after fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=110)
    files.append("drift.png")
    plt.close(fig)
    return files


def write_report(results: dict, out: Path) -> str:
    summary = results["summary"]
    files = plots(results, out)
    drift_lines = [f"| {m} | " + " | ".join(f"{r['drift'][k]:.3f}" for k in sorted(r["drift"], key=int)) + " |"
                   for m, r in summary.items() if "drift" in r]
    first = next((r for r in summary.values() if "drift" in r), None)
    drift_head = ("| method | " + " | ".join(f"layer {k}" for k in sorted(first["drift"], key=int)) + " |\n"
                  + "|---" * (len(first["drift"]) + 1) + "|") if first else ""
    sweep = results.get("sweep")
    text = [
        f"# robustkd benchmark: {results['task']}", "",
        f"Budget `{results['budget']}`, {results['seeds']} seeds, cache `{results['cache_key'][:12]}` "
        f"({results['cache_rows']} rows, precomputed once in {results['precompute_s']:.0f}s). "
        f"Training config shared by all methods: `{results['train_config']}`. Cells: mean ± std over seeds. "
        "ID = `test`; OOD = `ood_test` (natural shift); held-out perturbations = test rows perturbed by "
        "transforms the training cache never used.", "",
        results_table(summary), "",
        "Paired bootstrap (1,000 resamples of test rows, same seeds), difference ours − baseline, 95% interval:", "",
        bootstrap_table(results["bootstrap"]), "",
        "**Reading.** " + verdict(results["bootstrap"], summary), "",
        "Activation drift on OOD rows (relative distance to the teacher's pooled activations; 0 = unchanged):", "",
        drift_head, *drift_lines, "",
    ]
    if sweep:
        text += [f"Sweep ({sweep['criterion']}): chosen {sweep['chosen']}.", ""]
    text += [f"![ID vs OOD]({files[0]})", f"![cost]({files[1]})", f"![drift]({files[2]})", ""]
    report = "\n".join(text)
    (out / "report.md").write_text(report)
    return report
