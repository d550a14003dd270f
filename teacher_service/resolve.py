"""Resolve a cache request into its full spec (content hashes included) and the task's rows.

Resolving is on the path of every `POST /v1/caches`, also for caches that exist: the task's rows and the
model's weights hash are memoised (built-in data is pinned; user files by path, size and mtime), and
concurrent identical requests resolve once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from robustkd.shared.layout import imbalanced
from robustkd.shared.models import model_family, pretrained_args, weights_sha256
from robustkd.shared.schemas import CacheRequest
from robustkd.shared.spec import CacheSpec, PerturbationSpec, StorageSpec, TaskSpec, TeacherSpec
from robustkd.teacher_service import perturb
from robustkd.teacher_service.builtin_tasks import load_task, task_kind
from robustkd.teacher_service.general_prompts import with_general_prompts
from robustkd.teacher_service.generative_tasks import GENERATIVE_TASKS, load_generative_file, load_generative_task
from robustkd.teacher_service.lm_resolve import LMRequestError, general_spec, sparse_spec, teacher_fields
from robustkd.teacher_service.model import ModelError, check_layers, compute_placement, num_layers, resolve_model_path
from robustkd.teacher_service.settings import shown_path
from robustkd.teacher_service.taskdata import TaskData, TaskError, rows_sha256
from robustkd.teacher_service.user_file import load_user_file

T = TypeVar("T")
_memo: dict[tuple, object] = {}
_memo_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}
MEMO_MAX = 64


class RequestError(ValueError):
    """A request names something unusable; the message names the field."""


def memoised(key: tuple, compute: Callable[[], T]) -> T:
    """`compute()` once per key across threads (single flight); results are immutable."""
    with _memo_lock:
        if key in _memo:
            return _memo[key]  # type: ignore[return-value]
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _memo_lock:
            if key in _memo:
                return _memo[key]  # type: ignore[return-value]
        value = compute()
        with _memo_lock:
            if len(_memo) >= MEMO_MAX:
                _memo.pop(next(iter(_memo)))
            _memo[key] = value
            _key_locks.pop(key, None)
        return value


def default_layers(n: int) -> tuple[int, ...]:
    """Every second layer and the last: e.g. (2, 4, 6) for a 6-layer model."""
    return tuple(sorted({*range(2, n + 1, 2), n}))


def default_transforms(task: TaskData) -> tuple[str, ...]:
    domain = "domain_swap" if task.domain_vocab else "numeric_jitter"
    return ("keyboard_typo", "word_dropout", "embedding_neighbour", domain)


def _file_stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path,)
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def default_head(req: CacheRequest, family: str) -> str:
    """`head: auto`. The zero-shot head (label-description prototypes) for an encoder on a built-in text task,
    whose label descriptions were written for it; the linear probe elsewhere (tabular rows, user files whose labels
    are bare values, causal LMs). Chosen on validation figures: docs/training.md#the-teacher-head."""
    if req.head != "auto":
        return req.head
    if is_generative(req):
        return "model"
    return "zero-shot" if family == "encoder" and task_kind(req.task) == "text" else "linear-probe"


def is_generative(req: CacheRequest) -> bool:
    """Generative tasks: the built-in ones, and user files with a response column."""
    return req.task in GENERATIVE_TASKS or (req.task == "file" and req.response_column is not None)


def load_request_task(req: CacheRequest) -> tuple[TaskData, str]:
    """The request's task and its rows hash, memoised."""
    if is_generative(req) and (req.unlabelled or req.unlabelled_domains):
        raise RequestError("unlabelled, unlabelled_domains: only for classification tasks (a generative task's "
                           "unlabelled rows are the unrelated prompts: general_prompts)")
    if req.general_prompts and not is_generative(req):
        raise RequestError("general_prompts: only for generative tasks (the teacher answers them in its own words; "
                           "a classification cache holds no answers)")
    if req.task == "file" and req.response_column is not None:
        missing = [f for f in ("path", "prompt_column", "domain_column", "id_domains", "ood_domains")
                   if getattr(req, f) in (None, [])]
        if missing:
            raise RequestError(f"a generative task 'file' needs {', '.join(missing)}")
        key = ("genfile", _file_stamp(req.path), req.prompt_column, req.response_column, req.domain_column,
               tuple(req.id_domains), tuple(req.ood_domains), req.limit, req.split_seed)

        def load() -> TaskData:
            return load_generative_file(req.path, prompt_column=req.prompt_column, response_column=req.response_column,
                                        domain_column=req.domain_column, id_domains=req.id_domains,
                                        ood_domains=req.ood_domains, limit=req.limit, seed=req.split_seed)
    elif req.task in GENERATIVE_TASKS:
        key = ("generative", req.task, req.limit, req.split_seed)

        def load() -> TaskData:
            return load_generative_task(req.task, limit=req.limit, seed=req.split_seed)
    elif req.task == "file":
        missing = [f for f in ("path", "label_column", "domain_column", "id_domains", "ood_domains")
                   if getattr(req, f) in (None, [])]
        if missing:
            raise RequestError(f"task 'file' needs {', '.join(missing)}")
        if req.unlabelled:
            raise RequestError("unlabelled: for user files name the domains with unlabelled_domains")
        key = ("file", _file_stamp(req.path), req.label_column, req.domain_column, tuple(req.id_domains),
               tuple(req.ood_domains), tuple(req.unlabelled_domains or ()), req.text_column,
               tuple(req.feature_columns or ()), req.limit, req.split_seed, req.drop_missing_labels)

        def load() -> TaskData:
            return load_user_file(req.path, label_column=req.label_column, domain_column=req.domain_column,
                                  id_domains=req.id_domains, ood_domains=req.ood_domains,
                                  unlabelled_domains=req.unlabelled_domains or (), text_column=req.text_column,
                                  feature_columns=req.feature_columns, limit=req.limit, seed=req.split_seed,
                                  drop_missing_labels=req.drop_missing_labels)
    else:
        if req.unlabelled_domains:
            raise RequestError("unlabelled_domains: only for user files (built-in tasks take unlabelled)")
        key = ("builtin", req.task, req.limit, req.split_seed, req.unlabelled)

        def load() -> TaskData:
            return load_task(req.task, limit=req.limit, seed=req.split_seed, unlabelled=req.unlabelled)

    def load_and_hash() -> tuple[TaskData, str]:
        task = with_general_prompts(load(), req.limit) if req.general_prompts else load()
        return task, rows_sha256(task)

    key = (*key, req.general_prompts)

    try:
        return memoised(key, load_and_hash)
    except TaskError as e:
        raise RequestError(str(e)) from None
    except OSError as e:  # e.g. a file name too long to look up
        raise RequestError(f"path: cannot read {Path(req.path or '').name[:80]!r} ({e.strerror or e})") from None


def check_transforms(transforms: tuple[str, ...], task: TaskData, variants: int) -> None:
    for name in transforms:
        try:
            info = perturb.get(name)
        except perturb.PerturbationError as e:
            raise RequestError(f"transforms: {e}") from None
        if "domain_vocab" in info.needs and not task.domain_vocab:
            raise RequestError(f"transforms: {name!r} needs a task with a domain vocabulary; "
                               f"task {task.name!r} has none")
    if variants and not transforms:
        raise RequestError("transforms: empty list with variants > 0")


def resolve_model(req: CacheRequest, default_model: str) -> tuple[Path, int, int | None]:
    """The model (folder or GGUF file), its number of layers and vocabulary size: checked before any data is read."""
    from transformers import AutoConfig

    try:
        path = resolve_model_path(req.model or default_model)
        folder, kwargs = pretrained_args(path)
        config = AutoConfig.from_pretrained(folder, **kwargs)
        n = num_layers(config)
        check_layers(tuple(req.layers or ()), n)
    except ModelError as e:
        raise RequestError(str(e)) from None
    except (OSError, ValueError) as e:
        raise RequestError(f"model: {req.model or default_model} cannot be used ({type(e).__name__}: {e})") from None
    return path, n, getattr(config, "vocab_size", None)


def probe_class_weights(req: CacheRequest, task: TaskData) -> str:
    """`balanced` when asked, or when `auto` and the train split is imbalanced (`layout.imbalanced`)."""
    if req.class_weights != "auto":
        return req.class_weights
    labels = [e.label for e in task.split("train")]
    return "balanced" if imbalanced([labels.count(c) for c in range(len(task.label_names))]) else "none"


def resolve(req: CacheRequest, default_model: str, data_roots: list[str] | None = None,
            placement: tuple[str, str] | None = None) -> tuple[CacheSpec, TaskData]:
    """Validate a request and turn it into the full spec (hashes included) and the task's rows. A user file is
    recorded by its path relative to its data root (else its name): its content hash is in the key. `placement`:
    the (device type, compute dtype) the teacher will run with (default: this machine's, `compute_placement`)."""
    path, n, vocab_size = resolve_model(req, default_model)
    family = model_family(path)
    if is_generative(req) and family != "causal-lm":  # before the task's rows are read
        raise RequestError(f"model: task {req.task!r} is generative and needs a causal LM; {path} is an encoder")
    task, rows_hash = load_request_task(req)
    req = req.model_copy(update={"head": default_head(req, family)})
    layers = tuple(req.layers) if req.layers else default_layers(n)
    transforms = tuple(req.transforms) if req.transforms else default_transforms(task)
    check_transforms(transforms, task, req.variants)
    device_type, compute_dtype = placement or compute_placement()
    if req.compute_dtype != "auto":
        compute_dtype = req.compute_dtype
    digest = weights_sha256(path)
    try:
        lm = teacher_fields(req, task, family, path, digest, is_generative(req))
        sparse = sparse_spec(req, vocab_size or 0, is_generative(req))
        general = general_spec(req, path, digest)
    except LMRequestError as e:
        raise RequestError(str(e)) from None
    probe = lm.get("head", req.head) == "linear-probe" and sparse is None
    class_weights = probe_class_weights(req, task) if probe else "none"
    try:
        spec = CacheSpec(
            teacher=TeacherSpec(**{"model": str(path), "weights_sha256": digest, "head": req.head,
                                   "class_weights": class_weights, "layers": layers, "max_length": req.max_length,
                                   "device_type": device_type, "compute_dtype": compute_dtype, **lm}),
            task=TaskSpec(name=task.name, rows_sha256=rows_hash, label_names=task.label_names,
                          source=shown_path(req.path, data_roots) if req.path else None,
                          limit=req.limit, seed=req.split_seed),
            perturbations=PerturbationSpec(transforms=transforms, severities=tuple(req.severities),
                                           variants=req.variants, seed=req.perturb_seed,
                                           heldout_transforms=perturb.heldout_transforms(transforms),
                                           # unrelated prompts are distilled on as the teacher answered them
                                           **({"splits": ("train", "validation")} if general else {})),
            storage=StorageSpec(shard_rows=req.shard_rows),
            sparse=sparse,
            general=general,
        )
    except ValueError as e:
        raise RequestError(str(e)) from None
    return spec, task
