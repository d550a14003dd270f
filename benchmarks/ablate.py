"""Try variants of `ours` on one cache and print validation figures (the data defaults are chosen on).

    python benchmarks/ablate.py --cache <key|folder> [--train-groups 400] [--seed 0]

Each variant trains in its own process; it is scored on the validation split, clean and under held-out
perturbations (transforms the training cache never used). OOD test figures are printed for the record
only: they are never used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

    from trainer.bench import _clean_split
    from trainer.evaluate import classification_metrics, heldout_transforms, perturbed_split, predict
    from trainer.runs import train_in_subprocess
    from trainer.train import TrainConfig, Trainer, load_student

    print(f"{'variant':28} {'val F1':>7} {'val pert F1':>11} {'(OOD F1)':>9} {'(ID acc)':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in VARIANTS.items():
            run = Path(tmp) / str(abs(hash(name)))
            m = train_in_subprocess(args.cache, run, {"method": "ours", "lr": args.lr, "seed": args.seed,
                                                      "train_groups": args.train_groups, **extra})
            cfg = json.loads((run / "config.json").read_text())
            cfg.pop("cache_key", None)
            cfg.pop("world_size", None)
            tr = Trainer(TrainConfig(**{**cfg, "resume": False}))
            load_student(tr.student, run / "checkpoint", tr.cfg.adapter)
            names = tr.reader.manifest.label_names
            seqs, labels, _ = _clean_split(tr.reader, "validation")
            val = classification_metrics(predict(tr.student, seqs, tr.pad_id)[0], labels, names)
            seqs, labels, _ = perturbed_split(tr.reader, "validation", tr.tokenizer, heldout_transforms(tr.reader))
            pert = classification_metrics(predict(tr.student, seqs, tr.pad_id)[0], labels, names)
            s = m["student"]
            print(f"{name:28} {val['macro_f1']:7.3f} {pert['macro_f1']:11.3f} {s['ood_test']['macro_f1']:9.3f} "
                  f"{s['test']['accuracy']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
