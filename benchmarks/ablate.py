"""Try variants of `ours` on one cache and print validation figures (the data defaults are chosen on).

    python benchmarks/ablate.py --cache <key|folder> [--train-groups 400] [--seed 0]

Each variant trains in its own process; it is scored on the validation split, clean and under held-out
perturbations (`validation_heldout`: transforms the training recipe never used). OOD test figures are
printed for the record only: they are never used to choose.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "ours (tau 2, l3 0.1)": {},
    "tau 1": {"temperature": 1.0},
    "tau 1, distill clean": {"temperature": 1.0, "distill_clean": True},
    "tau 1, l3 1 rel-norm": {"temperature": 1.0, "lambda_act": 1.0, "act_scale": "teacher-norm"},
    "tau 1, l2 4": {"temperature": 1.0, "lambda_distill": 4.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--train-groups", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from robustkd.runs import train_in_subprocess
    from robustkd.shared.layout import default_root, resolve_location
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.evaluate import evaluate_split
    from robustkd.trainer.run import load_run

    cache = resolve_location(args.cache, default_root())
    print(f"{'variant':28} {'val F1':>7} {'val pert F1':>11} {'(OOD F1)':>9} {'(ID acc)':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            cfg = TrainConfig(cache=cache, out=str(Path(tmp) / str(i)), method="ours", lr=args.lr, seed=args.seed,
                              train_groups=args.train_groups, **extra)
            m = train_in_subprocess(cfg)
            run = load_run(cfg.out)
            val = evaluate_split(run.student, run.reader, "validation", run.pad_id)
            pert = evaluate_split(run.student, run.reader, "validation_heldout", run.pad_id)
            s = m["student"]
            print(f"{name:28} {val['macro_f1']:7.3f} {pert['macro_f1']:11.3f} {s['ood_test']['macro_f1']:9.3f} "
                  f"{s['test']['accuracy']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
