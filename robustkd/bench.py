"""`robustkd bench`: every method on the same cache, data, budget and seeds; results.json, report.md, plots.

Methods train in their own processes (`robustkd.runs`); `teacher` and `wise-ft` need no training and are
evaluated here. Hyper-parameters are chosen on validation data only (`--sweep`): never on `ood_test`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from robustkd.trainer.config import TrainConfig

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
BUILTIN_TASKS = ("sentiment-rt-drugs", "arrests-year", "hsb82-sector")


class BenchConfig(BaseModel):
    """One benchmark: tasks x methods x seeds on one budget. It is the `robustkd bench` CLI."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("all", description="Built-in task, or 'all' for the three built-ins.")
    budget: Literal["small", "full"] = Field("small", description="small (2-core CPU, ~1 h for all) | full (GPU).")
    seeds: int | None = Field(None, ge=1, description="Seeds (default: the budget's).")
    sweep: bool = Field(False, description="Choose λ2, λ3 of ours on validation data first.")
    methods: list[str] | None = Field(None, description="A subset of the methods (default: all).")
    limit: int | None = Field(None, ge=1, description="Rows per split of the cache (overrides the budget).")
    train_groups: int | None = Field(None, ge=1, description="Train examples per run.")
    model: str | None = Field(None, description="Model folder (default: the service's model).")
    out: str = Field("runs/bench", description="Output root; each task writes OUT/<task>.")
    threads: int | None = Field(None, ge=1, description="torch threads per run.")

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = [m for m in v or [] if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown {unknown} (known: {', '.join(METHODS)})")
        return v

    def tasks(self) -> list[str]:
        return list(BUILTIN_TASKS) if self.task == "all" else [self.task]


# ---- evaluation of untrained / interpolated students --------------------------------------------
def _write(out: Path, metrics: dict, preds: dict[str, np.ndarray]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    np.savez(out / "predictions.npz", **preds)
    return metrics


def eval_teacher(cache: str, out: Path) -> dict:
    """The frozen model with its cached head: every split from the cached logits."""
    from robustkd.shared.reader import CacheReader
    from robustkd.trainer.evaluate import eval_splits, evaluate_teacher

    reader = CacheReader(cache)
    m = evaluate_teacher(reader)
    preds = {s: reader.read_clean(s).targets["logits"] for s in eval_splits(reader)}
    return _write(out, {"student": m, "teacher": m, "cache_key": reader.key,
                        "label_names": reader.manifest.label_names, "train": {"train_s": 0.0}}, preds)


def eval_wise_ft(base_run: Path, alpha: float, out: Path) -> dict:
    """θ = (1−α)·θ_pretrained + α·θ_finetuned for the backbone; the fine-tuned head (Wortsman et al. 2022)."""
    from robustkd.trainer.evaluate import write_metrics
    from robustkd.trainer.run import load_run
    from robustkd.trainer.wise import backbone_only_interpolation

    run = load_run(base_run)
    theta0 = load_run(base_run, weights=False).student.backbone.state_dict()
    backbone_only_interpolation(run.student, theta0, alpha)
    m = write_metrics(out, run.student, run.reader, run.pad_id)
    m["train"] = json.loads((base_run / "train_summary.json").read_text())
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    return m


def summarise(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over seeds of the headline metrics, per method."""
    keys = {"id_acc": ("test", "accuracy"), "id_f1": ("test", "macro_f1"), "ood_acc": ("ood_test", "accuracy"),
            "ood_f1": ("ood_test", "macro_f1"), "ood_auroc": ("ood_test", "auroc"), "ood_ece": ("ood_test", "ece"),
            "heldout_acc": ("test_heldout", "accuracy")}
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        row = {}
        for name, (split, metric) in keys.items():
            vals = [v for r in rs if (v := r["metrics"]["student"].get(split, {}).get(metric)) is not None]
            if vals:
                row[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        pos = rs[0]["label_names"][-1]
        row["ood_pred_pos"] = {"mean": float(np.mean([r["metrics"]["student"]["ood_test"]["predicted_rate"][pos]
                                                      for r in rs])), "std": 0.0}
        row["ood_true_pos"] = {"mean": rs[0]["metrics"]["student"]["ood_test"]["true_rate"][pos], "std": 0.0}
        for name in ("train_s", "peak_rss_mb"):
            vals = [v for r in rs if (v := r["metrics"].get("train", {}).get(name)) is not None]
            if vals:
                row[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        drift = [r["metrics"]["student"]["ood_test"].get("activation_drift") for r in rs]
        if drift[0]:
            row["drift"] = {layer: float(np.mean([d[layer] for d in drift])) for layer in drift[0]}
        row["n_seeds"] = len(rs)
        out[method] = row
    return out


def bootstrap_all(runs: list[dict], cache: str) -> dict:
    """Paired bootstrap of ours − each baseline: OOD macro-F1, ID accuracy, held-out-perturbed accuracy."""
    from robustkd.shared.reader import CacheReader
    from robustkd.stats import paired_bootstrap

    if not any(r["method"] == "ours" for r in runs):
        return {}
    reader = CacheReader(cache, verify=False)
    k = reader.manifest.num_labels
    labels = {s: np.asarray(reader.read_clean(s).rows.column("label").to_pylist())
              for s in ("test", "ood_test", "test_heldout")}

    def preds(method: str, split: str) -> list[np.ndarray]:
        rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        return [np.load(Path(r["run"]) / "predictions.npz")[split].argmax(1) for r in rs]

    pairs = (("ood_test", "macro_f1"), ("test", "accuracy"), ("test_heldout", "accuracy"))
    return {method: {f"{split}:{metric}": paired_bootstrap(preds("ours", split), preds(method, split), labels[split],
                                                           k, metric) for split, metric in pairs}
            for method in dict.fromkeys(x["method"] for x in runs) if method != "ours"}


# ---- the benchmark ---------------------------------------------------------------------------------
def sweep(location: str, budget: dict, out: Path, log: Callable[[str], None]) -> dict:
    """Choose λ2, λ3 for `ours` on the validation split, clean and under held-out perturbations (seed 0 only)."""
    from robustkd.runs import train_in_subprocess
    from robustkd.trainer.evaluate import evaluate_split
    from robustkd.trainer.run import load_run

    results = []
    for ld in SWEEP["lambda_distill"]:
        for la in SWEEP["lambda_act"]:
            folder = out / f"ld{ld}-la{la}"
            train_in_subprocess(TrainConfig(cache=location, out=str(folder), **budget, method="ours",
                                            lambda_distill=ld, lambda_act=la, seed=0, evaluate=False))
            run = load_run(folder)
            clean = evaluate_split(run.student, run.reader, "validation", run.pad_id)
            pert = evaluate_split(run.student, run.reader, "validation_heldout", run.pad_id)
            score = (clean["macro_f1"] + pert["macro_f1"]) / 2
            results.append({"lambda_distill": ld, "lambda_act": la, "val_f1": clean["macro_f1"],
                            "val_perturbed_f1": pert["macro_f1"], "score": score})
            log(f"  sweep λ2={ld} λ3={la}: val F1 {clean['macro_f1']:.3f}, held-out-perturbed val F1 "
                f"{pert['macro_f1']:.3f}")
    best = max(results, key=lambda r: r["score"])
    return {"criterion": "mean of validation macro-F1 and held-out-perturbed validation macro-F1 (seed 0)",
            "grid": results, "chosen": {"lambda_distill": best["lambda_distill"], "lambda_act": best["lambda_act"]}}


def run_bench(task: str, cfg: BenchConfig, location: str, precompute_s: float, log: Callable[[str], None]) -> dict:
    """Every method x seed on the cache at `location`; writes OUT/<task>/results.json and report.md."""
    from robustkd.report import write_report
    from robustkd.runs import train_in_subprocess
    from robustkd.shared.reader import CacheReader

    out = Path(cfg.out) / task
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    b = BUDGETS[cfg.budget]
    n_seeds = cfg.seeds or b["seeds"]
    manifest = CacheReader(location, verify=False).manifest
    budget = {"epochs": b["epochs"], "batch_groups": b["batch_groups"], "train_groups": cfg.train_groups,
              "lr": b["lr"], "threads": cfg.threads}
    chosen, sweep_result = {}, None
    if cfg.sweep:
        log("sweep λ2 × λ3 for ours on validation data")
        sweep_result = sweep(location, budget, out / "sweep", log)
        chosen = sweep_result["chosen"]
        log(f"chosen: {chosen}")
    methods = cfg.methods or list(METHODS)
    runs: list[dict] = []

    def record(name: str, seed: int, folder: Path, m: dict) -> None:
        runs.append({"method": name, "seed": seed, "run": str(folder), "metrics": m,
                     "label_names": manifest.label_names})

    m = eval_teacher(location, out / "teacher")
    for seed in range(n_seeds):
        record("teacher", seed, out / "teacher", m)
    for seed in range(n_seeds):
        for name in methods:
            args = {**budget, **METHODS[name], "seed": seed}
            if args.get("adapter") == "lora":
                args["lr"] = b["lora_lr"]
            if name in ("ours", "online-kd", "ours-lora"):
                args.update(chosen)
            log(f"{task} seed {seed}: {name}")
            run = out / name / f"seed{seed}"
            record(name, seed, run, train_in_subprocess(TrainConfig(cache=location, out=str(run), **args)))
            if name == WISE_BASE:
                for a in WISE_ALPHAS:
                    wrun = out / f"wise-ft-{a}" / f"seed{seed}"
                    record(f"wise-ft-{a}", seed, wrun, eval_wise_ft(run, a, wrun))
    results = {"task": task, "budget": cfg.budget, "seeds": n_seeds, "cache_key": manifest.key,
               "cache_rows": manifest.n_rows, "precompute_s": precompute_s, "train_config": budget,
               "methods": {k: METHODS[k] for k in methods}, "sweep": sweep_result, "chosen": chosen,
               "summary": summarise(runs), "bootstrap": bootstrap_all(runs, location),
               "runs": [{k: v for k, v in r.items() if k != "label_names"} for r in runs],
               "bench_s": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    return results
