"""Variants of a training recipe on one cache, scored on validation data only (what defaults are chosen on).

    python benchmarks/ablate.py --cache <key|folder> --set ours [--seeds 0,1,2] [--epochs 2] [--out runs/ablate]

Each variant trains in its own process (`robustkd.runs`) and is scored on the validation split, clean and under
held-out perturbations (`validation_heldout`: transforms the training recipe never used); the choice is the
best mean of the two (`score`), averaged over the seeds when there are several. Test figures are hidden unless
`--show-test` (for the record, after choosing: they are never used to choose). Finished variants are not run
again (their folders under --out are reused), so a set can be extended and re-printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SETS: dict[str, dict[str, dict]] = {
    "lr": {  # the learning rates of the defaults, per adapter
        "ft lr 2e-5": {"method": "ft", "lr": 2e-5},
        "ft lr 5e-5": {"method": "ft", "lr": 5e-5},
        "ft lr 1e-4": {"method": "ft", "lr": 1e-4},
        "lora lr 5e-4": {"method": "ft", "adapter": "lora", "lr": 5e-4},
        "lora lr 1e-3": {"method": "ft", "adapter": "lora", "lr": 1e-3},
        "lora lr 2e-3": {"method": "ft", "adapter": "lora", "lr": 2e-3},
    },
    "ours": {  # the hybrid loss: term weights, distance, temperature, schedule, rows, layers
        "ours l2=1 l3=0.1": {"lambda_act": 0.1},
        "ours l3=0 (distill only)": {"lambda_act": 0.0},
        "ours l2=0 (act only)": {"lambda_distill": 0.0, "lambda_act": 0.1},
        "ours ldifs l3=1": {"act_distance": "ldifs", "lambda_act": 1.0},
        "ours ldifs l3=10": {"act_distance": "ldifs", "lambda_act": 10.0},
        "ours ldifs l3=10 l2=0.5": {"act_distance": "ldifs", "lambda_act": 10.0, "lambda_distill": 0.5},
        "ours tau=1 l2=1 ldifs l3=10": {"temperature": 1.0, "act_distance": "ldifs", "lambda_act": 10.0},
        "ours ldifs l3=10 linear decay": {"act_distance": "ldifs", "lambda_act": 10.0, "reg_schedule": "linear"},
        "ours ldifs l3=10 distill clean": {"act_distance": "ldifs", "lambda_act": 10.0, "distill_clean": True},
        "ours l2=1 l3=0.1 linear decay": {"lambda_act": 0.1, "reg_schedule": "linear"},
        "ours l3=0 linear decay": {"lambda_act": 0.0, "reg_schedule": "linear"},
        "ours l3=0 distill clean": {"lambda_act": 0.0, "distill_clean": True},
        "ours l3=0 tau=1": {"lambda_act": 0.0, "temperature": 1.0},
        "ours ldifs l3=1 layer 6": {"act_distance": "ldifs", "lambda_act": 1.0, "act_layers": [6]},
        "ours ldifs l3=1 layer 2": {"act_distance": "ldifs", "lambda_act": 1.0, "act_layers": [2]},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--set", choices=list(SETS), default="ours")
    ap.add_argument("--variants", help="comma-separated subset of the set's variant names")
    ap.add_argument("--seeds", "--seed", default="0", help="comma-separated seeds; the choice is on their mean")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-groups", type=int, default=None)
    ap.add_argument("--out", default="runs/ablate")
    ap.add_argument("--show-test", action="store_true", help="also print ID test accuracy and OOD macro-F1")
    args = ap.parse_args()

    from robustkd.shared.layout import default_root, resolve_location

    cache = resolve_location(args.cache, default_root())
    variants = SETS[args.set]
    if args.variants:
        variants = {k: variants[k] for k in args.variants.split(",")}
    test = f" {'(ID acc)':>9} {'(OOD F1)':>9}" if args.show_test else ""
    print(f"{'variant':34} {'val F1':>7} {'val held-out F1':>15} {'val bal acc':>11} {'score':>6}{test}")
    seeds = [int(x) for x in args.seeds.split(",")]
    scores: dict[str, list[float]] = {}
    for name, extra in variants.items():
        for seed in seeds:
            r = run_variant(args, cache, name, extra, seed)
            scores.setdefault(name, []).append((r["validation"]["macro_f1"] + r["validation_heldout"]["macro_f1"]) / 2)
            test = f" {r['test']['accuracy']:9.3f} {r['ood_test']['macro_f1']:9.3f}" if args.show_test else ""
            label = name + (f" seed {seed}" if len(seeds) > 1 else "")
            print(f"{label:34} {r['validation']['macro_f1']:7.3f} {r['validation_heldout']['macro_f1']:15.3f} "
                  f"{r['validation']['balanced_accuracy']:11.3f} {scores[name][-1]:6.3f}{test}", flush=True)
    if len(seeds) > 1:
        print(f"\nmean score over seeds {args.seeds} (± std):")
        for name, v in scores.items():
            print(f"{name:34} {np.mean(v):6.3f} ± {np.std(v):.3f}")
    print(f"best on validation: {max(scores, key=lambda k: np.mean(scores[k]))}")


def run_variant(args: argparse.Namespace, cache: str, name: str, extra: dict, seed: int) -> dict:
    """A variant's validation (and test) figures, trained and evaluated once; reused while its config holds."""
    from robustkd.runs import train_in_subprocess
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.evaluate import evaluate_split
    from robustkd.trainer.run import load_run

    folder = Path(args.out) / Path(cache).name[:12] / f"{args.set}-seed{seed}" / name.replace(" ", "_")
    cfg = TrainConfig(cache=cache, out=str(folder), seed=seed, epochs=args.epochs, train_groups=args.train_groups,
                      **{"method": "ours", **extra})
    done = folder / "ablate.json"
    if not done.exists() or json.loads(done.read_text())["config"] != json.loads(cfg.model_dump_json()):
        m = train_in_subprocess(cfg)
        run = load_run(cfg.out)
        val = evaluate_split(run.student, run.reader, "validation", run.pad_id)
        held = evaluate_split(run.student, run.reader, "validation_heldout", run.pad_id)
        done.write_text(json.dumps({"config": json.loads(cfg.model_dump_json()), "validation": val,
                                    "validation_heldout": held, "test": m["student"]["test"],
                                    "ood_test": m["student"]["ood_test"]}, indent=1))
    return json.loads(done.read_text())


if __name__ == "__main__":
    main()
