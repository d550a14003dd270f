"""Precompute jobs: a FIFO queue, one worker thread that owns the models, state persisted per job.

Job records live under `<cache root>/_jobs/<key>.json` on the same store as the caches (a folder or an
fsspec URL), so a restarted service re-queues what was queued or running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from robustkd.shared import layout
from robustkd.shared.schemas import CacheRequest, CacheSummary, JobStatus, Progress
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.lm import CausalLM, load_teacher
from robustkd.teacher_service.model import Encoder, ModelError
from robustkd.teacher_service.precompute import Cancelled, precompute
from robustkd.teacher_service.resolve import RequestError, resolve
from robustkd.teacher_service.settings import Settings
from robustkd.teacher_service.store import Store, remove_stale_temps
from robustkd.teacher_service.taskdata import TaskData

log = logging.getLogger("robustkd.jobs")
JOBS_DIR = "_jobs"


class JobManager:
    """Owns the teacher models; HTTP handlers only read and enqueue, never run the model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Store(settings.cache_root)
        self.root.makedirs(JOBS_DIR)
        self.jobs: dict[str, JobStatus] = {}
        self.specs: dict[str, tuple[CacheSpec, TaskData]] = {}
        self.queue: deque[str] = deque()
        self.cond = threading.Condition()
        self.cancel_flags: set[str] = set()
        self.encoders: dict[tuple[str, bool], Encoder | CausalLM] = {}
        self.ready = threading.Event()
        self.stopping = False
        self._restore()
        self.thread = threading.Thread(target=self._run, name="teacher-worker", daemon=True)

    def start(self) -> JobManager:
        """Start the worker: it loads the default model (then /readyz is ready) and runs queued jobs in order."""
        self.thread.start()
        return self

    # ---- persistence -------------------------------------------------------------------------
    def _job_file(self, key: str) -> str:
        return f"{JOBS_DIR}/{key}.json"

    def _save(self, job: JobStatus) -> None:
        self.root.write_json(self._job_file(job.key), job.model_dump(mode="json", exclude={"manifest", "position"}))

    def _restore(self) -> None:
        """Jobs interrupted by a crash go back on the queue; their finished shards are kept."""
        if self.root.local:
            remove_stale_temps(f"{self.root.path}/{JOBS_DIR}")
        records = []
        for name in self.root.list(JOBS_DIR):
            if not name.endswith(".json"):
                continue
            try:
                records.append(JobStatus.model_validate_json(self.root.read_bytes(f"{JOBS_DIR}/{name}")))
            except ValueError:
                log.warning("ignoring unreadable job file %s", name)
        for job in sorted(records, key=lambda j: j.submitted_at or ""):
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

    def _done_status(self, key: str, manifest: layout.Manifest, request: CacheRequest | None) -> JobStatus:
        return JobStatus(key=key, state="succeeded", progress=Progress(
            rows_done=manifest.n_rows, rows_total=manifest.n_rows, stage="done"), request=request, manifest=manifest)

    def submit(self, req: CacheRequest) -> tuple[int, JobStatus]:
        """200 with the manifest if the cache exists, else 202 with the (new or running) job."""
        self.check_paths(req)
        spec, task = resolve(req, self.settings.model)
        key = spec.cache_key()
        manifest = self.manifest(key)
        if manifest is not None:
            return 200, self._done_status(key, manifest, req)
        with self.cond:
            job = self.jobs.get(key)
            if job is not None and job.state in ("queued", "running"):
                return 202, self._with_position(job)
            job = JobStatus(key=key, state="queued", request=req, submitted_at=_now())
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
            return self._done_status(key, manifest, job.request if job else None)
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

    def manifest(self, key: str) -> layout.Manifest | None:
        rel = f"{key}/{layout.MANIFEST}"
        return layout.Manifest.model_validate_json(self.root.read_bytes(rel)) if self.root.exists(rel) else None

    def list_caches(self) -> list[CacheSummary]:
        out = []
        for name in self.root.list():
            if layout.is_key(name) and (m := self.manifest(name)) is not None:
                out.append(CacheSummary(key=m.key, task=m.spec.task.name, model=m.spec.teacher.model,
                                        n_rows=m.n_rows, created_at=m.created_at))
        return out

    def delete(self, key: str) -> bool:
        job = self.jobs.get(key)
        if job is not None and job.state in ("queued", "running"):
            raise RuntimeError(f"cache {key} has a {job.state} job; cancel it first")
        existed = self.root.exists(key)
        if existed:
            # the manifest goes first so no reader ever sees a complete-looking partial folder
            self.root.delete(f"{key}/{layout.MANIFEST}")
            self.root.delete(key)
        self.jobs.pop(key, None)
        self.root.delete(self._job_file(key))
        return existed

    # ---- worker ------------------------------------------------------------------------------
    def encoder(self, model: str, with_head: bool) -> Encoder | CausalLM:
        k = (model, with_head)
        if k not in self.encoders:
            self.encoders[k] = load_teacher(model, with_head=with_head, threads=self.settings.threads)
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
            enc = self.encoder(spec.teacher.model, spec.teacher.head == "model" and spec.teacher.family == "encoder")
            if precompute(spec, task, enc, self.root.url, progress=progress,
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


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
