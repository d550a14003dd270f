"""Does a bfloat16 forward cost the SmolLM2 linear-probe teacher? Two caches of one request, one per compute dtype,
compared on the same clean test and OOD rows: each probe's figures, the bfloat16 − float32 difference with a paired
bootstrap 95% interval over rows, how often the two agree, and how far the features moved. Then each cache's probe
refitted at every C of the grid on its cached last-layer features (the probe's input), to show what the choice of C,
made on ID validation accuracy, does to OOD macro-F1.

    python3 compare.py FLOAT32_CACHE BFLOAT16_CACHE      # cache folders (robustkd precompute prints them)
"""

from __future__ import annotations

import sys

import numpy as np

from robustkd import stats
from robustkd.shared.reader import CacheReader
from robustkd.teacher_service.heads import PROBE_C_GRID, fit_linear_probe
from robustkd.trainer.metrics import classification_metrics


def clean(reader: CacheReader, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    s = reader.read_clean(split)
    return s.targets, np.array(s.rows.column("label").to_pylist())


def main(full: str, half: str) -> None:
    readers = CacheReader(full), CacheReader(half)
    for r in readers:
        m = r.manifest
        info = {k: v for k, v in m.head_info.items() if not k.endswith("_by_C")}
        print(f"cache {m.key[:12]}: {m.spec.teacher.device_type}/{m.spec.teacher.compute_dtype}, {m.n_rows} rows, "
              f"probe {info}")
    names = readers[0].manifest.label_names
    last = max(readers[0].manifest.spec.teacher.layers)
    for split in ("test", "ood_test"):
        (ta, y), (tb, yb) = (clean(r, split) for r in readers)
        if not np.array_equal(y, yb):
            sys.exit(f"{split}: the two caches hold different rows; they must come from one request")
        ma, mb = (classification_metrics(t["logits"], y, names) for t in (ta, tb))
        pa, pb = ta["logits"].argmax(1), tb["logits"].argmax(1)
        d = {name: stats.paired_bootstrap([pb], [pa], y, len(names), name) for name in ("accuracy", "macro_f1")}
        fa, fb = ta[f"layer_{last}"], tb[f"layer_{last}"]
        rel = np.linalg.norm(fb - fa, axis=1) / np.linalg.norm(fa, axis=1)
        print(f"{split} (n={len(y)}): float32 acc {ma['accuracy']:.3f} macro-F1 {ma['macro_f1']:.3f} "
              f"AUROC {ma.get('auroc', float('nan')):.3f} | bfloat16 acc {mb['accuracy']:.3f} macro-F1 "
              f"{mb['macro_f1']:.3f} AUROC {mb.get('auroc', float('nan')):.3f}")
        for name, v in d.items():
            print(f"  bfloat16 − float32 {name}: {v['diff']:+.3f} (95% CI {v['lo']:+.3f} to {v['hi']:+.3f})")
        print(f"  predictions agree on {np.mean(pa == pb):.3f} of rows; layer {last} features moved by "
              f"{np.median(rel):.4f} of their norm (median; max {rel.max():.4f})")
    print(f"the probe refitted at each C on the cached layer-{last} features (val: ID validation accuracy, the "
          "choice's criterion):")
    for r in readers:
        data = {split: clean(r, split) for split in ("train", "validation", "test", "ood_test")}
        x = {split: t[f"layer_{last}"].astype(np.float64) for split, (t, _) in data.items()}
        y = {split: labels for split, (_, labels) in data.items()}
        cells = []
        for c in PROBE_C_GRID:
            head = fit_linear_probe(x["train"], y["train"], x["validation"], y["validation"], len(names), grid=(c,))
            f1 = {split: classification_metrics(head.logits(x[split]), y[split], names)["macro_f1"]
                  for split in ("test", "ood_test")}
            cells.append(f"C={c:g}: val {head.info['val_accuracy']:.3f} ID F1 {f1['test']:.3f} OOD F1 "
                         f"{f1['ood_test']:.3f}")
        print(f"  {r.manifest.spec.teacher.compute_dtype}: " + "; ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
