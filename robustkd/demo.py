"""`make demo`: precompute the default task's cache, train the method table's demo methods (ft, lora, ours) on a
small budget, compare."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from robustkd.bench import record_bench
from robustkd.runs import train_in_subprocess
from robustkd.shared.methods import METHODS, TABLE
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.record import register

DEMO_METHODS = tuple(m.name for m in TABLE if m.demo)
# what each column of the demo table means (printed under it and written into report.md)
COLUMNS = {
    "teacher": "the frozen model with the cache's head (zero-shot prototypes for a text task, else a linear probe)",
    "id_acc": "accuracy on the ID test split",
    "id_f1": "macro-F1 on the ID test split",
    "ood_acc": "accuracy on the OOD test split (the natural shift)",
    "ood_f1": "macro-F1 on the OOD test split",
    "ood_auroc": "AUROC on the OOD test split (threshold-free)",
    "ood_pred_<class>": "share of OOD rows the model predicts as <class>",
    "ood_true_<class>": "share of OOD rows that truly are <class> (a good model is close to it)",
    "train_s": "fine-tuning wall time in seconds",
    "peak_rss_mb": "peak resident memory of the training process",
}


def row(name: str, m: dict, who: str = "student") -> dict:
    """One table row: ID and OOD figures, time and memory."""
    test, ood = m[who]["test"], m[who]["ood_test"]
    pos = m["label_names"][-1]
    train = m.get("train", {}) if who == "student" else {}
    return {"method": name, "id_acc": test["accuracy"], "id_f1": test["macro_f1"], "ood_acc": ood["accuracy"],
            "ood_f1": ood["macro_f1"], "ood_auroc": ood.get("auroc"), f"ood_pred_{pos}": ood["predicted_rate"][pos],
            f"ood_true_{pos}": ood["true_rate"][pos], "train_s": train.get("train_s"),
            "peak_rss_mb": train.get("peak_rss_mb")}


def fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """ID accuracy vs OOD macro-F1, a labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for r, marker in zip(rows, "s^oDv*", strict=False):
        ax.scatter(r["id_acc"], r["ood_f1"], marker=marker, s=60, label=r["method"])
    ax.set_xlabel("ID test accuracy")
    ax.set_ylabel("OOD macro-F1")
    ax.set_title("robustkd demo: ID vs OOD")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(location: str, key: str, precompute_s: float, out: Path, *, train_groups: int = 1000, epochs: int = 1,
             threads: int | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Train the demo methods on the cache at `location`; writes out/report.md and out/id_vs_ood.png."""
    t0 = time.perf_counter()
    manifest = json.loads((Path(location) / "manifest.json").read_text())
    rows, runs = [], []
    for name in DEMO_METHODS:
        log(f"training {name} ({train_groups} train examples, {epochs} epoch)")
        cfg = TrainConfig(cache=location, out=str(out / name), train_groups=train_groups, epochs=epochs,
                          threads=threads, **METHODS[name].train_args())
        m = train_in_subprocess(cfg, echo=True)
        register(cfg.out, name=name)  # in the registry as in the report (the run recorded itself by its config)
        if not rows:
            rows.append(row("teacher", m, who="teacher"))
        rows.append(row(name, m))
        runs.append({"method": name, "seed": cfg.seed, "run": cfg.out})
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "id_vs_ood.png")
    legend = "\n".join(f"- `{k}`: {v}" for k, v in COLUMNS.items())
    report = "\n".join([
        f"# robustkd demo: {manifest['spec']['task']['name']}", "",
        f"Cache `{key}`: {manifest['n_rows']} rows, precomputed in {precompute_s:.0f}s "
        f"(run again: found at once). Students trained on {train_groups} train examples × {epochs} epoch.",
        "ID = `test` split, OOD = `ood_test` split (natural shift). One seed: differences of a few points are "
        "within seed noise (see `robustkd bench` for seeds and intervals).", "",
        markdown_table(rows), "", legend, "", "![ID vs OOD](id_vs_ood.png)", "",
        f"Training and evaluation took {time.perf_counter() - t0:.0f}s.", ""])
    (out / "report.md").write_text(report)
    record_bench("demo", location, key, out, manifest["spec"]["task"]["name"], runs, 1, list(DEMO_METHODS))
    return rows


def best_on_validation(out: Path, names: list[str]) -> tuple[str, float]:
    """(the demo student with the best validation score, its score): the mean of clean and held-out-perturbed
    validation macro-F1, the score defaults are chosen on (never the OOD test split)."""
    scores = {}
    for name in names:
        m = json.loads((out / name / "metrics.json").read_text())["student"]
        scores[name] = (m["validation"]["macro_f1"] + m["validation_heldout"]["macro_f1"]) / 2
    best = max(scores, key=scores.get)
    return best, scores[best]

