"""Precompute in this process (no service): what `robustkd precompute`, `bench` and `demo` call."""

from __future__ import annotations

from dataclasses import dataclass

from robustkd.shared.layout import Manifest
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.lm import load_teacher
from robustkd.teacher_service.plan import plan
from robustkd.teacher_service.precompute import ProgressFn, is_complete, precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.settings import Settings
from robustkd.teacher_service.store import Store


@dataclass
class LocalCache:
    key: str
    location: str
    manifest: Manifest | None  # None when other workers still own missing shards
    existed: bool


def precompute_local(req: CacheRequest, settings: Settings, *, progress: ProgressFn | None = None,
                     worker: int = 0, workers: int = 1) -> LocalCache:
    """Resolve `req` and write its cache under `settings.cache_root`, or find it complete.

    With `workers` > 1 this process writes shards k with k % workers == worker; whichever worker finishes the
    set writes the manifest. Raises RequestError, ModelError or PrecomputeError naming the problem.
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker: must be in 0..{workers - 1}, got {worker}")
    spec, task = resolve(req, settings.model)
    key = spec.cache_key()
    root = settings.cache_root.rstrip("/")
    location = f"{root}/{key}"
    if is_complete(root, key):
        from robustkd.shared.layout import MANIFEST

        return LocalCache(key, location, Manifest.model_validate_json(Store(location).read_bytes(MANIFEST)), True)
    enc = load_teacher(spec.teacher.model, with_head=spec.teacher.head == "model" and spec.teacher.family == "encoder",
                       threads=settings.threads)
    shards = None
    if workers > 1:
        shards = list(range(worker, plan(spec, task).n_shards, workers))
    m = precompute(spec, task, enc, root, progress=progress, shards=shards)
    return LocalCache(key, location, m, False)
