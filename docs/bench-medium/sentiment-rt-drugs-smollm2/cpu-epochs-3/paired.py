"""Paired bootstrap 95% intervals (1,000 resamples of the 889 OOD rows) between ft, lp-ft and the teacher, over the
seeds both runs have (seed k against seed k), from each run's predictions.npz and the cache's labels and teacher
logits.

    python3 paired.py RUN_FOLDER CACHE_FOLDER     # runs/bench-probe-cpu/sentiment-rt-drugs-linear-probe, cache/927a3...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from robustkd import stats
from robustkd.shared.reader import CacheReader


def main(bench: Path, cache: str) -> None:
    ood = CacheReader(cache).read_clean("ood_test")
    labels = np.array(ood.rows.column("label").to_pylist())
    teacher = ood.targets["logits"].argmax(1)
    done = {m: {int(d.name[4:]) for d in (bench / m).glob("seed*") if (d / "predictions.npz").is_file()}
            for m in ("ft", "lp-ft")}

    def pred(m: str, seeds: list[int]) -> list[np.ndarray]:
        if m == "teacher":  # one model under every seed
            return [teacher] * len(seeds)
        return [np.load(bench / m / f"seed{s}" / "predictions.npz")["ood_test"].argmax(1) for s in seeds]

    for a, b in (("ft", "teacher"), ("lp-ft", "teacher"), ("lp-ft", "ft")):
        seeds = sorted(done[a] & done.get(b, done[a]))
        print(f"{a} − {b}, seeds {seeds}")
        for name in ("macro_f1", "accuracy"):
            d = stats.paired_bootstrap(pred(a, seeds), pred(b, seeds), labels, 2, name)
            print(f"OOD {name} {a} − {b}: {d['diff']:+.3f} (95% CI {d['lo']:+.3f} to {d['hi']:+.3f})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
