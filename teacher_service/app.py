"""The teacher service: FastAPI over the job manager and the caches it writes.

Remote trainers stream a cache with `GET /v1/caches/{key}/rows?start=&stop=`: an Arrow IPC stream of record
batches whose columns are the rows (`robustkd.shared.layout.ROWS_SCHEMA`) plus one fixed-size-list column
`t_<array>` per teacher target, in its stored dtype (`t_logits` float32, `t_layer_<i>` float16).
`robustkd.shared.reader.CacheReader` reads it when given the cache's URL.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.middleware.trustedhost import TrustedHostMiddleware

from robustkd.shared import layout
from robustkd.shared.reader import ARROW_STREAM, CacheReader, Shard, targets_to_table
from robustkd.shared.schemas import CacheRequest, CacheSummary, JobStatus
from robustkd.teacher_service.dashboard import dashboard_router
from robustkd.teacher_service.guard import BodyGuard, token_ok
from robustkd.teacher_service.jobs import JobConflict, JobManager, StoreWriteError
from robustkd.teacher_service.memory import MALLOC
from robustkd.teacher_service.resolve import RequestError
from robustkd.teacher_service.settings import Settings, shown_path

log = logging.getLogger("robustkd.app")
KEY_RE = re.compile(r"[0-9a-f]{64}")
BATCH_ROWS = 256  # rows per record batch on the wire: the unit a reader resumes from
RETRY_AFTER_S = 2  # when every row-stream slot is taken
ERRORS = {401: "missing or wrong API token", 404: "no such job or cache", 409: "a conflict with the job's state, or "
          "a damaged cache", 413: "body or row range too large", 503: "busy, or not ready", 507: "the cache root "
          "cannot be written; nothing was changed"}


def documented(*codes: int) -> dict:
    """OpenAPI `responses` for the error statuses a route answers."""
    return {c: {"description": ERRORS[c]} for c in codes}
SYSTEM_POOL = pa.system_memory_pool()  # malloc: freed memory is reused across the threadpool threads
IPC_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # Arrow IPC end-of-stream marker

router = APIRouter()


# ---- dependencies --------------------------------------------------------------------------------
def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def jobs_of(request: Request) -> JobManager:
    return request.app.state.jobs


def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    # BodyGuard refuses these before any body is read; this keeps the rule on the route (and in OpenAPI)
    if not token_ok(authorization, settings_of(request).api_token):
        raise HTTPException(401, "missing or wrong API token (Authorization: Bearer <token>)")


def valid_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise HTTPException(400, "key: must be 64 lower-case hex characters")
    return key


def reader_of(request: Request, key: Annotated[str, Depends(valid_key)]) -> CacheReader:
    """The cache's reader; 404 unless `<root>/<key>` is a real folder of the root whose manifest names `key`."""
    readers: dict[str, CacheReader] = request.app.state.readers
    if jobs_of(request).manifest(key) is None:
        readers.pop(key, None)
        raise HTTPException(404, f"no cache {key}")
    if key not in readers:
        try:
            readers[key] = CacheReader(layout.resolve_location(key, settings_of(request).cache_root))
        except layout.CacheError:
            raise HTTPException(404, f"no cache {key}") from None
    return readers[key]


def damaged(key: str, e: Exception) -> HTTPException:
    """A cache whose files do not match its manifest (missing, changed, a symlink): 409, named, logged."""
    why = str(e) if isinstance(e, layout.CacheError) else f"a file cannot be read ({type(e).__name__})"
    log.error("cache %s is damaged: %s", key, why)
    return HTTPException(409, f"cache {key} is damaged: {why}; check it with `robustkd cache verify`, "
                              "or delete it and submit the request again")


def check_plain(request: Request, key: str, rels: list[str]) -> None:
    """Files served must be the cache's own: reached without a symbolic link (which could lead anywhere)."""
    root = jobs_of(request).root
    for rel in rels:
        if not root.is_plain(f"{key}/{rel}"):
            raise layout.CacheError(f"{rel} is a symbolic link; refusing to serve it")


Jobs = Annotated[JobManager, Depends(jobs_of)]
Reader = Annotated[CacheReader, Depends(reader_of)]
Key = Annotated[str, Depends(valid_key)]


# ---- health --------------------------------------------------------------------------------------
@router.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@router.get("/readyz")
def readyz(jobs: Jobs, settings: Annotated[Settings, Depends(settings_of)]) -> Response:
    """200 when the worker is up and can write; else 503 with the reason (dead, stuck, store not writable)."""
    reason = jobs.health()
    model = shown_path(settings.model, settings.allowed_model_roots())
    body = {"ready": reason is None, "model": model, **({"reason": reason} if reason else {})}
    return JSONResponse(body, 200 if reason is None else 503)


# ---- jobs and caches -----------------------------------------------------------------------------
@router.post("/v1/caches", response_model=JobStatus, dependencies=[Depends(authorised)],
             responses={200: {"description": "complete"}, 202: {"description": "queued or running"},
                        **documented(401, 409, 413, 507)})
def submit(req: CacheRequest, jobs: Jobs, response: Response) -> JobStatus:
    try:
        code, job = jobs.submit(req)
    except RequestError as e:  # a user file named relative to its data root, as the job records it
        raise HTTPException(422, jobs.scrub(str(e))) from None
    except JobConflict as e:
        raise HTTPException(409, str(e)) from None
    except StoreWriteError as e:
        raise HTTPException(507, f"{e}; nothing was queued") from None
    response.status_code = code
    return job


@router.get("/v1/jobs/{key}", response_model=JobStatus)
def job_status(key: Key, jobs: Jobs) -> JobStatus:
    job = jobs.status(key)
    if job is None:
        raise HTTPException(404, f"no job or cache {key}")
    return job


@router.delete("/v1/jobs/{key}", response_model=JobStatus, dependencies=[Depends(authorised)],
               responses=documented(401, 404, 507))
def cancel_job(key: Key, jobs: Jobs) -> JobStatus:
    """A queued job answers `cancelled`; a running one `cancelling` (stops at its next batch)."""
    try:
        job = jobs.cancel(key)
    except StoreWriteError as e:
        raise HTTPException(507, f"{e}; the job was not cancelled") from None
    if job is None:
        raise HTTPException(404, f"no job {key}")
    return job


@router.get("/v1/caches", response_model=list[CacheSummary])
def list_caches(jobs: Jobs) -> list[CacheSummary]:
    return jobs.list_caches()


@router.get("/v1/caches/{key}", response_model=JobStatus)
def get_cache(key: Key, jobs: Jobs) -> JobStatus:
    return job_status(key, jobs)


@router.delete("/v1/caches/{key}", dependencies=[Depends(authorised)], responses=documented(401, 404, 409, 507))
def delete_cache(key: Key, jobs: Jobs, request: Request) -> dict:
    request.app.state.readers.pop(key, None)
    try:
        existed = jobs.delete(key)
    except JobConflict as e:
        raise HTTPException(409, str(e)) from None
    except StoreWriteError as e:
        raise HTTPException(507, str(e)) from None
    if not existed:
        raise HTTPException(404, f"no cache {key}")
    return {"deleted": key}


# ---- reading a cache -----------------------------------------------------------------------------
def _slice(shard: Shard, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of a shard (offsets within it) as the wire table."""
    return targets_to_table(shard.rows.slice(lo, hi - lo), {k: v[lo:hi] for k, v in shard.targets.items()})


def shard_files(r: CacheReader, k: int) -> list[str]:
    return [layout.rows_path(k), *(layout.chunk_path(name, k) for name in r.manifest.arrays)]


class StreamSlot:
    """One of `max_streams` row-stream slots, released once: when the stream ends, fails, or is dropped
    unstarted (a client gone before the first byte)."""

    def __init__(self, sem: threading.BoundedSemaphore) -> None:
        self.sem, self.lock, self.held = sem, threading.Lock(), True
        MALLOC.stream_started()

    def release(self) -> None:
        with self.lock:
            if self.held:
                self.held = False
                self.sem.release()
                MALLOC.stream_ended()


def arrow_stream(request: Request, r: CacheReader, start: int, stop: int, first: Shard,
                 slot: StreamSlot) -> Iterator[bytes | memoryview]:
    """IPC stream of rows [start, stop), a shard at a time: the schema message, one message per record batch
    (serialised once, sent without a copy), the end-of-stream marker. Memory stays about one shard's worth."""
    try:
        s = r.manifest.shard_rows
        for k in r.manifest.shards_for(start, stop):
            if first is not None and k == first.index:
                shard, first = first, None  # each shard is referenced by one name, dropped after it is sent
            else:
                try:
                    check_plain(request, r.key, shard_files(r, k))
                    shard = r.read_shard(k, widen=False)
                except (layout.CacheError, OSError) as e:  # the status is sent: cut the stream, log why
                    damaged(r.key, e)
                    return
            lo, hi = max(start, k * s) - k * s, min(stop, (k + 1) * s) - k * s
            table = _slice(shard, lo, hi)
            del shard
            if k == start // s:
                yield memoryview(table.schema.serialize())
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                yield memoryview(batch.serialize(memory_pool=SYSTEM_POOL))
            table = batch = None  # the last batch is a view of the table: let both go before the next read
        yield IPC_END
    finally:
        slot.release()


@router.get("/v1/caches/{key}/rows", response_class=Response,
            responses={200: {"content": {ARROW_STREAM: {}}, "description": "Arrow IPC stream"},
                       **documented(404, 409, 413),
                       503: {"description": "every row-stream slot is taken; retry after Retry-After seconds"}})
def rows(request: Request, r: Reader, settings: Annotated[Settings, Depends(settings_of)],
         start: Annotated[int, Query(ge=0)], stop: Annotated[int, Query(ge=1)]) -> Response:
    n = r.manifest.n_rows
    if stop <= start or stop > n:
        raise HTTPException(416, f"rows [{start}, {stop}) outside [0, {n})")
    if stop - start > settings.max_rows_per_request:
        raise HTTPException(413, f"at most {settings.max_rows_per_request} rows per request")
    sem: threading.BoundedSemaphore = request.app.state.streams
    if not sem.acquire(blocking=False):
        raise HTTPException(503, f"all {settings.max_streams} row streams are busy; retry later",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    slot = StreamSlot(sem)
    k = start // r.manifest.shard_rows
    try:  # the first shard is read (and verified) before the response starts, so errors get a status code
        check_plain(request, r.key, shard_files(r, k))
        first = r.read_shard(k, widen=False)
    except (layout.CacheError, OSError) as e:
        slot.release()
        raise damaged(r.key, e) from None
    stream = arrow_stream(request, r, start, stop, first, slot)
    weakref.finalize(stream, slot.release)  # a response dropped before it started
    # after the response, also when the client went away mid-stream (the generator is not closed then)
    return StreamingResponse(stream, media_type=ARROW_STREAM, background=BackgroundTask(end_stream, stream, slot))


def end_stream(stream: Iterator[bytes | memoryview], slot: StreamSlot) -> None:
    """Close the stream's generator (its shard is freed now, not at some later collection) and free its slot."""
    try:
        stream.close()
    except ValueError:  # still running in a thread: its own `finally` releases the slot
        return
    slot.release()


@router.get("/v1/caches/{key}/head", response_class=Response, responses=documented(404, 409))
def head(request: Request, r: Reader) -> Response:
    """The head's safetensors bytes, checked against the manifest (409 when they do not match)."""
    try:
        check_plain(request, r.key, [layout.HEAD])
        raw = r.head_bytes()
    except (layout.CacheError, OSError) as e:
        raise damaged(r.key, e) from None
    return Response(raw, media_type="application/octet-stream", headers={"x-sha256": r.manifest.head_sha256})


# ---- the app -------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (valid in Python's JSON, not in ours) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, safe for inputs like `{"limit": NaN}` (echoed back, they made the answer itself fail)."""
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, 422)


@asynccontextmanager
async def lifespan(app: FastAPI):  # noqa: ANN201
    app.state.jobs = JobManager(app.state.settings).start()
    yield
    app.state.jobs.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # no /docs or /redoc: their pages load scripts from a CDN (docs/security.md); /openapi.json stays
    app = FastAPI(title="robustkd teacher service", version=version("robustkd"), lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.settings = settings
    app.state.readers = {}
    app.state.streams = threading.BoundedSemaphore(settings.max_streams)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, token=settings.api_token)
    # added last, so it runs first: a request naming a host not configured (DNS rebinding) gets 400 at once
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts(), www_redirect=False)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    app.include_router(dashboard_router(authorised))  # HTML pages at /, /caches, /jobs, /runs, /benches
    return app
