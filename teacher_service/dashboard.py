"""The web dashboard: server-rendered HTML (Jinja2, autoescaped) over the caches, the jobs and the run registry.

Pages work without JavaScript; the vendored `static/dashboard.js` only refreshes the job table, cancels jobs
(through `DELETE /v1/jobs/{key}`, with the token the user types) and shows the plot's hover boxes. Nothing is
fetched from elsewhere: the Content-Security-Policy allows this origin only. Reading needs no token; the one
action here that writes, `POST /v1/runs` (a remote trainer's record), takes the API's own auth dependency.

    /                   caches                  /runs              students (sortable, filterable; plot per cache)
    /caches/{key}       one cache and its runs  /runs/{id}         one run: config and metrics
    /jobs               live jobs, cancel       /benches[/{id}]    benchmark reports with their plots
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from robustkd.shared import files, layout, registry
from robustkd.teacher_service import markdown_html, pages, svgplot
from robustkd.teacher_service.jobs import ACTIVE, JobManager
from robustkd.teacher_service.settings import Settings
from robustkd.teacher_service.store import Store

HERE = Path(__file__).parent
GENERATIVE_METRICS = ("n", "tokens", "nll_per_token", "perplexity", "exact_match")  # trainer.evaluate, generative
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
ID_RE = re.compile(registry.ID_PATTERN)
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "base-uri 'none'; form-action 'self'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
# bench files (an SVG may hold a script) open as documents of no origin that run nothing
FILE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; sandbox",
                "X-Content-Type-Options": "nosniff"}
MAX_RESULTS_BYTES = 64 << 20  # a larger results.json gets no plot
log = logging.getLogger("robustkd.dashboard")

env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _fmt(v: object, spec: str | None = ".3f") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec and isinstance(v, int | float) else str(v)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}h {s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _when(iso: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM` (UTC, as recorded); anything else as it is."""
    if not iso:
        return "–"
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d).*", iso)
    return f"{m[1]} {m[2]}" if m else iso


env.filters.update(fmt=_fmt, bytes=_bytes, duration=_duration, short=pages.short, when=_when)


def page(template: str, status: int = 200, **ctx: object) -> HTMLResponse:
    return HTMLResponse(env.get_template(template).render(**ctx), status, headers=HEADERS)


def error(status: int, message: str) -> HTMLResponse:
    titles = {400: "Bad request", 404: "Not found", 500: "Server error"}
    return page("error.html", status, title=titles.get(status, "Error"), message=message, nav=None)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def jobs_of(request: Request) -> JobManager:
    return request.app.state.jobs


Conf = Annotated[Settings, Depends(settings_of)]
Jobs = Annotated[JobManager, Depends(jobs_of)]


def dashboard_router(authorised: Callable[..., None]) -> APIRouter:
    """The dashboard's routes; `authorised` is the API's token dependency, for the one route that writes."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def caches(settings: Conf, jobs: Jobs) -> HTMLResponse:
        root = settings.cache_root
        rows = pages.cache_rows(jobs, Store(root), registry.read_runs(root))
        active = [j for j in pages.job_rows(jobs, Store(root)) if j.state in ACTIVE]
        return page("caches.html", nav="caches", title="Caches", caches=rows, active=active,
                    splits=[s for s in layout.SPLITS if any(s in r["splits"] for r in rows)])

    @router.get("/caches/{key}", response_class=HTMLResponse, include_in_schema=False)
    def cache(key: str, settings: Conf, jobs: Jobs) -> HTMLResponse:
        if not layout.is_key(key):
            return error(400, "key: a cache key is 64 lower-case hex characters")
        status = jobs.status(key)
        if status is None:
            return error(404, f"no cache or job {key}")
        m = status.manifest
        runs = registry.read_runs(settings.cache_root, key)
        sample, sample_error = [], None
        if m is not None:
            try:
                sample = pages.sample(layout.resolve_location(key, settings.cache_root), m)
            except layout.CacheError as e:
                sample_error = jobs.scrub(str(e))
        model = m and m.spec.teacher.model
        return page("cache.html", nav="caches", title=f"Cache {key[:12]}", key=key, job=status, m=m, model=model,
                    recipe=m and pages.recipe(m.spec), splits=m and pages.splits(m), sample=sample,
                    teacher_facts=pages.teacher_facts(m.spec) if m else [], generative=bool(m and m.spec.generative),
                    sample_error=sample_error, spec=m and m.spec.model_dump_json(indent=1),
                    runs=pages.run_rows(runs, registry.read_benches(settings.cache_root)),
                    plot=svgplot.layout(svgplot.from_records(runs)), columns=pages.columns(cache=False))

    @router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(settings: Conf, jobs: Jobs) -> HTMLResponse:
        return page("jobs.html", nav="jobs", title="Jobs", jobs=pages.job_rows(jobs, Store(settings.cache_root)),
                    token_needed=bool(settings.api_token))

    @router.get("/jobs/rows", response_class=HTMLResponse, include_in_schema=False)
    def job_table_rows(settings: Conf, jobs: Jobs) -> HTMLResponse:
        """The job table's body, for the page's poller (the same template the page renders)."""
        return page("job_rows.html", jobs=pages.job_rows(jobs, Store(settings.cache_root)))

    @router.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(settings: Conf, sort: Annotated[str, Query(max_length=40)] = "created_at",
                  order: Annotated[str, Query(max_length=4)] = "desc",
                  method: Annotated[str, Query(max_length=200)] = "",
                  cache: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
        if order not in ("asc", "desc"):
            return error(400, f"order: {order!r} is not asc or desc")
        if cache and not layout.is_key(cache):
            return error(400, "cache: a cache key is 64 lower-case hex characters")
        runs = registry.read_runs(settings.cache_root, cache or None)
        rows = pages.run_rows(runs, registry.read_benches(settings.cache_root))
        names = sorted({r["name"] for r in rows})
        try:
            shown = pages.sort_rows([r for r in rows if not method or r["name"] == method], sort, order == "desc")
        except pages.PageError as e:
            return error(400, str(e))
        plot = svgplot.layout(svgplot.from_records([r for r in runs if not method or r.name == method])) \
            if cache else None

        def link(column: str, direction: str) -> str:
            query = {"sort": column, "order": direction, "method": method, "cache": cache}
            return "/runs?" + urlencode({k: v for k, v in query.items() if v})

        all_caches = sorted(registry.run_caches(settings.cache_root))  # folder names: no record is read
        return page("runs.html", nav="runs", title="Students", rows=shown, names=names, method=method, sort=sort,
                    order=order, cache=cache, caches=all_caches, columns=pages.columns(cache=not cache), plot=plot,
                    total=len(rows), link=link)

    @router.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(run_id: str, settings: Conf) -> HTMLResponse:
        if not ID_RE.fullmatch(run_id):
            return error(400, "run id: 16 lower-case hex characters")
        run = registry.find_run(settings.cache_root, run_id)
        if run is None:
            return error(404, f"no run {run_id} in the registry")
        benches = [b for b in registry.read_benches(settings.cache_root) if any(m.run_id == run_id for m in b.runs)]
        root = Store(settings.cache_root)
        return page("run.html", nav="runs", title=f"Run {run.name} seed {run.seed}", run=run, benches=benches,
                    summary=pages.method_summary(run),
                    generative=bool(run.metrics.get("generative")),
                    folder=pages.hide_root(run.folder, root), headline=run.headline(), teacher=run.headline("teacher"),
                    metric_names=registry.METRICS, config=pages.hide_root(json.dumps(run.config, indent=1), root),
                    splits=_split_metrics(run.metrics))

    @router.get("/benches", response_class=HTMLResponse, include_in_schema=False)
    def benches_page(settings: Conf) -> HTMLResponse:
        benches = registry.read_benches(settings.cache_root)
        return page("benches.html", nav="benches", title="Benchmarks", benches=benches,
                    shown=lambda path: pages.hide_root(path, Store(settings.cache_root)))

    @router.get("/benches/{bench_id}", response_class=HTMLResponse, include_in_schema=False)
    def bench_page(bench_id: str, settings: Conf) -> HTMLResponse:
        bench = _bench(settings, bench_id)
        if isinstance(bench, HTMLResponse):
            return bench
        report, too_large, plot = None, None, None
        if (md := pages.bench_file(bench, "report.md")) is not None:
            try:
                report = markdown_html.render_file(md, settings.max_report_bytes, lambda s: _image_url(bench, s),
                                                   scope=bench.id)
            except files.FileTooLarge:
                too_large = md.stat().st_size
            except OSError as e:
                log.warning("bench %s: report.md not shown: %s", bench.id, e)
        if (res := pages.bench_file(bench, "results.json")) is not None:
            try:
                results = json.loads(files.read_regular(res, MAX_RESULTS_BYTES))
                ids = {(m.name, m.seed): m.run_id for m in bench.runs}
                plot = svgplot.layout(svgplot.from_results(results, ids))
            except (ValueError, RecursionError, OSError) as e:  # another version's shape: the report still shows
                log.warning("bench %s: no plot from results.json: %s", bench.id, str(e)[:500])
        return page("bench.html", nav="benches", title=f"{bench.kind.capitalize()}: {bench.task}", bench=bench,
                    report=report, too_large=too_large, limit=settings.max_report_bytes, plot=plot,
                    here=Path(bench.folder).is_dir(), folder=pages.hide_root(bench.folder, Store(settings.cache_root)))

    @router.get("/benches/{bench_id}/files/{name}", include_in_schema=False)
    def bench_files(bench_id: str, name: str, settings: Conf) -> Response:
        bench = _bench(settings, bench_id)
        if isinstance(bench, HTMLResponse):
            return bench
        path = pages.bench_file(bench, name)
        if path is None:
            return error(404, f"no file {name!r} served from this benchmark")
        return FileResponse(path, headers=FILE_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return error(404, f"no static file {name!r}")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=60"})

    @router.post("/v1/runs", response_model=registry.RunRecord, dependencies=[Depends(authorised)])
    def post_run(record: registry.RunRecord, settings: Conf, keep_name: bool = False) -> registry.RunRecord:
        """Record a finished run trained on one of this service's caches (a remote trainer's record); with
        `keep_name`, under the name of the record of that run it replaces (a run evaluated again)."""
        if keep_name:
            record = registry.keeping_its_name(settings.cache_root, record)
        registry.write_run(settings.cache_root, record)
        return record

    return router


def _bench(settings: Settings, bench_id: str) -> registry.BenchRecord | HTMLResponse:
    if not ID_RE.fullmatch(bench_id):
        return error(400, "bench id: 16 lower-case hex characters")
    bench = next((b for b in registry.read_benches(settings.cache_root) if b.id == bench_id), None)
    return bench if bench is not None else error(404, f"no benchmark {bench_id} in the registry")


def _image_url(bench: registry.BenchRecord, src: str) -> str | None:
    return f"/benches/{bench.id}/files/{src}" if pages.bench_file(bench, src) is not None else None


def _split_metrics(metrics: dict) -> list[dict]:
    """Per evaluation split: the student's and the teacher's accuracy, macro-F1, AUROC, ECE (a generative run's
    rows, tokens, NLL per token, perplexity and exact match: GENERATIVE_METRICS)."""
    student, teacher = metrics.get("student"), metrics.get("teacher")
    if not isinstance(student, dict):
        return []
    out = []
    for split, s in student.items():
        t = teacher.get(split, {}) if isinstance(teacher, dict) else {}
        if isinstance(s, dict):
            out.append({"split": split, **{f"{who}_{k}": (d.get(k) if isinstance(d, dict) else None)
                                           for who, d in (("student", s), ("teacher", t))
                                           for k in ("accuracy", "macro_f1", "auroc", "ece", *GENERATIVE_METRICS)}})
    return out
