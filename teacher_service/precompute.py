"""Precompute a teacher cache: plan -> prepare -> forward -> write, a shard at a time; the manifest last.

The shard is the unit of work: its rows (Arrow), its zarr chunks, then its done-marker. A restarted job skips
shards whose marker exists, so it resumes from the last complete shard. Preparing shard k+1 (perturbation,
tokenisation) and writing shard k-1 overlap the forward of shard k. Forward batches are cut per shard, so a
shard's bytes do not depend on which pass or process computed it: resumed caches are bit-identical.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata

import numpy as np
import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.reader import sha256_bytes
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service import perturb
from robustkd.teacher_service.forward import Cancelled, Forward, Outputs
from robustkd.teacher_service.generative import TokenForward, prepare_generative
from robustkd.teacher_service.heads import LinearHead, fit_linear_probe, zero_shot_head
from robustkd.teacher_service.lm import CausalLM
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.neighbours import model_neighbours
from robustkd.teacher_service.plan import Plan, label_counts, plan, prepare_shard
from robustkd.teacher_service.store import Store, arrow_file_bytes, open_arrays, remove_stale_temps
from robustkd.teacher_service.taskdata import TaskData
from robustkd.teacher_service.verbalizer import fit_verbalizer

ProgressFn = Callable[[str, int, int], None]
SETUP_LOCK = ".setup.lock"
FEATURE_HEADS = ("linear-probe", "verbalizer")  # heads fitted on the clean train/validation features


class PrecomputeError(ValueError):
    """The request cannot produce a cache (an empty split, a model that does not match the spec)."""


def shard_rows(spec: CacheSpec, task: TaskData, p: Plan, k: int, enc: Encoder | CausalLM,
               ctx: perturb.PerturbContext) -> pa.Table:
    """Shard k's rows, tokenised as the teacher reads them (a causal LM: inside the spec's prompt)."""
    if spec.generative:
        return prepare_generative(spec, task, p, k, enc, ctx)
    if spec.teacher.family == "causal-lm":
        return prepare_shard(spec, task, p, k, lambda texts, n: enc.encode_prompts(spec.teacher.prompt, texts, n), ctx)
    return prepare_shard(spec, task, p, k, enc.tokenize, ctx)


def head_info(raw: bytes) -> dict:
    """The `info` a head file was stored with (its safetensors header metadata)."""
    size = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8:8 + size]).get("__metadata__", {}).get("info", "{}"))


def fit_head(spec: CacheSpec, task: TaskData, enc: Encoder | CausalLM, p: Plan,
             outputs: dict[int, tuple[pa.Table, Outputs]]) -> tuple[LinearHead | None, dict[str, np.ndarray], dict]:
    """(head, tensors to store, info). A linear probe is fitted on the clean train rows, C chosen on the clean
    validation rows; `outputs` must hold every shard through the validation split."""
    kind = spec.teacher.head
    if spec.generative:  # the LM's own output layer gives the targets: no head to store
        return None, {}, {"kind": "vocabulary", "note": "generative cache: per-token targets, no class head"}
    if kind == "verbalizer":
        head = fit_verbalizer(spec, enc, *clean_features(outputs, p, "validation"))
        return head, head.tensors(), head.info
    if kind == "model":
        head_mod = enc.model.classifier if hasattr(enc.model, "classifier") else enc.model.score
        tensors = {k: v.detach().float().cpu().numpy() for k, v in head_mod.state_dict().items()}
        return None, tensors, {"kind": "model"}
    if kind == "zero-shot":
        out = enc.encode_texts(list(task.label_descriptions), layers=spec.teacher.layers,
                               pooling=spec.teacher.pooling, max_length=spec.teacher.max_length)
        head = zero_shot_head(out.features.cpu().numpy())
        return head, head.tensors(), head.info
    xy = {split: clean_features(outputs, p, split) for split in ("train", "validation")}
    head = fit_linear_probe(*xy["train"], *xy["validation"], len(spec.task.label_names),
                            balanced=spec.teacher.class_weights == "balanced")
    return head, head.tensors(), head.info


def clean_features(outputs: dict[int, tuple[pa.Table, Outputs]], p: Plan, split: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the clean rows of a split, from computed shards."""
    feats, labels = [], []
    for row in p.splits[split].clean_rows():
        k, i = divmod(row, p.shard_rows)
        rows, out = outputs[k]
        feats.append(out.features[i])
        labels.append(rows.column("label")[i].as_py())
    return np.stack(feats), np.asarray(labels)


class ShardWriter:
    """Writes shards of one cache: rows file, zarr chunks, then the done-marker with their checksums."""

    def __init__(self, store: Store, spec: CacheSpec, p: Plan, hidden_size: int) -> None:
        self.store, self.plan = store, p
        names = [layout.layer_array(k) for k in spec.teacher.layers]
        self.widths = dict.fromkeys(names, hidden_size)
        self.dtypes = dict.fromkeys(names, spec.storage.activations_dtype)
        if not spec.generative:  # generative caches keep their targets in the rows file
            self.widths = {"logits": len(spec.task.label_names), **self.widths}
            self.dtypes = {"logits": spec.storage.logits_dtype, **self.dtypes}
        self.arrays: dict | None = None

    def open(self) -> None:
        self.arrays = open_arrays(self.store, self.widths, self.dtypes, self.plan.n_rows, self.plan.shard_rows)

    def done(self, k: int) -> bool:
        return self.store.exists(layout.marker_path(k)) and self.store.exists(layout.rows_path(k))

    def write(self, k: int, rows: pa.Table, targets: dict[str, np.ndarray]) -> layout.ShardRecord:
        start, stop = self.plan.bounds(k)
        raw = arrow_file_bytes(rows)
        self.store.write_bytes(layout.rows_path(k), raw)
        chunks = {}
        for name, arr in targets.items():
            self.arrays[name][start:stop] = arr.astype(self.dtypes[name])
            chunks[name] = sha256_bytes(self.store.read_bytes(layout.chunk_path(name, k)))
        rec = layout.ShardRecord(index=k, start=start, stop=stop, rows_sha256=sha256_bytes(raw),
                                 chunks_sha256=chunks)
        self.store.write_json(layout.marker_path(k), rec)
        return rec

    def records(self) -> list[layout.ShardRecord]:
        return [layout.ShardRecord.model_validate_json(self.store.read_bytes(layout.marker_path(k)))
                for k in range(self.plan.n_shards)]


@contextmanager
def file_lock(store: Store, rel: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on a local file (yields whether it was taken); on object stores a no-op that yields True:
    there workers own disjoint shards."""
    if not store.local:
        yield True
        return
    from filelock import FileLock, Timeout

    lock = FileLock(f"{store.path}/{rel}")
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _claim(store: Store, writer: ShardWriter, wanted: list[int]) -> tuple[ExitStack, list[int]]:
    """Lock the wanted shards that are not done and no other writer holds; the stack releases the locks."""
    stack = ExitStack()
    todo = []
    for k in wanted:
        if not writer.done(k) and stack.enter_context(file_lock(store, f"shards/{layout.shard_name(k)}.lock",
                                                                blocking=False)) and not writer.done(k):
            todo.append(k)
    return stack, todo


def store_head(store: Store, tensors: dict[str, np.ndarray], info: dict) -> None:
    from safetensors.numpy import save

    store.write_bytes(layout.HEAD, save(tensors, metadata={"info": json.dumps(info)}))


def load_head(store: Store, spec: CacheSpec) -> LinearHead | None:
    """The stored head (None for the model's own head, which the forward applies)."""
    from safetensors.numpy import load

    if spec.teacher.head == "model":
        return None
    tensors = load(store.read_bytes(layout.HEAD))
    if not tensors:  # a generative cache's empty head
        return None
    return LinearHead(tensors["weight"], tensors["bias"])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("robustkd", "torch", "transformers", "zarr", "pyarrow", "numpy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def perturb_context(spec: CacheSpec, task: TaskData, enc: Encoder, root: str) -> perturb.PerturbContext:
    needs = {n for name in spec.perturbations.transforms for n in perturb.get(name).needs}
    neighbours = None
    if "neighbours" in needs:
        neighbours = model_neighbours(enc.tokenizer, enc.model.get_input_embeddings().weight.detach(),
                                      spec.teacher.weights_sha256, root)
    return perturb.PerturbContext(neighbours=neighbours, domain_vocab=dict(task.domain_vocab) or None)


def check_placement(spec: CacheSpec, enc: Encoder) -> None:
    here = (enc.device.type, enc.compute_dtype)
    if here != (spec.teacher.device_type, spec.teacher.compute_dtype):
        raise PrecomputeError(f"this teacher runs on {here[0]} in {here[1]}, but the cache's spec says "
                              f"{spec.teacher.device_type} in {spec.teacher.compute_dtype}: shards would mix")


def is_complete(root: str, key: str) -> bool:
    return Store(f"{root}/{key}").exists(layout.MANIFEST)


def precompute(spec: CacheSpec, task: TaskData, enc: Encoder, root: str, *,
               progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
               shards: list[int] | None = None) -> layout.Manifest | None:
    """Write the cache for `spec` under `root/<key>` (a folder or fsspec URL); returns its manifest.

    Shards are claimed one lock each, so concurrent writers (scale-out workers given disjoint `shards`, or an
    accidental second process) never write the same shard; the call that finds every shard done writes the
    manifest. Returns None when other workers still own missing shards.
    """
    key = spec.cache_key()
    root = str(root)
    store = Store(f"{root}/{key}")
    if store.exists(layout.MANIFEST):
        return layout.Manifest.model_validate_json(store.read_bytes(layout.MANIFEST))
    check_placement(spec, enc)
    progress = progress or (lambda *a: None)
    should_stop = should_stop or (lambda: False)
    t_start = time.perf_counter()
    p = plan(spec, task)
    for split, r in p.splits.items():
        if r.stop == r.start:
            raise PrecomputeError(f"split {split!r} of task {task.name!r} is empty")
    for sub in ("", "rows", "shards"):
        store.makedirs(sub)
    if store.local:
        remove_stale_temps(store.path)
    fwd = (TokenForward if spec.generative else Forward)(spec, enc, should_stop)
    writer = ShardWriter(store, spec, p, enc.hidden_size)
    ctx = perturb_context(spec, task, enc, root)

    with ThreadPoolExecutor(2) as pool:
        def prepared(ks: list[int]) -> Iterator[tuple[int, pa.Table]]:
            """(k, rows) in order; shard k+1 is prepared while the caller runs shard k."""
            nxt = pool.submit(shard_rows, spec, task, p, ks[0], enc, ctx) if ks else None
            for i, k in enumerate(ks):
                if should_stop():
                    raise Cancelled(f"job {key} cancelled")
                rows = nxt.result()
                if i + 1 < len(ks):
                    nxt = pool.submit(shard_rows, spec, task, p, ks[i + 1], enc, ctx)
                yield k, rows

        # 1. setup, one process at a time: spec, zarr arrays, head. A linear probe needs the clean train and
        #    validation features: those shards are computed once here, kept, and written in step 2.
        t_head = time.perf_counter()
        memo: dict[int, tuple[pa.Table, Outputs]] = {}
        with file_lock(store, SETUP_LOCK):
            if store.exists(layout.SPEC):
                if CacheSpec.model_validate_json(store.read_bytes(layout.SPEC)).cache_key() != key:
                    raise PrecomputeError(f"{store.url}/{layout.SPEC} belongs to another spec; refusing to mix")
            else:
                store.write_json(layout.SPEC, spec)
            writer.open()
            if store.exists(layout.HEAD):
                fwd.head = load_head(store, spec)
            else:
                if spec.teacher.head in FEATURE_HEADS and not spec.generative:
                    for k, rows in prepared(p.shards_through("validation")):
                        memo[k] = (rows, fwd.run(rows))
                        progress("forward (train, validation)", sum(r.num_rows for r, _ in memo.values()), p.n_rows)
                fwd.head, tensors, info = fit_head(spec, task, enc, p, memo)
                store_head(store, tensors, info)
        head_s = time.perf_counter() - t_head

        # 2. the shards this call claims: forward (unless memoised), head, write; a write overlaps the next forward
        t_shards = time.perf_counter()
        wanted = sorted(set(range(p.n_shards) if shards is None else shards))
        stack, todo = _claim(store, writer, wanted)
        rows_done = sum(p.bounds(k)[1] - p.bounds(k)[0] for k in range(p.n_shards) if k not in todo and writer.done(k))
        new_rows = 0
        pending: Future | None = None
        with stack:
            memoised = [(k, memo[k][0]) for k in todo if k in memo]
            for k, rows in itertools.chain(memoised, prepared([k for k in todo if k not in memo])):
                if should_stop():
                    raise Cancelled(f"job {key} cancelled")
                out = memo.pop(k)[1] if k in memo else fwd.run(rows)
                targets, rows = fwd.targets(out), fwd.with_columns(rows, out)
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write, k, rows, targets)
                rows_done += rows.num_rows
                new_rows += rows.num_rows
                progress("forward and write", rows_done, p.n_rows)
            if pending is not None:
                pending.result()
    shards_s = time.perf_counter() - t_shards

    # 3. the manifest, last, once every shard of every worker is done
    with file_lock(store, SETUP_LOCK):
        if store.exists(layout.MANIFEST):
            return layout.Manifest.model_validate_json(store.read_bytes(layout.MANIFEST))
        if not all(writer.done(k) for k in range(p.n_shards)):
            return None
        timings = {"head_s": round(head_s, 3), "shards_s": round(shards_s, 3), "forward_s": round(fwd.seconds, 3),
                   "total_s": round(time.perf_counter() - t_start, 3),
                   "rows_per_s": round(new_rows / (head_s + shards_s), 2) if new_rows else 0.0, **fwd.timings()}
        head_raw = store.read_bytes(layout.HEAD)
        manifest = layout.Manifest(
            key=key, complete=True, format_version=spec.format_version, spec=spec, n_rows=p.n_rows,
            shard_rows=p.shard_rows, n_shards=p.n_shards, hidden_size=enc.hidden_size,
            num_labels=len(spec.task.label_names), label_names=list(spec.task.label_names), splits=p.splits,
            label_counts=label_counts(task, p, len(spec.task.label_names)), notes=list(task.notes),
            arrays={k: layout.ArrayInfo(shape=[p.n_rows, w], dtype=writer.dtypes[k]) for k, w in writer.widths.items()},
            shards=writer.records(), head_sha256=sha256_bytes(head_raw), head_info=head_info(head_raw),
            vocab_size=enc.vocab_size if isinstance(enc, CausalLM) else None, versions=versions(),
            timings=timings, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        store.write_json(layout.MANIFEST, manifest)
    progress("done", p.n_rows, p.n_rows)
    return manifest
