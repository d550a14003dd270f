"""`robustkd`: the one console script. Options of `precompute`, `train` and `bench` are generated from their
config models (`CacheRequest`, `TrainConfig`, `BenchConfig`); library errors become a message and exit code 2.

Importing this module imports no torch: `robustkd --help` answers at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robustkd.bench import BenchConfig
from robustkd.cli_common import console, fail, option, user_errors
from robustkd.cli_output import (
    metrics_table,
    plain_finetune_line,
    stdout,
    warn_single_class,
    warn_single_class_splits,
    wise_table,
)
from robustkd.cli_student import export, predict
from robustkd.options import command
from robustkd.shared.methods import METHODS
from robustkd.shared.schemas import CacheRequest
from robustkd.trainer.config import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Robust fine-tuning against a cached teacher.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check teacher caches.")
app.add_typer(cache_app, name="cache")


def settings():  # noqa: ANN201 - the service settings, read once per command
    from pydantic import ValidationError

    from robustkd.teacher_service.settings import Settings

    try:
        return Settings()
    except ValidationError as e:  # a ROBUSTKD_* variable that does not parse: name it
        first = e.errors()[0]
        fail(f"ROBUSTKD_{str(first['loc'][0]).upper()}: {first['msg']} (got {first.get('input')!r})")


# ---- the teacher --------------------------------------------------------------------------------
@app.command()
def serve(host: Annotated[str | None, typer.Option(help="Bind address (ROBUSTKD_HOST).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (ROBUSTKD_PORT).")] = None,
          insecure: Annotated[bool, typer.Option(help="Serve beyond loopback without ROBUSTKD_API_TOKEN.")] = False
          ) -> None:
    """Run the teacher service (FastAPI + uvicorn)."""
    from robustkd.teacher_service.serving import InsecureBind
    from robustkd.teacher_service.serving import serve as run_service

    try:
        run_service(settings(), host, port, insecure)
    except InsecureBind as e:
        fail(str(e))


@app.command()
@command(CacheRequest,
         option("server", str | None, None, "Service URL; default: compute in this process."),
         option("token", str | None, None, "Service API token (default: ROBUSTKD_API_TOKEN)."),
         option("key_file", str | None, None, "Also write the cache key to this file."),
         option("worker", int | None, None, "Static scale-out: this worker's index (it writes shards k with "
                "k % workers == worker); default: JOB_COMPLETION_INDEX (Kubernetes Indexed Job), else "
                "SLURM_ARRAY_TASK_ID (SLURM array), else 0."),
         option("workers", int | None, None, "Static scale-out: number of workers sharing the cache's shards "
                "(default: SLURM_ARRAY_TASK_COUNT in a SLURM array, else 1). With --engine ray: the shard tasks a Ray "
                "started here runs at once (default: one per CPU)."),
         option("engine", str | None, None, "local: precompute in this process; ray: a Ray task per shard "
                "(default: ROBUSTKD_ENGINE, else local)."),
         option("ray_address", str | None, None, "With --engine ray: the Ray cluster to join (default: "
                "ROBUSTKD_RAY_ADDRESS, else RAY_ADDRESS, else a Ray started in this process)."))
def precompute(req: CacheRequest, server: str | None, token: str | None, key_file: str | None, worker: int | None,
               workers: int | None, engine: str | None, ray_address: str | None) -> None:
    """Compute (or find) the teacher cache of a task; prints its key and location."""
    import os

    if key_file and not Path(key_file).expanduser().resolve().parent.is_dir():
        fail(f"--key-file: the folder of {key_file} does not exist")
    if server:
        key = _precompute_remote(req, server.rstrip("/"), token or os.environ.get("ROBUSTKD_API_TOKEN"))
        location = f"{server.rstrip('/')}/v1/caches/{key}"
    else:
        from robustkd.progress import Progress
        from robustkd.teacher_service.local import precompute_local, with_engine, worker_slot

        try:
            cfg = with_engine(settings(), engine, ray_address)
            if cfg.engine == "local":
                worker, workers = worker_slot(worker, workers, os.environ)
            with Progress(console, "precompute") as progress:
                res = precompute_local(req, cfg, progress=progress, worker=worker or 0, workers=workers)
        except (*user_errors(), ValueError) as e:
            fail(str(e))
        key, location = res.key, res.location
        for note in res.manifest.notes if res.manifest else []:
            console.print(f"note: {note}")
        if res.existed:
            console.print(f"cache {key[:12]} already complete")
        elif res.manifest is None:
            console.print(f"worker {worker}/{workers}: my shards are written; the last worker to finish writes "
                          "the manifest")
        else:
            m, t = res.manifest, res.manifest.timings
            mine = "" if m.rows_timed == m.n_rows else f"; this process computed {m.rows_timed} of them"
            console.print(f"wrote {m.n_rows} rows in {m.n_shards} shards{mine}, {t['total_s']:.1f}s "
                          f"({t['rows_per_s']:.1f} rows/s)")
    if key_file:
        Path(key_file).write_text(key + "\n")
    typer.echo(f"key: {key}\nlocation: {location}")


def _precompute_remote(req: CacheRequest, server: str, token: str | None) -> str:
    import httpx

    from robustkd.progress import Progress

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{server}/v1/caches", json=req.model_dump(mode="json"), headers=headers, timeout=120)
    except httpx.HTTPError as e:
        fail(f"--server: cannot reach {server} ({type(e).__name__})")
    if r.status_code >= 400:
        fail(f"server answered {r.status_code}: {r.json().get('detail', r.text)}")
    job = r.json()
    key = job["key"]
    if r.status_code == 200:
        console.print(f"cache {key[:12]} already complete")
        return key
    with Progress(console, "precompute") as progress:
        while job["state"] in ("queued", "running", "cancelling"):
            time.sleep(0.5)
            job = httpx.get(f"{server}/v1/jobs/{key}", timeout=30).json()
            p = job["progress"]
            progress(p["stage"], p["rows_done"], p["rows_total"])
    if job["state"] != "succeeded":
        fail(f"job {key[:12]} {job['state']}: {job.get('error')}")
    return key


@app.command()
def perturbations() -> None:
    """List the registered perturbation transforms."""
    from robustkd.teacher_service.perturb import describe

    t = Table("name", "family", "needs", "what it does")
    for info in describe():
        t.add_row(info.name, info.family, ",".join(info.needs) or "-", info.help)
    stdout().print(t)


@app.command()
def tasks() -> None:
    """List the built-in tasks and their splits."""
    from robustkd.teacher_service.builtin_tasks import list_tasks
    from robustkd.teacher_service.generative_tasks import GENERATIVE_TASKS
    from robustkd.teacher_service.taskdata import SPLITS

    t = Table("task", "domain", "ID (train/validation/test)", "OOD (ood_test)", "description")
    for info in [*list_tasks(), *GENERATIVE_TASKS.values()]:
        t.add_row(info.name, info.domain, info.id_desc, info.ood_desc, info.description)
    stdout().print(t)
    typer.echo(f"splits: {', '.join(SPLITS)} (ID rows split 70/15/15 by --split-seed; --limit caps each split); "
               "user files: robustkd precompute --task file --path F ...")


@cache_app.command("verify")
def cache_verify(cache: Annotated[str, typer.Argument(help="Key, folder or URL.")]) -> None:
    """Check every shard of a cache against its manifest checksums."""
    from robustkd.shared.layout import CacheError, default_root, resolve_location
    from robustkd.shared.reader import CacheReader

    try:
        r = CacheReader(resolve_location(cache, default_root()))
        for k in range(r.manifest.n_shards):
            r.read_shard(k)
        r.read_head()
    except CacheError as e:
        fail(str(e))
    typer.echo(f"ok: {r.manifest.n_shards} shards, {r.manifest.n_rows} rows verified ({r.key})")


@cache_app.command("show")
def cache_show(cache: Annotated[str, typer.Argument(help="Key, folder or URL.")]) -> None:
    """Print a cache's manifest summary."""
    from robustkd.shared.layout import CacheError, default_root, resolve_location
    from robustkd.shared.reader import CacheReader

    try:
        m = CacheReader(resolve_location(cache, default_root()), verify=False).manifest
    except CacheError as e:
        fail(str(e))
    typer.echo(json.dumps({"key": m.key, "task": m.spec.task.name, "model": m.spec.teacher.model,
                           "n_rows": m.n_rows, "n_shards": m.n_shards,
                           "splits": {k: v.model_dump() for k, v in m.splits.items()},
                           "arrays": {k: v.model_dump() for k, v in m.arrays.items()}, "timings": m.timings}, indent=1))


# ---- the trainer ---------------------------------------------------------------------------------
@app.command()
@command(TrainConfig)
def train(cfg: TrainConfig) -> None:
    """Fine-tune a student against a teacher cache, then evaluate it (metrics.json in --out)."""
    from robustkd.progress import Progress
    from robustkd.trainer.train import train_and_evaluate

    try:
        with Progress(console, f"train {cfg.label}", unit="steps") as progress:
            tr, summary, metrics = train_and_evaluate(cfg, lambda step, total, rec: progress("train", step, total))
    except user_errors() as e:
        fail(str(e))
    if tr.rank != 0:
        return
    console.print(f"trained {summary['steps']} steps in {summary['train_s']:.1f}s, "
                  f"peak RSS {summary['peak_rss_mb']:.0f} MB")
    if metrics:
        stdout().print(metrics_table(metrics))
        warn_single_class_splits(console, metrics)
        if line := plain_finetune_line(cfg.cache, metrics):
            console.print(line)


@app.command("eval")
def eval_(run: Annotated[str, typer.Argument(help="Run folder written by `robustkd train`.")],
          transfer: Annotated[str | None, typer.Option(
              help="Generative runs: zero-shot accuracy on this other generative cache's test rows (default: the "
                   "run's --transfer).")] = None) -> None:
    """Evaluate a run (ID and OOD accuracy, macro-F1, ...) and the un-tuned teacher; writes metrics.json. A generative
    run on a cache with unrelated prompts also gets its forgetting metrics (docs/forgetting.md)."""
    from robustkd.trainer.evaluate import write_metrics
    from robustkd.trainer.record import register
    from robustkd.trainer.run import load_run

    try:
        r = load_run(run)
        m = write_metrics(Path(run), r.student, r.reader, r.pad_id, transfer or r.config.transfer,
                          r.config.eval_rows)
    except user_errors() as e:
        fail(str(e))
    register(run)  # the registry's copy of the metrics follows metrics.json
    stdout().print(metrics_table(m))
    if line := plain_finetune_line(r.config.cache, m):
        console.print(line)


# ---- demo and benchmark --------------------------------------------------------------------------
def _cache_for(req: CacheRequest) -> tuple[str, str, float]:
    """(key, location, precompute seconds) of a request's cache, computed here if missing."""
    from robustkd.progress import Progress
    from robustkd.teacher_service.local import precompute_local

    try:
        with Progress(console, f"precompute {req.task}") as progress:
            res = precompute_local(req, settings(), progress=progress)
    except user_errors() as e:
        fail(str(e))
    for note in res.manifest.notes:
        console.print(f"note: {note}")
    return res.key, res.location, res.manifest.timings["total_s"]


@app.command()
def demo(folder: Annotated[str, typer.Option("--out", help="Folder for the runs and report.md.")] = "runs/demo",
         task: Annotated[str, typer.Option(help="Built-in task.")] = "sentiment-rt-drugs",
         train_groups: Annotated[int, typer.Option(help="Train examples per student.")] = 1000,
         limit: Annotated[int | None, typer.Option(help="Cap rows per split of the cache.")] = None,
         epochs: Annotated[int, typer.Option(help="Epochs per student.")] = 1) -> None:
    """Precompute the default cache, train ft, lora and ours, evaluate, print and save a comparison, and export the
    student best on validation."""
    from robustkd.demo import COLUMNS, best_on_validation, fmt, run_demo

    key, location, precompute_s = _cache_for(CacheRequest(task=task, limit=limit))
    rows = run_demo(location, key, precompute_s, Path(folder), train_groups=train_groups, epochs=epochs,
                    log=console.print)
    t = Table(*rows[0], title=f"robustkd demo: {task} (one seed)")
    for r in rows:
        t.add_row(*(fmt(v) for v in r.values()))
    stdout().print(t)
    for k, v in COLUMNS.items():
        typer.echo(f"  {k}: {v}")
    typer.echo(f"report: {Path(folder) / 'report.md'}  plot: {Path(folder) / 'id_vs_ood.png'}")
    typer.echo(f"dashboard: run `robustkd serve` here, then open {dashboard_url(f'/caches/{key}')} (the cache and "
               f"its students) and {dashboard_url('/benches')} (this report)")
    best, score = best_on_validation(Path(folder), [r["method"] for r in rows[1:]])
    typer.echo(f"best student on validation (mean of clean and held-out-perturbed macro-F1): {best} ({score:.3f})")
    export(str(Path(folder) / best), str(Path(folder) / "export"), force=True)  # prints the lines that load it


def dashboard_url(path: str) -> str:
    """Where `robustkd serve` with this environment's settings shows `path` of its dashboard."""
    s = settings()
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    return f"http://{f'[{host}]' if ':' in host else host}:{s.port}{path}"


@app.command()
@command(BenchConfig)
def bench(cfg: BenchConfig) -> None:
    """Run every method x seeds on a task (built-in or --task file --path F ...); write results.json, report.md and
    plots under OUT/<task>. Finished runs are reused, so a bench resumes and --methods adds rows. --suite forgetting:
    causal-LM students on a generative task, judged on what they keep of the teacher (docs/forgetting.md)."""
    from robustkd.bench import run_bench
    from robustkd.forgetting import run_forgetting
    from robustkd.shared.layout import default_root, resolve_location

    try:
        tasks_ = cfg.tasks()
    except ValueError as e:
        fail(str(e))
    for task in tasks_:
        if cfg.cache:
            caches = {"main": resolve_location(cfg.cache, default_root())}
            caches["unlabelled"] = caches["main"]
        else:
            caches = {"main": _cache_for(cfg.request(task))[1]}
            if cfg.suite == "forgetting" and (other := cfg.transfer_of(task)):
                caches["transfer"] = _cache_for(cfg.request(other))[1]
            if cfg.suite == "robustness" and any(METHODS[m].unlabelled_groups for m in cfg.methods or []):
                caches["unlabelled"] = caches["main"] if cfg.unlabelled_domains else \
                    _cache_for(cfg.request(task, unlabelled=True))[1]
        try:
            res = (run_forgetting if cfg.suite == "forgetting" else run_bench)(cfg, caches, console.print)
        except user_errors() as e:
            fail(str(e))
        folder = cfg.folder(res["task"])
        typer.echo((folder / "report.md").read_text())
        warn_single_class(console, {**res["summary"], **res.get("separate", {}).get("summary", {})})
        console.print(f"{res['task']}: {len(res['runs'])} runs in {res['bench_s']:.0f}s -> {folder}")


@app.command()
def report(folder: Annotated[str, typer.Argument(help="A bench's folder (OUT/<task>) holding results.json.")]) -> None:
    """Analyse a bench's recorded runs again and rewrite its results.json and report.md, training nothing (the
    runs' predictions and the cache must still be there)."""
    from robustkd.bench import reanalyse

    path = Path(folder)
    if not (path / "results.json").is_file():
        fail(f"{folder}: no results.json (a folder written by `robustkd bench`)")
    try:
        res = reanalyse(path)
    except (*user_errors(), FileNotFoundError) as e:
        fail(str(e))
    console.print(f"{res['task']}: {len(res['runs'])} runs analysed again -> {path / 'report.md'}")


@app.command()
def wise(run: Annotated[str, typer.Argument(help="Run folder written by `robustkd train`.")],
         alpha: Annotated[str, typer.Option(help="Interpolation weights in 0..1, comma-separated.")] = "0.25,0.5,0.75"
         ) -> None:
    """WiSE-FT of a run: θ_α = (1−α)·θ0 + α·θ for every weight (θ0: pre-trained backbone + the cache's head);
    evaluates each α into RUN/wise/alpha-<α>/metrics.json and prints ID and OOD figures."""
    from robustkd.trainer.wise import write_wise

    try:
        alphas = [float(a) for a in alpha.split(",") if a.strip()]
    except ValueError:
        fail(f"--alpha: {alpha!r} is not a comma-separated list of numbers")
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        fail(f"--alpha: each value must be in 0..1, got {alpha!r}")
    try:
        out = write_wise(run, alphas)
    except user_errors() as e:
        fail(str(e))
    stdout().print(wise_table(out))


app.command()(export)
app.command()(predict)


def main() -> None:
    app()
