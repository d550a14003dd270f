"""Precompute on Ray: a cache's missing shards as Ray tasks, each worker process holding the teacher once.

Ray Core tasks, not Ray Data: the shard is already the unit of work, with its own write protocol (a lock per
shard, its zarr chunks, its done-marker, the manifest last) and forward batches cut per shard so its bytes do not
depend on who computes it; Ray Data would re-batch the rows and write through its own sinks. A task per shard
lets Ray place it (`num_gpus=1` when the spec's teacher runs on CUDA, else `threads` CPUs) and run it again
when its worker dies (`max_retries`). The driver holds no model; a worker process loads the teacher for its
first task and keeps it, with the cache's plan, for the tasks after (`_writer`).

The driver runs the phases of `CacheWriter` as tasks: the shards a feature head is fitted on, forwarded in
parallel; one `setup` (spec.json, arrays, head); a task per missing shard (claim, forward, write); `finish`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray

from robustkd.shared import layout
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.forward import Cancelled
from robustkd.teacher_service.head_fit import head_shards
from robustkd.teacher_service.plan import plan as make_plan
from robustkd.teacher_service.precompute import CacheWriter, ProgressFn, complete_manifest, run_timings
from robustkd.teacher_service.store import Store
from robustkd.teacher_service.taskdata import TaskData

MAX_RETRIES = 3  # a shard whose worker died (kill -9, out of memory, a lost node) is run again this often


@dataclass(frozen=True)
class Job:
    """What every task of one cache needs; put in Ray's object store once."""

    spec: CacheSpec
    task: TaskData
    root: str
    threads: int


_HELD: dict[str, CacheWriter] = {}  # this worker process's writer of the cache it works on, with its teacher


def _writer(job: Job) -> CacheWriter:
    """This process's CacheWriter for the job's cache, planned; the teacher is loaded by the first task only."""
    from robustkd.teacher_service.lm import load_teacher

    w = _HELD.get("writer")
    if w is None or (w.key, w.root) != (job.spec.cache_key(), job.root):
        teacher = job.spec.teacher
        enc = w.enc if w is not None and w.spec.teacher == teacher else load_teacher(
            teacher.model, with_head=teacher.head == "model" and teacher.family == "encoder",
            device=teacher.device_type, threads=job.threads, dtype=teacher.compute_dtype)
        if w is not None:
            w.pool.shutdown()
        w = CacheWriter(job.spec, job.task, enc, job.root)
        w.plan()
        _HELD["writer"] = w
    return w


@ray.remote(max_retries=MAX_RETRIES, num_returns=2)
def forward_shard(job: Job, k: int):  # noqa: ANN201 - ((rows, outputs), forward seconds)
    """Shard k prepared and forwarded, for the head to be fitted on; written later by `write_shard`."""
    w = _writer(job)
    t0 = w.fwd.seconds
    rows = w.rows_of(k)
    return (rows, w.fwd.run(rows)), w.fwd.seconds - t0


@ray.remote(max_retries=MAX_RETRIES)
def setup(job: Job, ks: list[int], *forwarded) -> None:  # noqa: ANN002 - (rows, outputs) of shards ks
    w = _writer(job)
    w.setup(lambda _: dict(zip(ks, forwarded, strict=True)))
    w.memo.clear()  # those shards are written by their own tasks


@ray.remote(max_retries=MAX_RETRIES)
def write_shard(job: Job, k: int, forwarded=None) -> tuple[int, float]:  # noqa: ANN001
    """Shard k claimed, forwarded (unless `forwarded` already holds its rows and outputs) and written:
    (rows written, forward seconds); (0, 0) when it is done or another writer holds it."""
    w = _writer(job)
    if w.files.arrays is None:
        w.setup()  # setup has run: this finds spec.json and the head, and opens the arrays
    t0 = w.fwd.seconds
    stack, todo = w.claim([k])
    with stack:
        if not todo:
            return 0, 0.0
        if forwarded is not None:
            w.memo[k] = forwarded
        rows, targets = w.forward(k, forwarded[0] if forwarded is not None else w.rows_of(k))
        w.write_shard(k, rows, targets)
    return rows.num_rows, w.fwd.seconds - t0


@ray.remote(max_retries=MAX_RETRIES)
def finish(job: Job, timings: dict[str, float]) -> layout.Manifest | None:
    return _writer(job).finish(timings)


def connect(address: str | None, workers: int | None, threads: int) -> None:
    """Join the Ray cluster at `address` (default: RAY_ADDRESS), else start one here with `workers` x `threads`
    CPUs (default: every CPU). A Ray this process has joined already is used as it is."""
    if ray.is_initialized():
        return
    joining = address or os.environ.get("RAY_ADDRESS")
    if joining and workers:
        raise ValueError("workers: a Ray cluster's own resources set how many shards run at once; --workers sizes "
                         "a Ray started here")
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             **({"num_cpus": workers * threads} if workers else {}))


def cluster_placement() -> tuple[str, str]:
    """(device type, compute dtype) the teacher runs with on this cluster's workers: a GPU each where it has GPUs."""
    return ("cuda", "bfloat16") if ray.cluster_resources().get("GPU", 0) >= 1 else ("cpu", "float32")


def run_tasks(refs: list, should_stop: Callable[[], bool], done: Callable[[object], None]) -> None:
    """Wait for the tasks, calling `done` with each result as it comes; on `should_stop` the rest are cancelled
    and Cancelled is raised."""
    while refs:
        ready, refs = ray.wait(refs, num_returns=1, timeout=0.5)
        for ref in ready:
            done(get(ref))
        if should_stop():
            for ref in refs:
                ray.cancel(ref)
            raise Cancelled("cancelled")


def get(ref):  # noqa: ANN001, ANN201
    """A task's result; a task's own exception (a PrecomputeError, say) is raised as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, Exception):
            raise e.cause from None
        raise


def precompute_ray(spec: CacheSpec, task: TaskData, root: str, *, address: str | None = None,
                   workers: int | None = None, threads: int | None = None, progress: ProgressFn | None = None,
                   should_stop: Callable[[], bool] | None = None) -> layout.Manifest | None:
    """Write the cache for `spec` under `root/<key>` with Ray tasks; the same bytes as `precompute`.

    `workers` x `threads` CPUs for a Ray started here, a shard task taking `threads` of them (or a GPU when the
    spec's teacher runs on CUDA). Returns None when processes outside this run still hold some shards.
    """
    root, threads = str(root), threads or 1
    done_manifest = complete_manifest(root, spec.cache_key())
    if done_manifest is not None:
        return done_manifest
    progress, should_stop = progress or (lambda *a: None), should_stop or (lambda: False)
    t_start = time.perf_counter()
    connect(address, workers, threads)
    t0 = time.perf_counter()
    p = make_plan(spec, task)
    store = Store(f"{root}/{spec.cache_key()}")
    job = ray.put(Job(spec, task, root, threads))
    place = {"num_gpus": 1} if spec.teacher.device_type == "cuda" else {"num_cpus": threads}
    stats = {"forward_s": 0.0, "new_rows": 0}

    # 1. setup: the shards a head is fitted on are forwarded in parallel, then one task fits and stores it
    ks = [] if store.exists(layout.HEAD) else head_shards(spec, p)
    forwarded = {k: forward_shard.options(**place).remote(job, k) for k in ks}
    run_tasks([setup.options(**place).remote(job, ks, *(forwarded[k][0] for k in ks))], should_stop, lambda _: None)
    stats["forward_s"] += sum(get([forwarded[k][1] for k in ks]))
    head_s = time.perf_counter() - t0

    # 2. a task per missing shard: claim, forward (unless forwarded in 1.), write
    todo = [k for k in range(p.n_shards) if not store.exists(layout.marker_path(k))]
    rows_done = p.n_rows - sum(p.bounds(k)[1] - p.bounds(k)[0] for k in todo)

    def written(result: tuple[int, float]) -> None:
        nonlocal rows_done
        rows_done += result[0]
        stats["new_rows"] += result[0]
        stats["forward_s"] += result[1]
        progress("forward and write", rows_done, p.n_rows)

    run_tasks([write_shard.options(**place).remote(job, k, forwarded[k][0] if k in forwarded else None) for k in todo],
              should_stop, written)
    shards_s = time.perf_counter() - t0 - head_s

    # 3. the manifest, last, by whoever finds every shard done
    manifest = get(finish.options(**place).remote(job, run_timings(
        head_s, shards_s, stats["forward_s"], time.perf_counter() - t_start, stats["new_rows"])))
    if manifest is not None:
        progress("done", p.n_rows, p.n_rows)
    return manifest
