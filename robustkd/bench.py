"""`robustkd bench`: every method on the same cache, data, budget and seeds; results.json, report.md, plots.

Methods train in their own processes (`robustkd.runs`); `teacher` (cached logits) and the WiSE points need no
training and are evaluated here. A run whose metrics exist with the same planned config is not run again, so
a bench can be resumed, and `--methods` adds rows to an existing report. Hyper-parameters are chosen on
validation data only (`--sweep`, `benchmarks/ablate.py`): never on `ood_test`.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from robustkd.analysis import ALPHAS, SEPARATE, compare, is_separate
from robustkd.shared.layout import CacheError
from robustkd.shared.methods import METHODS, TABLE, Method, wise_point
from robustkd.shared.schemas import CacheRequest
from robustkd.trainer.config import TrainConfig

BUDGETS = {
    # small: a quick look (400 rows per split); medium: the task's capped splits (2,000 train examples), for 2 CPU
    # cores (make bench); full: 3 epochs and 5 seeds, for a GPU
    "small": {"seeds": 3, "limit": 400, "epochs": 1, "batch_groups": 16},
    "medium": {"seeds": 3, "limit": None, "epochs": 1, "batch_groups": 16},
    "full": {"seeds": 5, "limit": None, "epochs": 3, "batch_groups": 16},
}
CORE = tuple(m.name for m in TABLE if m.core)
SWEEP = {"lambda_distill": (0.5, 1.0, 2.0, 4.0), "lambda_act": (0.0, 0.1, 0.5)}
BUILTIN_TASKS = ("sentiment-rt-drugs", "arrests-year", "hsb82-sector")
# suite forgetting (robustkd.forgetting): its tasks, each one's transfer task, its methods
FORGETTING_TASKS = ("sentiment-answer", "condition-drugs")
FORGETTING_TRANSFER = {"sentiment-answer": "condition-drugs", "condition-drugs": "sentiment-answer"}
FORGETTING_METHODS: dict[str, Method] = {
    **{n: METHODS[n] for n in ("ft", "lora", "ours")},  # ours: KD on perturbed task prompts
    "ours-general": METHODS["ours-unlabelled"].model_copy(update={  # and on the unrelated prompts' distillation half
        "name": "ours-general", "wise": "ours-general-wise", "separate": False,
        "summary": "ours plus the unrelated prompts' distillation half, KD only (a generative cache's unlabelled "
                   "rows)."}),
}
EVAL_SPLITS = ("test", "ood_test", "test_heldout", "validation", "validation_heldout")


class BenchConfig(CacheRequest):
    """A benchmark: the cache request (every `precompute` option: built-in task or user file) plus the budget,
    seeds and methods. It is the `robustkd bench` CLI."""

    suite: Literal["robustness", "forgetting"] = Field(
        "robustness", description="robustness: ID vs OOD of classification students; forgetting: what a causal-LM "
                                  "student fine-tuned on a generative task loses of its teacher on unrelated prompts "
                                  "(docs/forgetting.md).")
    task: str = Field("all", description="Built-in task, 'all' for the built-ins (of the suite), or 'file' with "
                                         "--path.")
    budget: Literal["small", "medium", "full"] = Field("medium", description="Rows, epochs and seeds (see README).")
    seeds: int | None = Field(None, ge=1, le=20, description="Seeds (default: the budget's).")
    first_seed: int = Field(0, ge=0, description="Run seeds FIRST_SEED .. FIRST_SEED+SEEDS-1: one bench's seeds split "
                                                 "over processes or machines sharing its OUT (a last invocation "
                                                 "over every seed reuses their runs and reports them all).")
    methods: list[str] | None = Field(None, description=f"Methods to run (default: {', '.join(CORE)}; the teacher "
                                                        "and the WiSE curves always come along).")
    cache: str | None = Field(None, description="Benchmark an existing cache (key, folder or URL) instead.")
    sweep: bool = Field(False, description="Choose λ2, λ3 of ours on validation data first (for "
                                           f"{', '.join(m.name for m in TABLE if m.swept)}).")
    train_groups: int | None = Field(None, ge=1, description="Train examples per run (default: all).")
    out: str = Field("runs/bench", description="Output root; each benchmark writes OUT/<task> (OUT/<task>-<head> "
                                               "with --head).")
    threads: int | None = Field(None, ge=1, description="torch threads per run.")
    adapter: Literal["full", "lora"] | None = Field(None, description="Train every method's student this way "
                                                    "(lora: e.g. for a causal LM on CPU); default: each method's.")
    epochs: int | None = Field(None, ge=1, description="Epochs per run (default: the budget's).")
    batch_groups: int | None = Field(None, ge=1, description="Examples per batch (default: the budget's).")
    max_steps: int | None = Field(None, ge=1, description="Stop each run after this many steps.")
    lr: float | None = Field(None, gt=0, description="Learning rate of full fine-tunes (default: train's).")
    eval_rows: int | None = Field(None, ge=1, description="Suite forgetting: evaluate each run on the first N rows "
                                                          "of each split (task, unrelated prompts, transfer; default: "
                                                          "all).")
    general_groups: int = Field(8, ge=1, description="Suite forgetting: unrelated prompts per batch of ours-general.")
    lora_lr: float | None = Field(None, gt=0, description="Learning rate of LoRA runs (default: train's).")
    transfer_task: str | None = Field(None, description="Suite forgetting: the built-in generative task whose test "
                                                        "rows measure zero-shot transfer (default: the other one; "
                                                        "'none': no transfer).")

    @model_validator(mode="after")
    def _known(self) -> BenchConfig:
        known = FORGETTING_METHODS if self.suite == "forgetting" else METHODS
        unknown = [m for m in self.methods or [] if m not in known]
        if unknown:
            raise ValueError(f"methods: unknown {unknown} for suite {self.suite} (known: {', '.join(known)})")
        return self

    def seed_range(self) -> range:
        """The seeds this invocation runs."""
        return range(self.first_seed, self.first_seed + (self.seeds or BUDGETS[self.budget]["seeds"]))

    def tasks(self) -> list[str]:
        if self.cache:  # one bench, of the task the cache names
            return [self.task]
        if self.task == "all" and self.path:
            raise ValueError("task: 'all' runs the built-in tasks; give --task file with --path, or a --cache")
        if self.task != "all":
            return [self.task]
        return list(FORGETTING_TASKS if self.suite == "forgetting" else BUILTIN_TASKS)

    def request(self, task: str, **extra: object) -> CacheRequest:
        """The cache request of one task of this benchmark (the forgetting suite's: with the unrelated prompts, and
        top-k targets unless another kind is asked for, so the KL to a student is computable)."""
        fields = {k: getattr(self, k) for k in CacheRequest.model_fields}
        if self.suite == "forgetting":
            fields.update(general_prompts=True, sparse=self.sparse or "top-k")
        return CacheRequest(**{**fields, "task": task, "limit": self.limit or BUDGETS[self.budget]["limit"], **extra})

    def transfer_of(self, task: str) -> str | None:
        """Suite forgetting: the task whose test rows measure zero-shot transfer after training on `task`."""
        if self.transfer_task == "none":
            return None
        return self.transfer_task or FORGETTING_TRANSFER.get(task)

    def lr_of(self, args: dict) -> dict:
        """A run's arguments with the bench's learning rate for its adapter, when one is given."""
        lr = self.lora_lr if args.get("adapter") == "lora" else self.lr
        return {**args, "lr": lr} if lr else args

    def folder(self, task_name: str) -> Path:
        suffix = "" if self.head == "auto" or self.suite == "forgetting" else f"-{self.head}"
        return Path(self.out) / f"{task_name}{suffix}"


# ---- evaluation without training ------------------------------------------------------------------
def _write(out: Path, metrics: dict, preds: dict[str, np.ndarray]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    np.savez(out / "predictions.npz", **preds)
    return metrics


def eval_teacher(cache: str, out: Path) -> dict:
    """The frozen model with its cached head: every split from the cached logits."""
    from robustkd.shared.reader import CacheReader
    from robustkd.trainer.evaluate import evaluate_teacher

    reader = CacheReader(cache)
    splits = [s for s in EVAL_SPLITS if s in reader.manifest.splits]
    m = evaluate_teacher(reader, splits)
    preds = {s: reader.read_clean(s).targets["logits"] for s in splits}
    return _write(out, {"student": m, "teacher": m, "cache_key": reader.key,
                        "label_names": reader.manifest.label_names, "train": {"train_s": 0.0}}, preds)


# ---- runs, reused when nothing changed ----------------------------------------------------------------
def planned(folder: Path) -> Path:
    return folder / "planned.json"


def run_args(method: Method, budget: dict, chosen: dict, seed: int) -> dict:
    """The TrainConfig fields of one bench run: the method's recipe, then the budget (a bench-wide --adapter
    overrides the LoRA rows' own), then the λs the sweep chose where the method takes them (`swept`: ours and its
    LoRA and unlabelled forms; variants with λs of their own keep theirs)."""
    return {**method.train_args(), **budget, "seed": seed, **(chosen if method.swept else {})}


def same_plan(folder: Path, cfg: TrainConfig) -> bool:
    """Whether the run in `folder` was planned as `cfg`: its planned.json read back through `TrainConfig`, so a field
    added since (at its default) leaves the plan the same. Local paths compare resolved and the thread count is left
    out: a bench resumed from elsewhere or on more cores trains the same runs."""
    from pydantic import ValidationError

    if not planned(folder).exists():
        return False
    try:
        was = TrainConfig.model_validate_json(planned(folder).read_text())
    except ValidationError:  # a field since removed or renamed
        return False
    return plan_identity(was) == plan_identity(cfg)


def plan_identity(cfg: TrainConfig) -> dict:
    """`cfg` without what does not change the trained run: the thread count, the spelling of the run's folder (the
    one being compared) and of local cache paths."""
    fields = cfg.model_dump(exclude={"threads", "out"})
    return {**fields, "cache": resolved(cfg.cache), "transfer": resolved(cfg.transfer)}


def resolved(location: str | None) -> str | None:
    """A local cache folder as its absolute path; a key, URL or missing path as it is."""
    if location is None or "://" in location or not Path(location).exists():
        return location
    return str(Path(location).resolve())


def run_or_reuse(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[dict, bool]:
    """(metrics, trained now): a run whose metrics exist for the same planned config is reused."""
    from robustkd.runs import train_in_subprocess

    folder = Path(cfg.out)
    plan = {**json.loads(cfg.model_dump_json()), **{k: resolved(getattr(cfg, k)) for k in ("cache", "transfer")}}
    if (folder / "metrics.json").exists() and same_plan(folder, cfg):
        return json.loads((folder / "metrics.json").read_text()), False
    if folder.exists():
        shutil.rmtree(folder)
    m = train_in_subprocess(cfg)
    planned(folder).write_text(json.dumps(plan, indent=1))
    return m, True


def wise_or_reuse(run: Path, fresh: bool, name: str) -> dict[float, dict]:
    """The WiSE-FT points of `run` (a reused run evaluates only those it lacks, as when a bench was stopped between
    two points), recorded under the bench's `name` of the run."""
    from robustkd.trainer.record import register
    from robustkd.trainer.wise import wise_folder, write_wise

    have = {a: wise_folder(run, a) / "metrics.json" for a in ALPHAS}
    missing = [a for a, p in have.items() if fresh or not p.exists()]
    if missing:
        write_wise(run, missing)
    for a, p in have.items():
        register(p.parent, name=name, alpha=a, of=run)
    return {a: json.loads(p.read_text()) for a, p in have.items()}


def sweep(location: str, budget: dict, out: Path, log: Callable[[str], None]) -> dict:
    """Choose λ2, λ3 for `ours` on the validation split, clean and under held-out perturbations (seed 0 only)."""
    results = []
    for ld in SWEEP["lambda_distill"]:
        for la in SWEEP["lambda_act"]:
            cfg = TrainConfig(cache=location, out=str(out / f"ld{ld}-la{la}"), **budget, method="ours",
                              lambda_distill=ld, lambda_act=la, seed=0)
            m, _ = run_or_reuse(cfg, log)
            clean, pert = m["student"]["validation"]["macro_f1"], m["student"]["validation_heldout"]["macro_f1"]
            results.append({"lambda_distill": ld, "lambda_act": la, "val_f1": clean, "val_perturbed_f1": pert,
                            "score": (clean + pert) / 2})
            log(f"  sweep λ2={ld} λ3={la}: val F1 {clean:.3f}, held-out-perturbed val F1 {pert:.3f}")
    best = max(results, key=lambda r: r["score"])
    return {"criterion": "mean of validation macro-F1 and held-out-perturbed validation macro-F1 (seed 0)",
            "grid": results, "chosen": {"lambda_distill": best["lambda_distill"], "lambda_act": best["lambda_act"]}}


def run_budget(cfg: BenchConfig) -> dict:
    """The training settings every run of the bench shares: the budget's, with the bench's overrides."""
    b = BUDGETS[cfg.budget]
    return {"epochs": cfg.epochs or b["epochs"], "batch_groups": cfg.batch_groups or b["batch_groups"],
            "train_groups": cfg.train_groups, "threads": cfg.threads,
            **({"max_steps": cfg.max_steps} if cfg.max_steps else {}),
            **({"adapter": cfg.adapter} if cfg.adapter else {})}


def run_bench(cfg: BenchConfig, caches: dict[str, str], log: Callable[[str], None]) -> dict:
    """Every method x seed on the task's cache (`caches["main"]`; `caches["unlabelled"]` for ours-unlabelled);
    writes results.json and report.md into the benchmark's folder; returns the results."""
    from robustkd.report import write_report
    from robustkd.shared.reader import CacheReader
    from robustkd.trainer.record import register

    t0 = time.perf_counter()
    manifest = CacheReader(caches["main"], verify=False).manifest
    # with one adapter for all, the LoRA rows of the core set would repeat ft and ours
    methods = cfg.methods or [m for m in CORE if not (cfg.adapter and METHODS[m].adapter != "full")]
    if needing := [m for m in methods if METHODS[m].unlabelled_groups]:  # checked before any run trains
        unlabelled = CacheReader(caches["unlabelled"], verify=False).manifest
        if "unlabelled" not in unlabelled.splits:
            raise CacheError(f"{', '.join(needing)}: cache {unlabelled.key[:12]} has no unlabelled rows (precompute "
                             "it with --unlabelled or --unlabelled-domains)")
    out = cfg.folder(manifest.spec.task.name)
    out.mkdir(parents=True, exist_ok=True)
    budget = run_budget(cfg)
    chosen, sweep_result = {}, None
    if cfg.sweep:
        log("sweep λ2 × λ3 for ours on validation data")
        sweep_result = sweep(caches["main"], budget, out / "sweep", log)
        chosen = sweep_result["chosen"]
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    runs = {(r["method"], r["seed"]): r for r in previous.get("runs", [])}

    def record(name: str, seed: int, folder: Path, m: dict) -> None:
        runs[(name, seed)] = {"method": name, "seed": seed, "run": str(folder), "metrics": m}

    teacher = eval_teacher(caches["main"], out / "teacher")
    for seed in cfg.seed_range():
        record("teacher", seed, out / "teacher", teacher)
    for seed in cfg.seed_range():
        for name in methods:
            method = METHODS[name]
            location = caches["unlabelled" if method.unlabelled_groups else "main"]
            folder = out / name / f"seed{seed}"
            m, fresh = run_or_reuse(TrainConfig(cache=location, out=str(folder),
                                                **cfg.lr_of(run_args(method, budget, chosen, seed))), log)
            log(f"{manifest.spec.task.name} seed {seed}: {name} {'trained' if fresh else 'reused'}")
            register(folder, name=name)  # as the report names it (a fresh run recorded itself by its config)
            record(name, seed, folder, m)
            if method.wise:
                for a, wm in wise_or_reuse(folder, fresh, name).items():
                    record(wise_point(name, a), seed, folder / "wise" / f"alpha-{a:g}", wm)
    results = analyse(list(runs.values()), caches["main"], manifest)
    n_seeds = len({r["seed"] for r in runs.values()})
    every = {**previous.get("methods", {}), **{k: METHODS[k].train_args() for k in methods}}  # --methods adds
    results.update({"task": manifest.spec.task.name, "budget": cfg.budget, "seeds": n_seeds, "cache_key": manifest.key,
                    "cache_rows": manifest.n_rows, "train_config": budget, "methods": every,
                    "sweep": sweep_result, "chosen": chosen, "bench_s": round(time.perf_counter() - t0, 1),
                    "teacher": {"model": Path(manifest.spec.teacher.model).name, "head": manifest.spec.teacher.head,
                                "family": getattr(manifest.spec.teacher, "family", "encoder")}})
    if any(is_separate(r["method"]) for r in runs.values()):
        results["unlabelled_note"] = unlabelled_note(caches["unlabelled"]) if SEPARATE in methods \
            else previous.get("unlabelled_note", "")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    record_bench("bench", caches["main"], manifest.key, out, results["task"], runs.values(), n_seeds, list(every),
                 cfg.budget)
    return results


def reanalyse(folder: Path) -> dict:
    """Analyse a bench folder's recorded runs again (their predictions, no training) and rewrite results.json and
    report.md: a report brought up to date with the analysis code. Run paths are as the bench recorded them."""
    from robustkd.report import write_report
    from robustkd.shared.layout import default_root, resolve_location
    from robustkd.shared.reader import CacheReader

    results = json.loads((folder / "results.json").read_text())
    if results.get("suite") == "forgetting":
        from robustkd.forgetting_analysis import compare as compare_forgetting
        from robustkd.forgetting_report import write_report as write_forgetting_report

        results.update(compare_forgetting(results["runs"], len(results.get("label_names", []))))
        (folder / "results.json").write_text(json.dumps(results, indent=1))
        write_forgetting_report(results, folder)
        return results
    location = resolve_location(results["cache_key"], default_root())
    manifest = CacheReader(location, verify=False).manifest
    results.update(analyse(results["runs"], location, manifest))
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, folder)
    return results


def record_bench(kind: Literal["bench", "demo"], location: str, key: str, folder: Path, task: str,
                 runs: Iterable[dict], seeds: int, methods: list[str], budget: str | None = None) -> None:
    """The registry record of a bench (or the demo) in `folder`, beside its cache, for the service's dashboard.
    `runs` are {"method", "seed", "run"} (the run folder). A cache on a service URL is left out: the report and
    plots stay on this machine, where that service cannot read them (its runs post their own records)."""
    from robustkd.shared import registry

    if registry.is_service(location):
        return
    members = [registry.BenchMember(name=r["method"], seed=r["seed"], run_id=registry.record_id(r["run"]))
               for r in runs if r["method"] != "teacher"]
    rec = registry.BenchRecord(id=registry.record_id(folder), kind=kind, cache_key=key, task=task,
                               folder=str(Path(folder).resolve()), host=socket.gethostname(),
                               created_at=datetime.now(UTC).isoformat(timespec="seconds"), budget=budget, seeds=seeds,
                               methods=methods, runs=members)
    try:
        registry.write_bench(registry.root_of(location), rec)
    except OSError as e:
        logging.getLogger("robustkd.registry").warning("bench %s not recorded: %s", folder, e)


def analyse(runs: list[dict], cache: str, manifest) -> dict:  # noqa: ANN001
    """Summary, diagnosis, curves, pairwise intervals and the proxy check of a bench's runs."""
    from robustkd.shared.reader import CacheReader

    reader = CacheReader(cache, verify=False)
    splits = [s for s in EVAL_SPLITS if s in manifest.splits]
    labels = {s: np.asarray(reader.read_clean(s).rows.column("label").to_pylist()) for s in splits}
    order = ["teacher", *(x for m in TABLE for x in (m.name, *(wise_point(m.name, a) for a in ALPHAS if m.wise)))]
    runs = sorted(runs, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["seed"]))
    return compare(runs, labels, manifest.num_labels)


def unlabelled_note(cache: str) -> str:
    from robustkd.shared.reader import CacheReader

    m = CacheReader(cache, verify=False).manifest
    r = m.splits["unlabelled"]
    return (f"`{SEPARATE}` adds {r.groups} unlabelled target-domain inputs (with their perturbed variants) to the "
            f"distillation and activation terms, {METHODS[SEPARATE].unlabelled_groups} per batch; their labels are "
            "never read and they are disjoint from `ood_test`. It uses information the other methods do not have, "
            "so it is reported beside the main comparison, not in it.")
