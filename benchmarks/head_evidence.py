"""The default head's evidence, from validation data only: each method's validation score (mean of validation
macro-F1 and held-out-perturbed validation macro-F1) per seed, against the probe and against the zero-shot teacher.

    python benchmarks/head_evidence.py [--probe docs/bench-medium/sentiment-rt-drugs/results.json]
                                       [--zero-shot docs/bench-medium/sentiment-rt-drugs-zero-shot/results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def scores(results: Path) -> dict[str, dict[int, float]]:
    """method -> seed -> validation score (WiSE points and other separate rows left out)."""
    out: dict[str, dict[int, float]] = {}
    for run in json.loads(results.read_text())["runs"]:
        s = run["metrics"]["student"]
        if "validation_heldout" in s and "wise" not in run["method"]:
            out.setdefault(run["method"], {})[run["seed"]] = (s["validation"]["macro_f1"]
                                                              + s["validation_heldout"]["macro_f1"]) / 2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="docs/bench-medium/sentiment-rt-drugs/results.json")
    ap.add_argument("--zero-shot", default="docs/bench-medium/sentiment-rt-drugs-zero-shot/results.json")
    args = ap.parse_args()
    probe, zero = scores(Path(args.probe)), scores(Path(args.zero_shot))
    for method in [m for m in zero if m in probe]:
        seeds = sorted(set(probe[method]) & set(zero[method]))
        mp, mz = (sum(d[s] for s in seeds) / len(seeds) for d in (probe[method], zero[method]))
        per_seed = " ".join(f"{zero[method][s] - probe[method][s]:+.3f}" for s in seeds)
        print(f"{method}: zero-shot {mz:.3f} vs probe {mp:.3f} (per seed, zero-shot − probe: {per_seed})")


if __name__ == "__main__":
    main()
