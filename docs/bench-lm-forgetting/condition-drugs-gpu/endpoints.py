"""Mean ± std over seeds of each method's end point (α = 1), from the run folders' metrics.json:
python3 endpoints.py FOLDER [SEEDS]   (FOLDER: a forgetting bench's OUT/<task>, or this folder)."""
import json
import statistics as st
import sys
from pathlib import Path

folder, seeds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
cols = {"ID acc": ("student", "test", "accuracy"),
        "OOD acc": ("student", "ood_test", "accuracy"),
        "KL/token": ("forgetting", "general", "kl_per_token"),
        "NLL/token": ("forgetting", "general", "nll_per_token"),
        "format share": ("forgetting", "general", "format_share"),
        "transfer acc": ("forgetting", "transfer", "accuracy")}


def get(m: dict, path: tuple) -> float:
    for k in path:
        m = m[k]
    return m


print("| method | seeds | " + " | ".join(cols) + " |")
print("|---|---|" + "---|" * len(cols))
for method in ("teacher", "ft", "lora", "ours", "ours-general"):
    runs = [folder / "teacher"] if method == "teacher" else [folder / method / f"seed{s}" for s in range(seeds)]
    ms = [json.loads((r / "metrics.json").read_text()) for r in runs if (r / "metrics.json").exists()]
    cells = [[get(m, p) for m in ms] for p in cols.values()]
    fmt = [f"{st.mean(c):.3f}" + (f" ± {st.pstdev(c):.3f}" if len(c) > 1 else "") for c in cells]
    print(f"| {method} | {len(ms) if method != 'teacher' else '–'} | " + " | ".join(fmt) + " |")
