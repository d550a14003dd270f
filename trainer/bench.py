"""`robustkd bench`: every method on the same cache, data, budget and seeds; results.json, report.md, plots.

Methods train in their own processes (`trainer.runs`); `teacher` and `wise-ft` need no training and are
evaluated here. Hyper-parameters are chosen on validation data only (`--sweep`): never on `ood_test`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from trainer.runs import train_in_subprocess

BUDGETS = {
    # small: ~1 hour for 3 tasks x all methods x 3 seeds on 2 CPU cores; full: a GPU
    # few steps on small, so a larger learning rate; LoRA adapters take a 10x larger one than full weights
    "small": {"seeds": 3, "limit": 400, "epochs": 1, "batch_groups": 16, "lr": 1e-4, "lora_lr": 1e-3},
    "full": {"seeds": 5, "limit": None, "epochs": 3, "batch_groups": 16, "lr": 2e-5, "lora_lr": 5e-4},
}
LORA = {"adapter": "lora"}
METHODS: dict[str, dict] = {
    "ft": {"method": "ft"},
    "lp-ft": {"method": "lp-ft"},
    "lora": {"method": "ft", **LORA},
    "l2-sp": {"method": "l2-sp"},
    "online-kd": {"method": "online-kd"},
    "ours": {"method": "ours"},
    "ours-lora": {"method": "ours", **LORA},
    "ours-distill-only": {"method": "ours", "lambda_act": 0.0},
    "ours-act-only": {"method": "ours", "lambda_distill": 0.0},
    # a stronger pull towards the teacher: another point on ours' own ID/OOD trade-off curve
    "ours-strong": {"method": "ours", "lambda_distill": 4.0, "temperature": 1.0},
}
WISE_ALPHAS = (0.25, 0.5, 0.75)
WISE_BASE = "lp-ft"  # WiSE-FT interpolates an end-to-end fine-tune that started from the zero-shot/probe head
SWEEP = {"lambda_distill": (0.5, 1.0, 2.0, 4.0), "lambda_act": (0.0, 0.1, 0.5)}
HEADLINE = ("ood_test", "macro_f1")


# ---- evaluation of untrained / interpolated students --------------------------------------------
def _eval_student(student, reader, pad_id, tokenizer, out: Path, train: dict | None = None) -> dict:  # noqa: ANN001
    from trainer.evaluate import write_metrics

    out.mkdir(parents=True, exist_ok=True)
    m = write_metrics(out, student, reader, pad_id, tokenizer)
    if train:
        m["train"] = train
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    return m


def eval_teacher(cache: str, out: Path) -> dict:
    """The frozen model with its cached head, evaluated as an untrained student (held-out perturbations too)."""
    from trainer.train import TrainConfig, Trainer

    tr = Trainer(TrainConfig(cache=cache, out=str(out), method="lp-ft", evaluate=False))
    return _eval_student(tr.student, tr.reader, tr.pad_id, tr.tokenizer, out, {"train_s": 0.0})


def eval_wise_ft(cache: str, base_run: Path, alpha: float, out: Path) -> dict:
    """θ = (1−α)·θ_pretrained + α·θ_finetuned for the backbone; the fine-tuned head (Wortsman et al. 2022)."""
    from trainer.train import TrainConfig, Trainer, load_student

    cfg = json.loads((base_run / "config.json").read_text())
    cfg.pop("cache_key", None)
    cfg.pop("world_size", None)
    tr = Trainer(TrainConfig(**{**cfg, "cache": cache, "resume": False, "evaluate": False}))
    theta0 = {k: v.clone() for k, v in tr.student.backbone.state_dict().items()}
    load_student(tr.student, base_run / "checkpoint", tr.cfg.adapter)
    with torch.no_grad():
        mixed = {k: (1 - alpha) * theta0[k] + alpha * v if v.is_floating_point() else v
                 for k, v in tr.student.backbone.state_dict().items()}
        tr.student.backbone.load_state_dict(mixed)
    train = json.loads((base_run / "train_summary.json").read_text())
    return _eval_student(tr.student, tr.reader, tr.pad_id, tr.tokenizer, out, train)


# ---- statistics ------------------------------------------------------------------------------------
def macro_f1_weighted(pred: np.ndarray, labels: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 for each row of bootstrap weights w [B, N] (counts of each test row in each resample)."""
    f1s = []
    for c in range(k):
        tp = (w * ((pred == c) & (labels == c))).sum(1)
        fp = (w * ((pred == c) & (labels != c))).sum(1)
        fn = (w * ((pred != c) & (labels == c))).sum(1)
        f1s.append(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0))
    return np.mean(f1s, 0)


def paired_bootstrap(preds_a: list[np.ndarray], preds_b: list[np.ndarray], labels: np.ndarray, k: int,
                     metric: str, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """95% interval of mean_seeds[metric(a) − metric(b)], resampling test rows (same rows for both, per seed)."""
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=n_boot).astype(np.float64)
    diffs = np.zeros(n_boot)
    point = 0.0
    for pa, pb in zip(preds_a, preds_b, strict=True):
        if metric == "macro_f1":
            fa, fb = macro_f1_weighted(pa, labels, w, k), macro_f1_weighted(pb, labels, w, k)
            one = np.ones((1, len(labels)))
            point += float(macro_f1_weighted(pa, labels, one, k)[0] - macro_f1_weighted(pb, labels, one, k)[0])
        else:
            fa = (w * (pa == labels)).sum(1) / len(labels)
            fb = (w * (pb == labels)).sum(1) / len(labels)
            point += float((pa == labels).mean() - (pb == labels).mean())
        diffs += fa - fb
    diffs /= len(preds_a)
    return {"diff": point / len(preds_a), "lo": float(np.percentile(diffs, 2.5)),
            "hi": float(np.percentile(diffs, 97.5))}


def summarise(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over seeds of the headline metrics, per method."""
    keys = {"id_acc": ("test", "accuracy"), "id_f1": ("test", "macro_f1"), "ood_acc": ("ood_test", "accuracy"),
            "ood_f1": ("ood_test", "macro_f1"), "ood_auroc": ("ood_test", "auroc"), "ood_ece": ("ood_test", "ece"),
            "heldout_acc": ("test_heldout_perturbed", "accuracy")}
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        row = {}
        for name, (split, metric) in keys.items():
            vals = [r["metrics"]["student"][split].get(metric) for r in rs]
            vals = [v for v in vals if v is not None]
            if vals:
                row[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        pos = rs[0]["label_names"][-1]
        row["ood_pred_pos"] = {"mean": float(np.mean([r["metrics"]["student"]["ood_test"]["predicted_rate"][pos]
                                                      for r in rs])), "std": 0.0}
        row["ood_true_pos"] = {"mean": rs[0]["metrics"]["student"]["ood_test"]["true_rate"][pos], "std": 0.0}
        for name in ("train_s", "peak_rss_mb"):
            vals = [r["metrics"].get("train", {}).get(name) for r in rs]
            vals = [v for v in vals if v is not None]
            if vals:
                row[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        drift = [r["metrics"]["student"]["ood_test"].get("activation_drift") for r in rs]
        if drift[0]:
            row["drift"] = {layer: float(np.mean([d[layer] for d in drift])) for layer in drift[0]}
        row["n_seeds"] = len(rs)
        out[method] = row
    return out


# ---- the benchmark ---------------------------------------------------------------------------------
def sweep(cache: str, out: Path, base: dict, threads: int | None, log) -> dict:  # noqa: ANN001
    """Choose λ2, λ3 for `ours` on the validation split under held-out perturbations (seed 0 only)."""
    from trainer.evaluate import classification_metrics, heldout_transforms, perturbed_split, predict
    from trainer.train import TrainConfig, Trainer, load_student

    results = []
    for ld in SWEEP["lambda_distill"]:
        for la in SWEEP["lambda_act"]:
            run = out / f"ld{ld}-la{la}"
            train_in_subprocess(cache, run, {**base, "method": "ours", "lambda_distill": ld, "lambda_act": la,
                                             "seed": 0, "evaluate": False}, threads=threads)
            cfg = json.loads((run / "config.json").read_text())
            cfg.pop("cache_key", None)
            cfg.pop("world_size", None)
            tr = Trainer(TrainConfig(**{**cfg, "resume": False}))
            load_student(tr.student, run / "checkpoint", tr.cfg.adapter)
            seqs, labels, _ = perturbed_split(tr.reader, "validation", tr.tokenizer, heldout_transforms(tr.reader))
            names = tr.reader.manifest.label_names
            pert = classification_metrics(predict(tr.student, seqs, tr.pad_id)[0], labels, names)
            clean_seqs, clean_labels, _ = _clean_split(tr.reader, "validation")
            clean = classification_metrics(predict(tr.student, clean_seqs, tr.pad_id)[0], clean_labels,
                                           tr.reader.manifest.label_names)
            score = (clean["macro_f1"] + pert["macro_f1"]) / 2
            results.append({"lambda_distill": ld, "lambda_act": la, "val_f1": clean["macro_f1"],
                            "val_perturbed_f1": pert["macro_f1"], "score": score})
            log(f"  sweep λ2={ld} λ3={la}: val F1 {clean['macro_f1']:.3f}, held-out-perturbed val F1 "
                f"{pert['macro_f1']:.3f}")
    best = max(results, key=lambda r: r["score"])
    return {"criterion": "mean of validation macro-F1 and held-out-perturbed validation macro-F1 (seed 0)",
            "grid": results, "chosen": {"lambda_distill": best["lambda_distill"], "lambda_act": best["lambda_act"]}}


def _clean_split(reader, split: str):  # noqa: ANN001, ANN202
    shard = reader.read_split(split)
    r = reader.manifest.splits[split]
    keep = np.arange(0, r.stop - r.start, r.group_size)
    ids = shard.rows.column("input_ids").to_pylist()
    return [ids[i] for i in keep], np.asarray(shard.rows.column("label").to_numpy())[keep], None


def run_bench(task: str, out: Path, *, budget: str = "small", seeds: int | None = None,
              methods: list[str] | None = None, do_sweep: bool = False, limit: int | None = None,
              model: str | None = None, threads: int | None = None, train_groups: int | None = None) -> dict:
    from rich.console import Console

    from robustkd.cli import precompute_local
    from shared.schemas import CacheRequest

    console = Console(stderr=True)
    b = dict(BUDGETS[budget])
    n_seeds = seeds or b["seeds"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    key, location = precompute_local(CacheRequest(task=task, limit=limit or b["limit"], model=model))
    folder = Path(location)
    cache = str(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    base = {"epochs": b["epochs"], "batch_groups": b["batch_groups"], "train_groups": train_groups, "lr": b["lr"]}
    chosen = {}
    sweep_result = None
    if do_sweep:
        console.print("[bold]sweep[/bold] λ2 × λ3 for ours on validation data")
        sweep_result = sweep(cache, out / "sweep", base, threads, console.print)
        chosen = sweep_result["chosen"]
        console.print(f"chosen: {chosen}")
    methods = methods or list(METHODS)
    runs: list[dict] = []
    label_names = manifest["label_names"]

    def record(name: str, seed: int, folder_: Path, m: dict) -> None:
        runs.append({"method": name, "seed": seed, "run": str(folder_), "metrics": m, "label_names": label_names})

    m = eval_teacher(cache, out / "teacher")
    for seed in range(n_seeds):
        record("teacher", seed, out / "teacher", m)
    for seed in range(n_seeds):
        for name in methods:
            args = {**base, **METHODS[name], "seed": seed}
            if args.get("adapter") == "lora":
                args["lr"] = b["lora_lr"]
            if name in ("ours", "online-kd", "ours-lora"):
                args.update(chosen)
            console.print(f"[bold]{task}[/bold] seed {seed}: {name}")
            run = out / name / f"seed{seed}"
            record(name, seed, run, train_in_subprocess(cache, run, args, threads=threads))
            if name == WISE_BASE:
                for a in WISE_ALPHAS:
                    wrun = out / f"wise-ft-{a}" / f"seed{seed}"
                    record(f"wise-ft-{a}", seed, wrun, eval_wise_ft(cache, run, a, wrun))
    summary = summarise(runs)
    boot = bootstrap_all(runs, label_names)
    results = {"task": task, "budget": budget, "seeds": n_seeds, "cache_key": key,
               "cache_rows": manifest["n_rows"], "precompute_s": manifest["timings"]["total_s"],
               "train_config": base, "methods": {k: METHODS[k] for k in methods}, "sweep": sweep_result,
               "chosen": chosen, "summary": summary, "bootstrap": boot,
               "runs": [{k: v for k, v in r.items() if k != "label_names"} for r in runs],
               "bench_s": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from trainer.report import write_report

    write_report(results, out)
    return results


def bootstrap_all(runs: list[dict], label_names: list[str]) -> dict:
    """Paired bootstrap of ours − baseline on OOD macro-F1, ID accuracy and held-out-perturbed accuracy."""
    k = len(label_names)

    def preds(method: str, split: str) -> list[np.ndarray]:
        rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        return [np.load(Path(r["run"]) / "predictions.npz")[split].argmax(1) for r in rs]

    first = next(r for r in runs if r["method"] == "ours") if any(r["method"] == "ours" for r in runs) else None
    if first is None:
        return {}
    from shared.layout import CacheReader

    cfg = json.loads((Path(first["run"]) / "config.json").read_text())
    reader = CacheReader(cfg["cache"], verify=False)
    labels = {s: np.asarray(reader.read_split(s).rows.column("label").to_numpy()) for s in ("test", "ood_test")}
    r = reader.manifest.splits["test"]
    labels["test_heldout_perturbed"] = labels["test"][::r.group_size]
    out = {}
    for method in dict.fromkeys(x["method"] for x in runs):
        if method == "ours":
            continue
        out[method] = {f"{split}:{metric}": paired_bootstrap(preds("ours", split), preds(method, split),
                                                              labels[split], k, metric)
                       for split, metric in (("ood_test", "macro_f1"), ("test", "accuracy"),
                                             ("test_heldout_perturbed", "accuracy"))}
    return out
