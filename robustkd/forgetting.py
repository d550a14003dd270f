"""`robustkd bench --suite forgetting`: does plain fine-tuning of a causal LM on a narrow generative task make it
lose what its teacher did on unrelated prompts, and at matched task accuracy which method keeps most of it?

Every method trains on one cache (the task with the unrelated prompts, `--general-prompts`), on the same budget
and seeds, each in its own process: `ft` (every weight, cross-entropy on the responses), `lora`, `ours` (KD toward
the cached teacher on perturbed task prompts), `ours-general` (ours plus `--general-groups` (8) of the unrelated
prompts' distillation half per batch as distillation-only rows), and the WiSE-FT curve of each (α 0.25, 0.5, 0.75).
The `teacher` is the untouched model, evaluated as every student is (it is α = 0 of every curve). Each run is
evaluated on the task's splits, on the evaluation half of the unrelated prompts and, zero-shot, on the transfer
task's test rows (`--eval-rows` caps each). Runs and evaluations whose results exist for the same plan are reused,
so a bench resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from robustkd.bench import (
    FORGETTING_METHODS,
    BenchConfig,
    planned,
    record_bench,
    resolved,
    run_budget,
    run_or_reuse,
    wise_or_reuse,
)
from robustkd.shared.layout import GENERAL, CacheError


def teacher_or_reuse(location: str, transfer: str | None, eval_rows: int | None, out: Path,
                     log: Callable[[str], None]) -> dict:
    """The untouched model evaluated like a student (its metrics.json and predictions.npz in `out`)."""
    from robustkd.shared.reader import CacheReader
    from robustkd.trainer.evaluate import write_metrics
    from robustkd.trainer.lm_student import build_lm_student, lm_pad_id

    reader = CacheReader(location)
    plan = {"cache": reader.key, "transfer": resolved(transfer), "eval_rows": eval_rows}
    was = json.loads(planned(out).read_text()) if planned(out).exists() else None
    # the transfer cache's path compares resolved, as a run's plan does: a resumed bench may spell it otherwise
    if (out / "metrics.json").exists() and was and {**was, "transfer": resolved(was.get("transfer"))} == plan:
        log(f"{reader.manifest.spec.task.name}: teacher reused")
        return json.loads((out / "metrics.json").read_text())
    import torch

    student = build_lm_student(reader.manifest).to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    m = write_metrics(out, student, reader, lm_pad_id(reader.manifest), transfer, eval_rows)
    m["eval_s"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    planned(out).write_text(json.dumps(plan, indent=1))
    log(f"{reader.manifest.spec.task.name}: teacher evaluated in {m['eval_s']:.0f}s")
    return m


def check_cache(location: str) -> None:
    from robustkd.shared.reader import CacheReader

    m = CacheReader(location, verify=False).manifest
    if not m.spec.generative or GENERAL not in m.splits:
        raise CacheError(f"suite forgetting: cache {m.key[:12]} ({m.spec.task.name}) is not a generative cache with "
                         "the unrelated prompts; precompute a generative task with --general-prompts")


def run_forgetting(cfg: BenchConfig, caches: dict[str, str | None], log: Callable[[str], None]) -> dict:
    """Every method x seed on `caches["main"]` (zero-shot transfer on `caches["transfer"]`, if any); writes
    results.json, report.md and the plane into the bench's folder; returns the results."""
    import torch

    from robustkd.forgetting_analysis import ALPHAS, compare, wise_name
    from robustkd.forgetting_report import write_report
    from robustkd.shared.reader import CacheReader
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.record import register

    t0 = time.perf_counter()
    main, transfer = caches["main"], caches.get("transfer")
    check_cache(main)
    manifest = CacheReader(main, verify=False).manifest
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the evaluations run here: the teacher and the WiSE points
    task = manifest.spec.task.name
    out = cfg.folder(task)
    out.mkdir(parents=True, exist_ok=True)
    budget = {**run_budget(cfg), "max_steps": cfg.max_steps, "eval_rows": cfg.eval_rows}
    methods = cfg.methods or list(FORGETTING_METHODS)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    runs = {(r["method"], r["seed"]): r for r in previous.get("runs", [])}

    def record(name: str, seed: int, folder: Path, m: dict) -> None:
        runs[(name, seed)] = {"method": name, "seed": seed, "run": str(folder), "metrics": m}

    teacher = teacher_or_reuse(main, transfer, cfg.eval_rows, out / "teacher", log)
    record("teacher", 0, out / "teacher", teacher)
    for seed in cfg.seed_range():
        for name in methods:
            folder = out / name / f"seed{seed}"
            method = FORGETTING_METHODS[name]
            args = cfg.lr_of({**method.train_args(), **budget})
            if method.unlabelled_groups:
                args["unlabelled_groups"] = cfg.general_groups
            tc = TrainConfig(cache=main, out=str(folder), transfer=transfer, seed=seed, **args)
            m, fresh = run_or_reuse(tc, log)
            log(f"{task} seed {seed}: {name} {'trained' if fresh else 'reused'}")
            register(folder, name=name)  # as the report names it (a fresh run recorded itself by its config)
            record(name, seed, folder, m)
            for a, wm in wise_or_reuse(folder, fresh, name).items():
                record(wise_name(name, a), seed, folder / "wise" / f"alpha-{a:g}", wm)
    results = compare(sorted(runs.values(), key=lambda r: (order(r["method"], methods), r["seed"])),
                      len(manifest.label_names))
    n_seeds = len({r["seed"] for r in runs.values() if r["method"] != "teacher"})
    every = {**previous.get("methods", {}), **{k: FORGETTING_METHODS[k].train_args() for k in methods}}
    results.update({"suite": "forgetting", "task": task, "budget": cfg.budget, "seeds": n_seeds,
                    "cache_key": manifest.key, "cache_rows": manifest.n_rows,
                    "train_config": {**budget, **{k: v for k in ("lr", "lora_lr") if (v := getattr(cfg, k))}},
                    "methods": every, "alphas": list(ALPHAS), "label_names": manifest.label_names,
                    "transfer_task": teacher.get("forgetting", {}).get("transfer", {}).get("task"),
                    "general": {"n": teacher["forgetting"]["general"]["n"], "spec": manifest.spec.general.model_dump(),
                                "vocabulary": teacher["forgetting"]["general"]["vocabulary"]},
                    "teacher": {"model": Path(manifest.spec.teacher.model).name, "head": "model",
                                "family": "causal-lm", "eval_s": teacher.get("eval_s")},
                    "bench_s": round(time.perf_counter() - t0, 1)})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    record_bench("bench", main, manifest.key, out, task, runs.values(), n_seeds, list(every), cfg.budget)
    return results


def order(method: str, methods: list[str]) -> int:
    """teacher, then each method followed by its WiSE points."""
    from robustkd.forgetting_analysis import ALPHAS, wise_name

    names = ["teacher", *(x for m in methods for x in (m, *(wise_name(m, a) for a in ALPHAS)))]
    return names.index(method) if method in names else len(names)
