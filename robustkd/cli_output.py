"""What the CLI prints besides messages: its result tables and the single-class warnings.

Split out of `robustkd.cli` (which stays the only entry point); imports no torch.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def stdout() -> Console:
    """Tables on stdout: as wide as they need when piped (a file has no width to wrap at)."""
    c = Console()
    return c if c.is_terminal else Console(width=200)


def metrics_table(m: dict) -> Table:
    """metrics.json of a run as a table: per-token figures for a generative run, class figures otherwise."""
    if m.get("generative"):
        t = Table("model", "split", "rows", "tokens", "nll/token", "perplexity", "exact match")
        for split, r in m["student"].items():
            t.add_row("student", split, str(r["n"]), str(r["tokens"]), f"{r['nll_per_token']:.3f}",
                      f"{r['perplexity']:.2f}", f"{r['exact_match']:.3f}")
        return t
    names = m["label_names"]
    t = Table("model", "split", "acc", "macro-F1", "AUROC", "ECE", *(f"pred. {n}" for n in names),
              *(f"true {n}" for n in names))
    for who in ("teacher", "student"):
        for split, r in m[who].items():
            t.add_row(who, split, f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      f"{r.get('auroc', float('nan')):.3f}", f"{r['ece']:.3f}",
                      *(f"{r['predicted_rate'][n]:.2f}" for n in names), *(f"{r['true_rate'][n]:.2f}" for n in names))
    return t


def wise_table(out: dict) -> Table:
    """`robustkd wise`: ID and OOD figures per interpolation weight α."""
    t = Table("α", "ID acc", "ID macro-F1", "OOD acc", "OOD macro-F1", "OOD AUROC")
    for a, m in out.items():
        s = m["student"]
        t.add_row(f"{a:g}", f"{s['test']['accuracy']:.3f}", f"{s['test']['macro_f1']:.3f}",
                  f"{s['ood_test']['accuracy']:.3f}", f"{s['ood_test']['macro_f1']:.3f}",
                  f"{s['ood_test'].get('auroc', float('nan')):.3f}")
    return t


def warn_single_class_splits(console: Console, metrics: dict) -> None:
    """A run whose student predicts one class only on a split (classification runs only)."""
    for split, r in metrics["student"].items():
        if r.get("single_class"):
            console.print(f"[yellow]warning:[/yellow] the student predicts one class only on {split} "
                          f"({max(r['predicted_rate'], key=r['predicted_rate'].get)}); "
                          "see docs/training.md, class weights")


def warn_single_class(console: Console, summary: dict) -> None:
    """A bench whose methods predicted a single class in some runs."""
    for method, row in summary.items():
        if row.get("single_class", {}).get("mean", 0):
            console.print(f"[yellow]warning:[/yellow] {method} predicted a single class in "
                          f"{row['single_class']['mean']:.0f} of its runs (see report.md)")
