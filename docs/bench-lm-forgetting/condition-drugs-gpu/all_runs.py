"""Make results.json list every run and WiSE point committed in this folder (each one's metrics.json as its record,
its path as the bench wrote it); the other fields are kept. `robustkd report` then analyses them all: each comparison
over the seeds both sides have (seed 2 of lora, ours and ours-general has no WiSE points).
python3 all_runs.py [FOLDER]   (FOLDER: this one by default)"""
import json
import sys
from pathlib import Path

from robustkd.forgetting import order
from robustkd.forgetting_analysis import wise_name

here = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
results = json.loads((here / "results.json").read_text())
methods = list(results["methods"])
prefix = "runs/forget-cd/condition-drugs"


def record(method: str, seed: int, folder: Path) -> dict:
    return {"method": method, "seed": seed, "run": f"{prefix}/{folder.relative_to(here)}",
            "metrics": json.loads((folder / "metrics.json").read_text())}


runs = [record("teacher", 0, here / "teacher")]
for name in methods:
    for run in sorted(here.glob(f"{name}/seed*")):
        seed = int(run.name.removeprefix("seed"))
        runs.append(record(name, seed, run))
        runs += [record(wise_name(name, float(w.name.removeprefix("alpha-"))), seed, w)
                 for w in sorted(run.glob("wise/alpha-*"))]
results["runs"] = sorted(runs, key=lambda r: (order(r["method"], methods), r["seed"]))
results["seeds"] = len({r["seed"] for r in runs if r["method"] != "teacher"})
(here / "results.json").write_text(json.dumps(results, indent=1))
print(f"{len(runs)} runs, {results['seeds']} seeds")
