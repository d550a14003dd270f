"""Precompute jobs: a FIFO queue, one worker thread that owns the model, state persisted per job."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import deque
from pathlib import Path

from shared import layout
from shared.schemas import CacheRequest, JobStatus, Progress
from shared.spec import CacheSpec
from teacher_service.model import Encoder, ModelError
from teacher_service.precompute import Cancelled, RequestError, precompute, resolve
from teacher_service.settings import Settings

log = logging.getLogger("robustkd.jobs")
JOBS_DIR = "_jobs"


class JobManager:
    """Owns the teacher models; HTTP handlers only read and enqueue, never run the model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.cache_root)
        (self.root / JOBS_DIR).mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, JobStatus] = {}
        self.specs: dict[str, tuple[CacheSpec, object]] = {}
        self.queue: deque[str] = deque()
        self.cond = threading.Condition()
        self.cancel_flags: set[str] = set()
        self.encoders: dict[tuple[str, bool], Encoder] = {}
        self.ready = threading.Event()
        self.stopping = False
        self._restore()
        self.thread = threading.Thread(target=self._run, name="teacher-worker", daemon=True)
        self.thread.start()

    # ---- persistence -------------------------------------------------------------------------
    def _job_file(self, key: str) -> Path:
        return self.root / JOBS_DIR / f"{key}.json"

    def _save(self, job: JobStatus) -> None:
        layout.write_json_atomic(str(self._job_file(job.key)), job.model_dump(mode="json", exclude={"manifest"}))

    def _restore(self) -> None:
        """Jobs interrupted by a crash go back on the queue; their finished shards are kept."""
        layout.remove_stale_temps(str(self.root / JOBS_DIR))
        for f in sorted(self.root.glob(f"{JOBS_DIR}/*.json"), key=lambda p: p.stat().st_mtime):
            try:
                job = JobStatus.model_validate_json(f.read_text())
            except ValueError:
                log.warning("ignoring unreadable job file %s", f)
                continue
            if job.state in ("queued", "running"):
                job.state = "queued"
                self.queue.append(job.key)
            self.jobs[job.key] = job

    # ---- API used by handlers ----------------------------------------------------------------
    def check_paths(self, req: CacheRequest) -> None:
        """Model folders and user files must lie under the operator's configured roots, when set."""
        for value, roots, field in ((req.model, self.settings.model_roots, "model"),
                                    (req.path, self.settings.data_roots, "path")):
            if not roots or value is None:
                continue
            p = Path(value).expanduser().resolve()
            if not any(p.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
                raise RequestError(f"{field}: {value} is not under an allowed root")

    def submit(self, req: CacheRequest) -> tuple[int, JobStatus]:
        """200 with the manifest if the cache exists, else 202 with the (new or running) job."""
        self.check_paths(req)
        spec, task = resolve(req, self.settings.model)
        key = spec.cache_key()
        manifest = self.manifest(key)
        if manifest is not None:
            return 200, JobStatus(key=key, state="succeeded", progress=Progress(
                rows_done=manifest["n_rows"], rows_total=manifest["n_rows"], stage="done"),
                request=req, manifest=manifest)
        with self.cond:
            job = self.jobs.get(key)
            if job is not None and job.state in ("queued", "running"):
                return 202, self._with_position(job)
            job = JobStatus(key=key, state="queued", request=req)
            self.jobs[key] = job
            self.specs[key] = (spec, task)
            self.queue.append(key)
            self._save(job)
            self.cond.notify()
        return 202, self._with_position(job)

    def _with_position(self, job: JobStatus) -> JobStatus:
        pos = list(self.queue).index(job.key) if job.key in self.queue else None
        return job.model_copy(update={"position": pos})

    def status(self, key: str) -> JobStatus | None:
        manifest = self.manifest(key)
        job = self.jobs.get(key)
        if manifest is not None:
            return JobStatus(key=key, state="succeeded", progress=Progress(
                rows_done=manifest["n_rows"], rows_total=manifest["n_rows"], stage="done"),
                request=job.request if job else None, manifest=manifest)
        return self._with_position(job) if job else None

    def cancel(self, key: str) -> JobStatus | None:
        with self.cond:
            job = self.jobs.get(key)
            if job is None or job.state not in ("queued", "running"):
                return job
            if key in self.queue:
                self.queue.remove(key)
                job.state = "cancelled"
                self._save(job)
            else:
                self.cancel_flags.add(key)
        return job

    def manifest(self, key: str) -> dict | None:
        path = self.root / key / layout.MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def list_caches(self) -> list[dict]:
        out = []
        for m in sorted(self.root.glob(f"*/{layout.MANIFEST}")):
            d = json.loads(m.read_text())
            out.append({"key": d["key"], "task": d["spec"]["task"]["name"], "model": d["spec"]["teacher"]["model"],
                        "n_rows": d["n_rows"], "created_at": d["created_at"]})
        return out

    def delete(self, key: str) -> bool:
        job = self.jobs.get(key)
        if job is not None and job.state in ("queued", "running"):
            raise RuntimeError(f"cache {key} has a {job.state} job; cancel it first")
        folder = self.root / key
        existed = folder.exists()
        if existed:
            # the manifest goes first so no reader ever sees a complete-looking partial folder
            (folder / layout.MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(folder)
        self.jobs.pop(key, None)
        self._job_file(key).unlink(missing_ok=True)
        return existed

    # ---- worker ------------------------------------------------------------------------------
    def encoder(self, model: str, with_head: bool) -> Encoder:
        k = (model, with_head)
        if k not in self.encoders:
            self.encoders[k] = Encoder(model, with_head=with_head, threads=self.settings.threads)
        return self.encoders[k]

    def _run(self) -> None:
        try:
            self.encoder(self.settings.model, False)
        except ModelError as e:
            log.error("default model failed to load: %s", e)
        self.ready.set()
        while not self.stopping:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait(timeout=1.0)
                if self.stopping:
                    return
                key = self.queue.popleft()
                job = self.jobs[key]
                job.state = "running"
                self._save(job)
            self._execute(job)

    def _execute(self, job: JobStatus) -> None:
        key = job.key
        t0 = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
            job.progress = Progress(rows_done=done, rows_total=total, rows_per_s=round(rate, 2),
                                    eta_s=round((total - done) / rate, 1) if rate > 0 else None, stage=stage)

        try:
            if key not in self.specs:  # restored after a restart
                self.specs[key] = resolve(job.request, self.settings.model)
            spec, task = self.specs[key]
            if spec.cache_key() != key:
                raise RuntimeError("the request now resolves to another key (model or data changed)")
            enc = self.encoder(spec.teacher.model, spec.teacher.head == "model")
            if precompute(spec, task, enc, self.root, progress=progress,
                          should_stop=lambda: key in self.cancel_flags) is None:
                raise RuntimeError("another process holds some of this cache's shards; submit again later")
            job.state = "succeeded"
        except Cancelled:
            job.state = "cancelled"
        except Exception as e:  # a job failure must not kill the worker
            log.exception("job %s failed", key)
            job.state = "failed"
            job.error = f"{type(e).__name__}: {e}"
        finally:
            self.cancel_flags.discard(key)
            self.specs.pop(key, None)
            self._save(job)

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
