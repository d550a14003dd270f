"""The teacher service: FastAPI over the job manager and the caches it writes.

Remote trainers stream a cache with `GET /v1/caches/{key}/rows?start=&stop=`: an Arrow IPC stream whose
columns are the rows (`shared.layout.ROWS_SCHEMA`) plus one fixed-size-list column `t_<array>` per teacher
target (`t_logits`, `t_layer_<i>`). `shared.layout.CacheReader` reads it when given the cache's URL.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import pyarrow as pa
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from shared import layout
from shared.schemas import CacheRequest, JobStatus
from teacher_service.jobs import JobManager
from teacher_service.precompute import RequestError
from teacher_service.settings import Settings

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    root = Path(settings.cache_root)
    readers: dict[str, layout.CacheReader] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.jobs = JobManager(settings)
        yield
        app.state.jobs.close()

    app = FastAPI(title="robustkd teacher service", version="0.1.0", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        size = request.headers.get("content-length")
        if size is None and request.method in ("POST", "PUT", "PATCH") and "chunked" in request.headers.get(
                "transfer-encoding", ""):
            return JSONResponse({"detail": "chunked request bodies are not accepted; send Content-Length"}, 411)
        if size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
            return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"}, 413)
        return await call_next(request)

    def jobs(request: Request) -> JobManager:
        return request.app.state.jobs

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if settings.api_token and authorization != f"Bearer {settings.api_token}":
            raise HTTPException(401, "missing or wrong API token (Authorization: Bearer <token>)")

    def valid_key(key: str) -> str:
        if not KEY_RE.match(key):
            raise HTTPException(400, "key: must be 64 lower-case hex characters")
        return key

    def reader(key: str) -> layout.CacheReader:
        if key not in readers:
            try:
                readers[key] = layout.CacheReader(str(root / key))
            except layout.CacheError as e:
                raise HTTPException(404, str(e)) from None
        return readers[key]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    def readyz(request: Request) -> Response:
        ready = jobs(request).ready.is_set()
        return JSONResponse({"ready": ready, "model": settings.model}, 200 if ready else 503)

    @app.post("/v1/caches", response_model=JobStatus, dependencies=[Depends(authorised)],
              responses={200: {"description": "complete"}, 202: {"description": "queued or running"}})
    def submit(req: CacheRequest, request: Request, response: Response) -> JobStatus:
        try:
            code, job = jobs(request).submit(req)
        except RequestError as e:
            raise HTTPException(422, str(e)) from None
        response.status_code = code
        return job

    @app.get("/v1/jobs/{key}", response_model=JobStatus)
    def job_status(key: str, request: Request) -> JobStatus:
        job = jobs(request).status(valid_key(key))
        if job is None:
            raise HTTPException(404, f"no job or cache {key}")
        return job

    @app.delete("/v1/jobs/{key}", response_model=JobStatus, dependencies=[Depends(authorised)])
    def cancel_job(key: str, request: Request) -> JobStatus:
        job = jobs(request).cancel(valid_key(key))
        if job is None:
            raise HTTPException(404, f"no job {key}")
        return job

    @app.get("/v1/caches")
    def list_caches(request: Request) -> list[dict]:
        return jobs(request).list_caches()

    @app.get("/v1/caches/{key}", response_model=JobStatus)
    def get_cache(key: str, request: Request) -> JobStatus:
        return job_status(key, request)

    @app.delete("/v1/caches/{key}", dependencies=[Depends(authorised)])
    def delete_cache(key: str, request: Request) -> dict:
        readers.pop(valid_key(key), None)
        try:
            existed = jobs(request).delete(key)
        except RuntimeError as e:
            raise HTTPException(409, str(e)) from None
        if not existed:
            raise HTTPException(404, f"no cache {key}")
        return {"deleted": key}

    @app.get("/v1/caches/{key}/rows", response_class=Response,
             responses={200: {"content": {ARROW_STREAM: {}}, "description": "Arrow IPC stream"}})
    def rows(key: str, start: Annotated[int, Query(ge=0)], stop: Annotated[int, Query(ge=1)]) -> Response:
        r = reader(valid_key(key))
        n = r.manifest.n_rows
        if stop <= start or stop > n:
            raise HTTPException(416, f"rows [{start}, {stop}) outside [0, {n})")
        if stop - start > settings.max_rows_per_request:
            raise HTTPException(413, f"at most {settings.max_rows_per_request} rows per request")
        try:
            shard = r.read_rows(start, stop)
        except layout.CacheError as e:
            raise HTTPException(500, str(e)) from None
        table = layout.targets_to_table(shard.rows, shard.targets)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)

    @app.get("/v1/caches/{key}/head", response_class=Response)
    def head(key: str) -> Response:
        r = reader(valid_key(key))
        path = root / key / layout.HEAD
        return Response(path.read_bytes(), media_type="application/octet-stream",
                        headers={"x-sha256": r.manifest.head_sha256})

    return app
