"""Run several training configurations against one cache, each in its own process, and tabulate them.

A process per run keeps peak-memory figures honest (nothing left over from the previous run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def train_in_subprocess(cache: str, out: Path, args: dict, *, log: Path | None = None, threads: int | None = None,
                        progress: bool = False) -> dict:
    """`robustkd train --cache C --out OUT --k v ...` in a child process; returns its metrics.json ({} if none)."""
    cmd = [sys.executable, "-m", "robustkd", "train", "--cache", cache, "--out", str(out)]
    for k, v in args.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            cmd.append(flag if v else flag.replace("--", "--no-", 1))
        elif v is not None:
            cmd += [flag, str(v)]
    if threads:
        cmd += ["--threads", str(threads)]
    out.mkdir(parents=True, exist_ok=True)
    with open(log or out / "stdout.log", "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=None if progress else subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (log or out / "stdout.log").read_text()[-2000:]
        raise RuntimeError(f"training {out.name} failed (exit {proc.returncode}):\n{tail}")
    metrics = out / "metrics.json"
    return json.loads(metrics.read_text()) if args.get("evaluate", True) else {}


def row(name: str, m: dict, who: str = "student") -> dict:
    """One table row: ID and OOD figures, time and memory."""
    test, ood = m[who]["test"], m[who]["ood_test"]
    pos = m["label_names"][-1]
    train = m.get("train", {}) if who == "student" else {}
    return {"method": name, "id_acc": test["accuracy"], "id_f1": test["macro_f1"], "ood_acc": ood["accuracy"],
            "ood_f1": ood["macro_f1"], "ood_auroc": ood.get("auroc"), f"ood_pred_{pos}": ood["predicted_rate"][pos],
            f"ood_true_{pos}": ood["true_rate"][pos], "train_s": train.get("train_s"),
            "peak_rss_mb": train.get("peak_rss_mb")}


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])

    def fmt(v: object) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
