"""The teacher service: FastAPI over the job manager and the caches it writes.

Remote trainers stream a cache with `GET /v1/caches/{key}/rows?start=&stop=`: an Arrow IPC stream of record
batches whose columns are the rows (`robustkd.shared.layout.ROWS_SCHEMA`) plus one fixed-size-list column
`t_<array>` per teacher target, in its stored dtype (`t_logits` float32, `t_layer_<i>` float16).
`robustkd.shared.reader.CacheReader` reads it when given the cache's URL.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from robustkd.shared import layout
from robustkd.shared.reader import ARROW_STREAM, CacheReader, Shard, targets_to_table
from robustkd.shared.schemas import CacheRequest, CacheSummary, JobStatus
from robustkd.teacher_service.dashboard import dashboard_router
from robustkd.teacher_service.jobs import JobManager
from robustkd.teacher_service.resolve import RequestError
from robustkd.teacher_service.settings import Settings

KEY_RE = re.compile(r"[0-9a-f]{64}")
BATCH_ROWS = 512  # rows per record batch on the wire: the unit a reader resumes from

router = APIRouter()


# ---- dependencies --------------------------------------------------------------------------------
def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def jobs_of(request: Request) -> JobManager:
    return request.app.state.jobs


def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = settings_of(request).api_token
    if token and authorization != f"Bearer {token}":
        raise HTTPException(401, "missing or wrong API token (Authorization: Bearer <token>)")


def valid_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise HTTPException(400, "key: must be 64 lower-case hex characters")
    return key


def reader_of(request: Request, key: Annotated[str, Depends(valid_key)]) -> CacheReader:
    readers: dict[str, CacheReader] = request.app.state.readers
    if key not in readers:
        try:
            readers[key] = CacheReader(layout.resolve_location(key, settings_of(request).cache_root))
        except layout.CacheError as e:
            raise HTTPException(404, str(e)) from None
    return readers[key]


Jobs = Annotated[JobManager, Depends(jobs_of)]
Reader = Annotated[CacheReader, Depends(reader_of)]
Key = Annotated[str, Depends(valid_key)]


# ---- health --------------------------------------------------------------------------------------
@router.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@router.get("/readyz")
def readyz(jobs: Jobs, settings: Annotated[Settings, Depends(settings_of)]) -> Response:
    ready = jobs.ready.is_set()
    return JSONResponse({"ready": ready, "model": settings.model}, 200 if ready else 503)


# ---- jobs and caches -----------------------------------------------------------------------------
@router.post("/v1/caches", response_model=JobStatus, dependencies=[Depends(authorised)],
             responses={200: {"description": "complete"}, 202: {"description": "queued or running"}})
def submit(req: CacheRequest, jobs: Jobs, response: Response) -> JobStatus:
    try:
        code, job = jobs.submit(req)
    except RequestError as e:
        raise HTTPException(422, str(e)) from None
    response.status_code = code
    return job


@router.get("/v1/jobs/{key}", response_model=JobStatus)
def job_status(key: Key, jobs: Jobs) -> JobStatus:
    job = jobs.status(key)
    if job is None:
        raise HTTPException(404, f"no job or cache {key}")
    return job


@router.delete("/v1/jobs/{key}", response_model=JobStatus, dependencies=[Depends(authorised)])
def cancel_job(key: Key, jobs: Jobs) -> JobStatus:
    job = jobs.cancel(key)
    if job is None:
        raise HTTPException(404, f"no job {key}")
    return job


@router.get("/v1/caches", response_model=list[CacheSummary])
def list_caches(jobs: Jobs) -> list[CacheSummary]:
    return jobs.list_caches()


@router.get("/v1/caches/{key}", response_model=JobStatus)
def get_cache(key: Key, jobs: Jobs) -> JobStatus:
    return job_status(key, jobs)


@router.delete("/v1/caches/{key}", dependencies=[Depends(authorised)])
def delete_cache(key: Key, jobs: Jobs, request: Request) -> dict:
    request.app.state.readers.pop(key, None)
    try:
        existed = jobs.delete(key)
    except RuntimeError as e:
        raise HTTPException(409, str(e)) from None
    if not existed:
        raise HTTPException(404, f"no cache {key}")
    return {"deleted": key}


# ---- reading a cache -----------------------------------------------------------------------------
def _slice(shard: Shard, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of a shard (offsets within it) as the wire table."""
    return targets_to_table(shard.rows.slice(lo, hi - lo), {k: v[lo:hi] for k, v in shard.targets.items()})


def arrow_stream(r: CacheReader, start: int, stop: int, first: Shard) -> Iterator[bytes]:
    """IPC stream bytes of rows [start, stop), a shard at a time: memory stays about one shard's worth."""
    sink = io.BytesIO()
    writer = None
    s = r.manifest.shard_rows
    for k in r.manifest.shards_for(start, stop):
        shard = first if k == first.index else r.read_shard(k, widen=False)
        lo, hi = max(start, k * s) - k * s, min(stop, (k + 1) * s) - k * s
        table = _slice(shard, lo, hi)
        if writer is None:
            writer = pa.ipc.new_stream(sink, table.schema)
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            writer.write_batch(batch)
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
    writer.close()
    yield sink.getvalue()


@router.get("/v1/caches/{key}/rows", response_class=Response,
            responses={200: {"content": {ARROW_STREAM: {}}, "description": "Arrow IPC stream"}})
def rows(r: Reader, settings: Annotated[Settings, Depends(settings_of)], start: Annotated[int, Query(ge=0)],
         stop: Annotated[int, Query(ge=1)]) -> Response:
    n = r.manifest.n_rows
    if stop <= start or stop > n:
        raise HTTPException(416, f"rows [{start}, {stop}) outside [0, {n})")
    if stop - start > settings.max_rows_per_request:
        raise HTTPException(413, f"at most {settings.max_rows_per_request} rows per request")
    try:  # the first shard is read (and verified) before the response starts, so errors get a status code
        first = r.read_shard(start // r.manifest.shard_rows, widen=False)
    except layout.CacheError as e:
        raise HTTPException(500, str(e)) from None
    return StreamingResponse(arrow_stream(r, start, stop, first), media_type=ARROW_STREAM)


@router.get("/v1/caches/{key}/head", response_class=Response)
def head(r: Reader) -> Response:
    try:
        raw = r.head_bytes()
    except layout.CacheError as e:
        raise HTTPException(500, str(e)) from None
    return Response(raw, media_type="application/octet-stream", headers={"x-sha256": r.manifest.head_sha256})


# ---- the app -------------------------------------------------------------------------------------
async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN201
    max_bytes = request.app.state.settings.max_body_bytes
    size = request.headers.get("content-length")
    if size is None and request.method in ("POST", "PUT", "PATCH") and "chunked" in request.headers.get(
            "transfer-encoding", ""):
        return JSONResponse({"detail": "chunked request bodies are not accepted; send Content-Length"}, 411)
    if size is not None and (not size.isdigit() or int(size) > max_bytes):
        return JSONResponse({"detail": f"request body over {max_bytes} bytes"}, 413)
    return await call_next(request)


@asynccontextmanager
async def lifespan(app: FastAPI):  # noqa: ANN201
    app.state.jobs = JobManager(app.state.settings).start()
    yield
    app.state.jobs.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="robustkd teacher service", version="0.2.0", lifespan=lifespan)
    app.state.settings = settings or Settings()
    app.state.readers = {}
    app.middleware("http")(limit_body)
    app.include_router(router)
    app.include_router(dashboard_router(authorised))  # HTML pages at /, /caches, /jobs, /runs, /benches
    return app
