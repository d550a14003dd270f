"""Precompute jobs: a FIFO queue, one worker thread that owns the models, state persisted per job.

Job records live under `<cache root>/_jobs/<key>.json` on the same store as the caches (a folder or an
fsspec URL), so a restarted service re-queues what was queued or running. A state change is written to the
record before it is published in memory, so what a reader sees is what a restart finds; a record that cannot
be written (full or read-only disk) is kept in memory and written again by the worker until it succeeds.
The worker survives any exception; `health()` says when it is dead, stuck, or cannot write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from robustkd.shared import layout
from robustkd.shared.schemas import CacheRequest, CacheSummary, JobStatus, Progress
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.lm import CausalLM, load_teacher
from robustkd.teacher_service.local import compute
from robustkd.teacher_service.model import Encoder, compute_placement
from robustkd.teacher_service.precompute import Cancelled
from robustkd.teacher_service.resolve import RequestError, resolve
from robustkd.teacher_service.settings import Settings, shown_path
from robustkd.teacher_service.store import Store, remove_stale_temps
from robustkd.teacher_service.taskdata import TaskData

log = logging.getLogger("robustkd.jobs")
JOBS_DIR = "_jobs"
ACTIVE = ("queued", "running", "cancelling")


class StoreWriteError(RuntimeError):
    """The cache root cannot be written (full, read-only, gone): nothing was changed."""


class JobConflict(RuntimeError):
    """The job's state does not allow the request (e.g. deleting the cache of a running job)."""


def _write_error(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"


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
        self.encoders: dict[tuple[str, bool, str], Encoder | CausalLM] = {}  # (model, head, compute dtype)
        self.ready = threading.Event()
        self.stopping = False
        self.unsaved: set[str] = set()        # records whose last write failed: the worker retries them
        self.write_error: str | None = None   # the last failed write, until a write succeeds
        self.beat = time.monotonic()          # the running job's last sign of progress
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
        """Write a job's record; StoreWriteError (and `write_error` set) when the store refuses."""
        try:
            self.root.write_json(self._job_file(job.key), job.model_dump(mode="json", exclude={"manifest", "position"}))
        except Exception as e:  # noqa: BLE001 - OSError locally; fsspec backends raise their own kinds
            self.write_error = _write_error(e)
            raise StoreWriteError(f"cannot write under the cache root: {self.write_error}") from e
        self.write_error = None

    def _publish(self, job: JobStatus, **changes: object) -> None:
        """Record a worker-side change, then show it. A failed write keeps the change in memory (the truth)
        and leaves the record for the worker to write again."""
        try:
            self._save(job.model_copy(update=changes))
            self.unsaved.discard(job.key)
        except StoreWriteError as e:
            log.error("job %s: %s; kept in memory, will write again", job.key, e)
            self.unsaved.add(job.key)
        for name, value in changes.items():
            setattr(job, name, value)

    def _flush(self) -> None:
        """Write the records that failed before; with none pending, check that writing works again."""
        for key in list(self.unsaved):
            try:
                self._save(self.jobs[key])
                self.unsaved.discard(key)
            except (StoreWriteError, KeyError):
                return
        if self.write_error is not None:
            try:
                self.root.write_bytes(f"{JOBS_DIR}/.write-check", b"")
                self.write_error = None
            except Exception as e:  # noqa: BLE001
                self.write_error = _write_error(e)

    def health(self) -> str | None:
        """None when ready, else the reason: loading, a dead or stuck worker, a store that cannot be written."""
        if not self.ready.is_set():
            return "loading the default model"
        if not self.thread.is_alive():
            return "the worker thread is not running"
        if self.write_error is not None:
            return f"cannot write job records under the cache root: {self.write_error}"
        with self.cond:
            running = [k for k, j in self.jobs.items() if j.state in ("running", "cancelling")]
        idle = time.monotonic() - self.beat
        if running and idle > self.settings.worker_stall_s:
            return f"the worker is stuck: job {running[0]} made no progress for {idle:.0f} s"
        return None

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
            if job.state == "cancelling":  # cancelled before the crash: it does not run again
                job.state = "cancelled"
                self.unsaved.add(job.key)
            elif job.state in ("queued", "running"):
                job.state = "queued"
                self.queue.append(job.key)
            self.jobs[job.key] = job

    # ---- API used by handlers ----------------------------------------------------------------
    def check_paths(self, req: CacheRequest) -> None:
        """Model folders and user files must lie under the operator's roots (docs/security.md)."""
        for value, roots, field in ((req.model, self.settings.allowed_model_roots(), "model"),
                                    (req.path, self.settings.allowed_data_roots(), "path")):
            if roots is None or value is None:
                continue
            p = Path(value).expanduser().resolve()
            if not any(p.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
                raise RequestError(f"{field}: {shown_path(value, [])} is not under an allowed root")

    def scrub(self, message: str) -> str:
        """An error message as anyone may read it (GET /v1/jobs is open): the host's roots by name only."""
        roots = [("<cache root>", self.root.path if self.root.local else None)]
        roots += [("<data root>", r) for r in self.settings.allowed_data_roots() or [os.getcwd()]]
        for label, root in roots:
            if root:
                message = message.replace(str(Path(root).expanduser().absolute()), label)
        return message

    def _done_status(self, key: str, manifest: layout.Manifest, request: CacheRequest | None) -> JobStatus:
        return self._shown(JobStatus(key=key, state="succeeded", progress=Progress(
            rows_done=manifest.n_rows, rows_total=manifest.n_rows, stage="done"), request=request, manifest=manifest))

    def _shown(self, job: JobStatus) -> JobStatus:
        """A job as answered (status, submit, cancel): its model, in request and manifest, named relative to its
        root or by name, never by its host path. Records on disk keep the path, so a restarted job finds its
        model; the key leaves the model's location out, so a remote reader's key check still holds."""
        roots = self.settings.allowed_model_roots()
        update: dict = {}
        if job.request is not None and job.request.model is not None:
            update["request"] = job.request.model_copy(update={"model": shown_path(job.request.model, roots)})
        if job.manifest is not None:
            m = job.manifest
            teacher = m.spec.teacher.model_copy(update={"model": shown_path(m.spec.teacher.model, roots)})
            update["manifest"] = m.model_copy(update={"spec": m.spec.model_copy(update={"teacher": teacher})})
        return job.model_copy(update=update)

    def submit(self, req: CacheRequest) -> tuple[int, JobStatus]:
        """200 with the manifest if the cache exists, else 202 with the (new or running) job."""
        req = self.located(req)
        self.check_paths(req)
        spec, task = resolve(req, self.settings.model, self.settings.allowed_data_roots())
        key = spec.cache_key()
        manifest = self.manifest(key)
        if manifest is not None:
            return 200, self._done_status(key, manifest, self.recorded(req))
        with self.cond:
            job = self.jobs.get(key)
            if job is not None and job.state == "cancelling":
                raise JobConflict(f"job {key} is being cancelled; submit again once it is cancelled")
            if job is not None and job.state in ACTIVE:
                return 202, self._with_position(job)
            job = JobStatus(key=key, state="queued", request=self.recorded(req), submitted_at=_now())
            self._save(job)  # first: a job the store cannot record is not queued at all
            self.jobs[key] = job
            self.specs[key] = (spec, task)
            self.queue.append(key)
            self.cond.notify()
        return 202, self._with_position(job)

    def recorded(self, req: CacheRequest) -> CacheRequest:
        """The request as recorded and shown: a user file's path relative to its data root (or the folder the
        service runs in), never the host's absolute path."""
        if req.path is None:
            return req
        p = Path(req.path).expanduser().absolute()
        for root in self.settings.allowed_data_roots() or [os.getcwd()]:
            r = Path(root).expanduser().absolute()
            if p.is_relative_to(r):
                return req.model_copy(update={"path": str(p.relative_to(r))})
        return req.model_copy(update={"path": p.name})

    def located(self, req: CacheRequest) -> CacheRequest:
        """The request with its user file found: a relative (or recorded) path under the first data root (or
        the folder the service runs in) that has it."""
        if req.path is None:
            return req
        for root in self.settings.allowed_data_roots() or [os.getcwd()]:
            candidate = Path(root).expanduser() / req.path
            try:
                if candidate.exists():
                    return req.model_copy(update={"path": str(candidate)})
            except OSError:  # e.g. a name too long: the loader names the problem
                pass
        return req

    def _with_position(self, job: JobStatus) -> JobStatus:
        with self.cond:
            pos = list(self.queue).index(job.key) if job.key in self.queue else None
            job = job.model_copy(update={"position": pos})
        return self._shown(job)

    def status(self, key: str) -> JobStatus | None:
        manifest = self.manifest(key)
        job = self.jobs.get(key)
        if manifest is not None:
            return self._done_status(key, manifest, job.request if job else None)
        if job is None or job.state == "succeeded":  # its cache is gone, or is no longer a folder of ours
            return None
        return self._with_position(job)

    def cancel(self, key: str) -> JobStatus | None:
        """A queued job becomes `cancelled`; a running one `cancelling` (it stops at its next forward batch,
        then is `cancelled`). Either is recorded before the answer, so a restart does not run it again."""
        with self.cond:
            job = self.jobs.get(key)
            if job is None:
                return None
            if job.state not in ("queued", "running"):
                return self._shown(job)
            if key in self.queue:
                self._save(job.model_copy(update={"state": "cancelled"}))
                self.queue.remove(key)
                job.state = "cancelled"
            else:
                self._save(job.model_copy(update={"state": "cancelling"}))
                self.cancel_flags.add(key)
                job.state = "cancelling"
        return self._shown(job)

    def manifest(self, key: str) -> layout.Manifest | None:
        """The manifest of the cache `key`: None unless `<root>/<key>` is a real folder inside the root (no
        symlink) whose manifest names that key."""
        rel = f"{key}/{layout.MANIFEST}"
        if not self.root.exists(rel) or not self.root.is_plain(rel):
            return None
        try:
            m = layout.Manifest.model_validate_json(self.root.read_bytes(rel))
        except ValueError:
            log.warning("ignoring the unreadable manifest of %s", key)
            return None
        return m if m.key == key else None

    def list_caches(self) -> list[CacheSummary]:
        out = []
        roots = self.settings.allowed_model_roots()
        for name in self.root.list():
            if layout.is_key(name) and (m := self.manifest(name)) is not None:
                out.append(CacheSummary(key=m.key, task=m.spec.task.name, model=shown_path(m.spec.teacher.model, roots),
                                        n_rows=m.n_rows, created_at=m.created_at))
        return out

    def delete(self, key: str) -> bool:
        """Delete a cache folder and its job; never through a symlink (a linked key is not ours: False). Under the
        lock: no job for the key is queued meanwhile."""
        with self.cond:
            job = self.jobs.get(key)
            if job is not None and job.state in ACTIVE:
                raise JobConflict(f"cache {key} has a {job.state} job; cancel it first")
            if not self.root.is_plain(key):
                return False
            existed = self.root.exists(key)
            try:
                if existed:
                    # the manifest goes first so no reader ever sees a complete-looking partial folder
                    self.root.delete(f"{key}/{layout.MANIFEST}")
                    self.root.delete(key)
                self.root.delete(self._job_file(key))
            except OSError as e:
                raise StoreWriteError(f"cannot delete under the cache root: {_write_error(e)}") from e
            self.jobs.pop(key, None)
            self.unsaved.discard(key)
        return existed

    # ---- worker ------------------------------------------------------------------------------
    def encoder(self, model: str, with_head: bool, dtype: str | None = None) -> Encoder | CausalLM:
        k = (model, with_head, dtype or compute_placement()[1])
        if k not in self.encoders:
            self.encoders[k] = load_teacher(model, with_head=with_head, threads=self.settings.threads, dtype=k[2])
        return self.encoders[k]

    def _run(self) -> None:
        try:
            self.encoder(self.settings.model, False)
        except Exception as e:  # noqa: BLE001 - the worker serves other models' jobs all the same
            log.error("default model failed to load: %s", e)
        self.ready.set()
        while not self.stopping:
            try:
                self._next()
            except Exception:  # a bug in the loop itself must not end the only worker
                log.exception("worker loop error")
                time.sleep(1.0)

    def _next(self) -> None:
        """Wait (up to 1 s) for a job and run it; write records that failed before."""
        with self.cond:
            if not self.queue and not self.stopping:
                self.cond.wait(timeout=1.0)
            if self.unsaved or self.write_error:
                self._flush()
            if self.stopping or not self.queue:
                return
            key = self.queue.popleft()
            job = self.jobs[key]
            self.beat = time.monotonic()
            self._publish(job, state="running")
        self._execute(job)

    def _execute(self, job: JobStatus) -> None:
        key = job.key
        t0 = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            self.beat = time.monotonic()
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
            job.progress = Progress(rows_done=done, rows_total=total, rows_per_s=round(rate, 2),
                                    eta_s=round((total - done) / rate, 1) if rate > 0 else None, stage=stage)

        def should_stop() -> bool:  # asked before every forward batch: a sign of progress too
            self.beat = time.monotonic()
            return key in self.cancel_flags

        end: dict[str, object] = {}
        try:
            if key not in self.specs:  # restored after a restart
                self.specs[key] = resolve(self.located(job.request), self.settings.model,
                                          self.settings.allowed_data_roots())
            spec, task = self.specs[key]
            if spec.cache_key() != key:
                raise RuntimeError("the request now resolves to another key (model or data changed)")
            if compute(spec, task, self.root.url, self.settings, self.encoder, progress=progress,
                       should_stop=should_stop) is None:
                raise RuntimeError("another process holds some of this cache's shards; submit again later")
            end = {"state": "succeeded"}
        except Cancelled:
            end = {"state": "cancelled"}
        except Exception as e:  # a job failure must not kill the worker
            log.exception("job %s failed", key)
            end = {"state": "failed", "error": self.scrub(f"{type(e).__name__}: {e}")}
        finally:
            self.specs.pop(key, None)
            with self.cond:
                self.cancel_flags.discard(key)
                self._publish(job, **(end or {"state": "failed", "error": "the worker was interrupted"}))

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
