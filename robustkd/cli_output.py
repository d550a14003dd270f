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
        t = Table("model", "split", "rows", "tokens", "nll/token", "perplexity", "accuracy", "exact match",
                  "macro-F1", "format share", "KL/token")
        forgetting = m.get("forgetting", {})
        rows = [*m["student"].items(), *((f"{k}: {r['task']}" if k == "transfer" else k, r)
                                         for k, r in forgetting.items())]
        for split, r in rows:
            t.add_row("student", split, str(r["n"]), str(r["tokens"]), f"{r['nll_per_token']:.3f}",
                      f"{r['perplexity']:.2f}", *(_num(r.get(k)) for k in ("accuracy", "exact_match", "macro_f1",
                                                                           "format_share", "kl_per_token")))
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


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def wise_table(out: dict) -> Table:
    """`robustkd wise`: ID and OOD figures per interpolation weight α."""
    t = Table("α", "ID acc", "ID macro-F1", "OOD acc", "OOD macro-F1", "OOD AUROC", "format share", "KL/token")
    for a, m in out.items():
        s, g = m["student"], m.get("forgetting", {}).get("general", {})
        t.add_row(f"{a:g}", *(_num(s[split].get(k)) for split, k in (("test", "accuracy"), ("test", "macro_f1"),
                                                                      ("ood_test", "accuracy"),
                                                                      ("ood_test", "macro_f1"), ("ood_test", "auroc"))),
                  _num(g.get("format_share")), _num(g.get("kl_per_token")))
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


def plain_finetune_line(cache: str, metrics: dict) -> str | None:
    """One line when the plain fine-tunes recorded on this run's cache do not lose OOD macro-F1 against its teacher
    (the report's "no robustness to preserve"), recommending the plain fine-tune; None otherwise or without any."""
    from robustkd.shared import registry
    from robustkd.shared.layout import default_root, resolve_location

    teacher = metrics.get("teacher", {}).get("ood_test")
    location = resolve_location(cache, default_root())
    if not teacher or registry.is_service(location):
        return None
    fts = [r.metrics["student"]["ood_test"]["macro_f1"] for r in registry.read_runs(registry.root_of(location),
                                                                                    metrics["cache_key"])
           if r.name == "ft" and r.alpha is None and "ood_test" in r.metrics.get("student", {})]
    if not fts or (gap := sum(fts) / len(fts) - teacher["macro_f1"]) < 0:
        return None
    return (f"no robustness to preserve on this cache: plain fine-tuning does not lose OOD macro-F1 against the "
            f"teacher ({gap:+.3f}, mean of {len(fts)} ft run{'s' * (len(fts) > 1)}); use the plain fine-tune "
            "(--method ft)")
