"""Precompute without the service: what `robustkd precompute`, `bench` and `demo` call (this process, or Ray)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec

from robustkd.shared.layout import Manifest
from robustkd.shared.schemas import CacheRequest
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.lm import CausalLM, load_teacher
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.plan import plan
from robustkd.teacher_service.precompute import PrecomputeError, ProgressFn, is_complete, precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.settings import Settings
from robustkd.teacher_service.store import Store
from robustkd.teacher_service.taskdata import TaskData


@dataclass
class LocalCache:
    key: str
    location: str
    manifest: Manifest | None  # None when other workers still own missing shards
    existed: bool


def with_engine(settings: Settings, engine: str | None, ray_address: str | None) -> Settings:
    """`settings` with the engine and Ray address given on the command line."""
    if engine not in (None, "local", "ray"):
        raise ValueError(f"engine: must be local or ray, got {engine!r}")
    given = {"engine": engine, "ray_address": ray_address}
    return settings.model_copy(update={k: v for k, v in given.items() if v is not None})


def ray_engine():  # noqa: ANN201 - the module teacher_service.ray_engine
    """The ray engine; PrecomputeError when Ray is not installed."""
    if find_spec("ray") is None:
        raise PrecomputeError("engine: ray needs Ray, which is not installed: pip install 'robustkd[ray]'")
    from robustkd.teacher_service import ray_engine as engine

    return engine


def worker_slot(worker: int | None, workers: int | None, env: Mapping[str, str]) -> tuple[int, int]:
    """(index, count) of this process in a static scale-out: `worker` and `workers` when given, else the index a
    Kubernetes Indexed Job (JOB_COMPLETION_INDEX, the count then given as `workers`) or a SLURM job array
    (SLURM_ARRAY_TASK_ID, from SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP; the count from
    SLURM_ARRAY_TASK_COUNT unless given) sets, else worker 0. Raises ValueError naming what is missing."""
    def number(name: str, default: int = 0) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            raise ValueError(f"{name}={env[name]!r} is not a whole number") from None

    if worker is not None:
        return worker, workers or 1
    if "JOB_COMPLETION_INDEX" in env:
        if workers is None:
            raise ValueError("workers: JOB_COMPLETION_INDEX gives this pod's index; give the Job's completions "
                             "as --workers N")
        return number("JOB_COMPLETION_INDEX"), workers
    if "SLURM_ARRAY_TASK_ID" in env:
        index = (number("SLURM_ARRAY_TASK_ID") - number("SLURM_ARRAY_TASK_MIN")) // number("SLURM_ARRAY_TASK_STEP", 1)
        if workers is None and "SLURM_ARRAY_TASK_COUNT" not in env:
            raise ValueError("workers: SLURM_ARRAY_TASK_COUNT is not set; give the array's size as --workers N")
        return index, workers or number("SLURM_ARRAY_TASK_COUNT")
    return 0, workers or 1


def precompute_local(req: CacheRequest, settings: Settings, *, progress: ProgressFn | None = None,
                     worker: int = 0, workers: int | None = None) -> LocalCache:
    """Resolve `req` and write its cache under `settings.cache_root`, or find it complete.

    Local engine: with `workers` > 1 this process writes shards k with k % workers == worker; whichever worker
    finishes the set writes the manifest. Ray engine (`settings.engine`): the missing shards go to Ray tasks, `workers`
    at once on a Ray started here. Raises RequestError, ModelError or PrecomputeError naming the problem.
    """
    ray = settings.engine == "ray"
    if workers is not None and workers < 1:
        raise ValueError(f"workers: must be at least 1, got {workers}")
    if ray and worker:
        raise ValueError("worker: a static scale-out index is for the local engine; Ray places the shards itself")
    if not ray and not 0 <= worker < (workers or 1):
        raise ValueError(f"worker: must be in 0..{(workers or 1) - 1}, got {worker}")
    placement = None
    if ray:  # the teacher runs where Ray's workers are: on GPUs when the cluster has them
        engine = ray_engine()
        engine.connect(settings.ray_address, workers, settings.threads or 1)
        placement = engine.cluster_placement()
    spec, task = resolve(req, settings.model, placement=placement)
    key = spec.cache_key()
    root = settings.cache_root.rstrip("/")
    location = f"{root}/{key}"
    if is_complete(root, key):
        from robustkd.shared.layout import MANIFEST

        return LocalCache(key, location, Manifest.model_validate_json(Store(location).read_bytes(MANIFEST)), True)
    shards = None
    if not ray and workers and workers > 1:
        shards = list(range(worker, plan(spec, task).n_shards, workers))
    m = compute(spec, task, root, settings, lambda model, head, dtype: load_teacher(
                    model, with_head=head, threads=settings.threads, dtype=dtype),
                progress=progress, workers=workers, shards=shards)
    return LocalCache(key, location, m, False)


def compute(spec: CacheSpec, task: TaskData, root: str, settings: Settings,
            teacher: Callable[[str, bool, str], Encoder | CausalLM], *, progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None, workers: int | None = None,
            shards: list[int] | None = None) -> Manifest | None:
    """The cache of `spec` under `root`, written by `settings.engine`: in this process, with the teacher that
    `teacher(model, with_head, compute dtype)` gives, or by Ray tasks (`workers` at once on a Ray started here)."""
    if settings.engine == "ray":
        return ray_engine().precompute_ray(spec, task, root, address=settings.ray_address, workers=workers,
                                           threads=settings.threads, progress=progress, should_stop=should_stop)
    enc = teacher(spec.teacher.model, spec.teacher.head == "model" and spec.teacher.family == "encoder",
                  spec.teacher.compute_dtype)
    return precompute(spec, task, enc, root, progress=progress, should_stop=should_stop, shards=shards)
