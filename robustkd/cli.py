"""`robustkd`: the one console script. Each command is a typed function; typer turns it into the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Robust fine-tuning against a cached teacher.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check teacher caches.")
app.add_typer(cache_app, name="cache")
console = Console(stderr=True)
out = Console()


def fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def cache_root() -> str:
    from shared.layout import default_root

    return default_root()


@app.command()
def serve(host: Annotated[str | None, typer.Option(help="Bind address (ROBUSTKD_HOST).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (ROBUSTKD_PORT).")] = None) -> None:
    """Run the teacher service (FastAPI + uvicorn)."""
    import uvicorn

    from teacher_service.app import create_app
    from teacher_service.settings import Settings

    settings = Settings()
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                log_level="info")


@app.command()
def precompute(
    task: Annotated[str, typer.Option(help="Built-in task id, or 'file' with --path.")] = "sentiment-rt-drugs",
    server: Annotated[str | None, typer.Option(help="Service URL; default: run in-process.")] = None,
    limit: Annotated[int | None, typer.Option(help="Cap rows per split.")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder or hub id.")] = None,
    path: Annotated[str | None, typer.Option(help="User file (CSV/Parquet/JSONL).")] = None,
    text_column: Annotated[str | None, typer.Option()] = None,
    feature_columns: Annotated[str | None, typer.Option(help="Comma-separated columns to serialise.")] = None,
    label_column: Annotated[str | None, typer.Option()] = None,
    domain_column: Annotated[str | None, typer.Option()] = None,
    id_domains: Annotated[str | None, typer.Option(help="Comma-separated ID domain values.")] = None,
    ood_domains: Annotated[str | None, typer.Option(help="Comma-separated OOD domain values.")] = None,
    head: Annotated[str, typer.Option(help="linear-probe | zero-shot | model")] = "linear-probe",
    layers: Annotated[str | None, typer.Option(help="Comma-separated hidden_states indices.")] = None,
    pooling: Annotated[str, typer.Option(help="mean | cls")] = "mean",
    max_length: Annotated[int, typer.Option()] = 128,
    transforms: Annotated[str | None, typer.Option(help="Comma-separated transform names.")] = None,
    severities: Annotated[str, typer.Option(help="Comma-separated severities 1..5.")] = "2,3,4",
    variants: Annotated[int, typer.Option(help="Perturbed variants per train/validation row.")] = 2,
    perturb_seed: Annotated[int, typer.Option()] = 0,
    split_seed: Annotated[int, typer.Option()] = 0,
    shard_rows: Annotated[int, typer.Option()] = 1024,
    token: Annotated[str | None, typer.Option(envvar="ROBUSTKD_API_TOKEN", help="Service API token.")] = None,
    key_file: Annotated[str | None, typer.Option(help="Also write the cache key to this file.")] = None,
    worker: Annotated[int, typer.Option(help="Scale-out: this worker's index (shards k with k % workers == i).")] = 0,
    workers: Annotated[int, typer.Option(help="Scale-out: number of workers sharing the cache's shards.")] = 1,
) -> None:
    """Compute (or find) the teacher cache of a task; prints its key and location."""
    from pydantic import ValidationError

    from shared.schemas import CacheRequest

    def csv(v: str | None, cast=str) -> list | None:  # noqa: ANN001
        return [cast(x.strip()) for x in v.split(",") if x.strip()] if v else None

    try:
        req = CacheRequest(model=model, task=task, limit=limit, split_seed=split_seed, path=path,
                           text_column=text_column, feature_columns=csv(feature_columns),
                           label_column=label_column, domain_column=domain_column, id_domains=csv(id_domains),
                           ood_domains=csv(ood_domains), head=head, layers=csv(layers, int), pooling=pooling,
                           max_length=max_length, transforms=csv(transforms), severities=csv(severities, int),
                           variants=variants, perturb_seed=perturb_seed, shard_rows=shard_rows)
    except (ValidationError, ValueError) as e:
        fail(_validation_message(e))
    if server:
        key = _precompute_remote(req, server.rstrip("/"), token)
        location = f"{server.rstrip('/')}/v1/caches/{key}"
    else:
        if not 0 <= worker < workers:
            fail(f"worker: must be in 0..{workers - 1}, got {worker}")
        key, location = precompute_local(req, worker=worker, workers=workers)
    if key_file:
        Path(key_file).write_text(key + "\n")
    out.print(f"key: {key}\nlocation: {location}")


def _validation_message(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'request'}: {err['msg']}" for err in e.errors())
    return str(e)


def precompute_local(req, root: str | None = None, worker: int = 0, workers: int = 1) -> tuple[str, str]:  # noqa: ANN001
    """Resolve and precompute in this process, with a progress bar; returns (key, location).

    With `workers` > 1 this process writes shards k with k % workers == worker; whichever worker finishes
    the set writes the manifest.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from teacher_service.model import Encoder, ModelError
    from teacher_service.precompute import RequestError, is_complete, precompute, resolve
    from teacher_service.settings import Settings

    settings = Settings()
    root = root or settings.cache_root
    try:
        spec, task = resolve(req, settings.model)
    except RequestError as e:
        fail(str(e))
    key = spec.cache_key()
    location = f"{root}/{key}"
    if is_complete(root, key):
        console.print(f"cache {key[:12]} already complete")
        return key, location
    try:
        enc = Encoder(spec.teacher.model, with_head=spec.teacher.head == "model", threads=settings.threads)
    except ModelError as e:
        fail(str(e))
    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rows"),
            TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), TimeRemainingColumn())
    t0 = time.perf_counter()
    with Progress(*cols, console=console, transient=False) as bar:
        tid = bar.add_task("precompute", total=None, rate="-")

        def progress(stage: str, done: int, total: int) -> None:
            el = time.perf_counter() - t0
            bar.update(tid, description=stage, completed=done, total=total,
                       rate=f"{done / el:.0f}" if el > 0 else "-")

        n_shards = None
        if workers > 1:
            from teacher_service.precompute import plan

            n_shards = -(-len(plan(spec, task)[0]) // spec.shard_rows)
        try:
            m = precompute(spec, task, enc, root, progress=progress,
                           shards=None if n_shards is None else list(range(worker, n_shards, workers)))
        except RequestError as e:
            fail(str(e))
    if m is None:
        console.print(f"worker {worker}/{workers}: my shards are written; other workers still own some, and the "
                      "last one to finish writes the manifest")
        return key, location
    console.print(f"wrote {m.n_rows} rows in {m.n_shards} shards, {m.timings['total_s']:.1f}s "
                  f"({m.timings['rows_per_s']:.0f} rows/s)")
    return key, location


def _precompute_remote(req, server: str, token: str | None) -> str:  # noqa: ANN001
    import httpx
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{server}/v1/caches", json=req.model_dump(mode="json"), headers=headers, timeout=120)
    except httpx.HTTPError as e:
        fail(f"server: cannot reach {server} ({type(e).__name__})")
    if r.status_code >= 400:
        fail(f"server answered {r.status_code}: {r.json().get('detail', r.text)}")
    job = r.json()
    key = job["key"]
    if r.status_code == 200:
        console.print(f"cache {key[:12]} already complete")
        return key
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        tid = bar.add_task("queued", total=None)
        while job["state"] in ("queued", "running"):
            time.sleep(0.5)
            job = httpx.get(f"{server}/v1/jobs/{key}", timeout=30).json()
            p = job["progress"]
            bar.update(tid, description=p["stage"], completed=p["rows_done"], total=p["rows_total"] or None)
    if job["state"] != "succeeded":
        fail(f"job {key[:12]} {job['state']}: {job.get('error')}")
    return key


@app.command()
def perturbations() -> None:
    """List the registered perturbation transforms."""
    from teacher_service.perturb import describe

    t = Table("name", "family", "needs", "what it does")
    for info in describe():
        t.add_row(info.name, info.family, ",".join(info.needs) or "-", info.help)
    out.print(t)


@app.command()
def tasks() -> None:
    """List the built-in tasks and their splits."""
    from teacher_service.tasks import SPLITS, list_tasks

    t = Table("task", "domain", "ID (train/validation/test)", "OOD (ood_test)", "description")
    for info in list_tasks():
        t.add_row(info.name, info.domain, info.id_desc, info.ood_desc, info.description)
    out.print(t)
    out.print(f"splits: {', '.join(SPLITS)}; user files: robustkd precompute --task file --path F ...")


@cache_app.command("verify")
def cache_verify(cache: Annotated[str, typer.Argument(help="Key, folder or URL.")]) -> None:
    """Check every shard of a cache against its manifest checksums."""
    from shared.layout import CacheError, CacheReader, resolve_location

    try:
        r = CacheReader(resolve_location(cache, cache_root()))
        for k in range(r.manifest.n_shards):
            r.read_shard(k)
        r.read_head()
    except CacheError as e:
        fail(str(e))
    out.print(f"ok: {r.manifest.n_shards} shards, {r.manifest.n_rows} rows verified ({r.key})")


@cache_app.command("show")
def cache_show(cache: Annotated[str, typer.Argument(help="Key, folder or URL.")]) -> None:
    """Print a cache's manifest summary."""
    from shared.layout import CacheError, CacheReader, resolve_location

    try:
        r = CacheReader(resolve_location(cache, cache_root()), verify=False)
    except CacheError as e:
        fail(str(e))
    m = r.manifest
    out.print(json.dumps({"key": m.key, "n_rows": m.n_rows, "n_shards": m.n_shards,
                          "splits": {k: v.model_dump() for k, v in m.splits.items()}, "arrays": m.arrays,
                          "timings": m.timings}, indent=1))


@app.command()
def demo(folder: Annotated[str, typer.Option("--out", help="Folder for the runs and report.md.")] = "runs/demo",
         task: Annotated[str, typer.Option(help="Built-in task.")] = "sentiment-rt-drugs",
         train_groups: Annotated[int, typer.Option(help="Train examples per student.")] = 1000,
         limit: Annotated[int | None, typer.Option(help="Cap rows per split of the cache.")] = None,
         epochs: Annotated[int, typer.Option()] = 1) -> None:
    """Precompute the default cache, train ft, ft+LoRA and ours, evaluate, print and save a comparison."""
    from trainer.demo import run_demo

    print(run_demo(Path(folder), task=task, train_groups=train_groups, limit=limit, epochs=epochs))


@app.command()
def bench(task: Annotated[str, typer.Option(help="Built-in task, or 'all' for the three built-ins.")] = "all",
          seeds: Annotated[int | None, typer.Option(help="Seeds (default: 3 small, 5 full).")] = None,
          budget: Annotated[str, typer.Option(help="small (2-core CPU, ~1 h for all) | full (GPU).")] = "small",
          sweep: Annotated[bool, typer.Option(help="Choose λ2, λ3 of ours on validation data first.")] = False,
          methods: Annotated[str | None, typer.Option(help="Comma-separated subset of the methods.")] = None,
          limit: Annotated[int | None, typer.Option(help="Rows per split of the cache (overrides budget).")] = None,
          train_groups: Annotated[int | None, typer.Option(help="Train examples per run.")] = None,
          model: Annotated[str | None, typer.Option(help="Model folder.")] = None,
          folder: Annotated[str, typer.Option("--out", help="Output root.")] = "runs/bench") -> None:
    """Run every method x seeds on a task; write results.json, report.md and plots under OUT/<task>."""
    from trainer.bench import BUDGETS, METHODS, run_bench

    if budget not in BUDGETS:
        fail(f"budget: {budget!r} is not one of {sorted(BUDGETS)}")
    chosen = methods.split(",") if methods else None
    unknown = [m for m in chosen or [] if m not in METHODS]
    if unknown:
        fail(f"methods: unknown {unknown} (known: {', '.join(METHODS)})")
    tasks_ = ["sentiment-rt-drugs", "arrests-year", "hsb82-sector"] if task == "all" else [task]
    for t in tasks_:
        res = run_bench(t, Path(folder) / t, budget=budget, seeds=seeds, methods=chosen, do_sweep=sweep,
                        limit=limit, model=model, train_groups=train_groups)
        print((Path(folder) / t / "report.md").read_text())
        console.print(f"{t}: {len(res['runs'])} runs in {res['bench_s']:.0f}s -> {Path(folder) / t}")


def main() -> None:
    app()


def _dataclass_command(cls: type, fn):  # noqa: ANN001, ANN202
    """Give `fn(**kwargs)` a signature built from a config dataclass, so typer makes one option per field."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                        default=typer.Option(default, help=f.metadata.get("help", ""))))
    fn.__signature__ = inspect.Signature(params)
    return fn


def _train(**kwargs) -> None:  # noqa: ANN003
    """Fine-tune a student against a teacher cache, then evaluate it (metrics.json in --out)."""
    from shared.layout import CacheError
    from trainer.evaluate import write_metrics
    from trainer.student import StudentError
    from trainer.train import TrainConfig, Trainer, TrainError

    cfg = TrainConfig(**kwargs)
    if not cfg.cache:
        fail("cache: pass --cache <key|folder|URL>")
    try:
        tr = Trainer(cfg)
        summary = tr.fit()
    except (TrainError, StudentError, CacheError) as e:
        fail(str(e))
    if tr.rank != 0:
        return
    console.print(f"trained {summary['steps']} steps in {summary['train_s']:.1f}s, "
                  f"peak RSS {summary['peak_rss_mb']:.0f} MB")
    if tr.cfg.evaluate:
        m = write_metrics(Path(cfg.out), tr.student, tr.reader, tr.pad_id, tr.tokenizer)
        out.print(metrics_table(m))


app.command("train")(_dataclass_command(__import__("trainer.train", fromlist=["TrainConfig"]).TrainConfig, _train))


def metrics_table(m: dict) -> Table:
    t = Table("model", "split", "acc", "macro-F1", "AUROC", "ECE", "predicted rate", "true rate")
    for who in ("teacher", "student"):
        for split, r in m[who].items():
            if "predicted_rate" not in r:
                continue
            rates = " ".join(f"{v:.2f}" for v in r["predicted_rate"].values())
            true = " ".join(f"{v:.2f}" for v in r["true_rate"].values())
            t.add_row(who, split, f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", f"{r.get('auroc', float('nan')):.3f}",
                      f"{r['ece']:.3f}", rates, true)
    return t


@app.command("eval")
def eval_(run: Annotated[str, typer.Argument(help="Run folder written by `robustkd train`.")]) -> None:
    """Evaluate a run (ID and OOD accuracy, macro-F1, ...) and the un-tuned teacher; writes metrics.json."""
    from shared.layout import CacheError
    from trainer.evaluate import evaluate_run
    from trainer.student import StudentError
    from trainer.train import TrainError

    try:
        m = evaluate_run(run)
    except (FileNotFoundError, TrainError, StudentError, CacheError) as e:
        fail(str(e))
    out.print(metrics_table(m))
