"""Precompute a teacher cache: resolve a request into a spec, perturb, run the teacher, write shards.

The shard is the unit of work: its rows (Arrow), its zarr chunks, then its done-marker. A restarted job
skips shards whose marker exists, so it resumes from the last complete shard. `manifest.json` is written
last. Preparing shard k+1 (perturbation, tokenisation) and writing shard k-1 overlap the forward of shard k.
"""

from __future__ import annotations

import fcntl
import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

from shared import layout
from shared.schemas import CacheRequest
from shared.spec import CacheSpec, PerturbationSpec, StorageSpec, TaskSpec, TeacherSpec, weights_sha256
from teacher_service import perturb
from teacher_service.heads import LinearHead, fit_linear_probe, zero_shot_head
from teacher_service.model import Encoder, ModelError, check_layers, num_layers, resolve_model_path
from teacher_service.tasks import TaskData, TaskError, load_task, load_user_file, rows_sha256

ProgressFn = Callable[[str, int, int], None]
TOKENS_PER_BATCH = 8192  # forward batches are cut by padded tokens, after sorting by length


class RequestError(ValueError):
    """A request names something unusable; the message names the field."""


class Cancelled(RuntimeError):
    pass


def default_layers(n: int) -> tuple[int, ...]:
    """Every second layer and the last: e.g. (2, 4, 6) for a 6-layer model."""
    return tuple(sorted({*range(2, n + 1, 2), n}))


def default_transforms(task: TaskData) -> tuple[str, ...]:
    domain = "domain_swap" if task.domain_vocab else "numeric_jitter"
    return ("keyboard_typo", "word_dropout", "embedding_neighbour", domain)


def load_request_task(req: CacheRequest) -> TaskData:
    if req.task == "file":
        missing = [f for f in ("path", "label_column", "domain_column", "id_domains", "ood_domains")
                   if getattr(req, f) in (None, [])]
        if missing:
            raise RequestError(f"task 'file' needs {', '.join(missing)}")
        return load_user_file(req.path, label_column=req.label_column, domain_column=req.domain_column,
                              id_domains=req.id_domains, ood_domains=req.ood_domains,
                              text_column=req.text_column, feature_columns=req.feature_columns,
                              limit=req.limit, seed=req.split_seed)
    return load_task(req.task, limit=req.limit, seed=req.split_seed)


def resolve(req: CacheRequest, default_model: str) -> tuple[CacheSpec, TaskData]:
    """Validate a request and turn it into the full spec (hashes included) and the task's rows."""
    from transformers import AutoConfig

    try:
        path = resolve_model_path(req.model or default_model)
        n = num_layers(AutoConfig.from_pretrained(str(path)))
        layers = tuple(req.layers) if req.layers else default_layers(n)
        check_layers(layers, n)
        task = load_request_task(req)
    except (ModelError, TaskError) as e:
        raise RequestError(str(e)) from None
    transforms = tuple(req.transforms) if req.transforms else default_transforms(task)
    for name in transforms:
        try:
            info = perturb.get(name)
        except perturb.PerturbationError as e:
            raise RequestError(f"transforms: {e}") from None
        if "domain_vocab" in info.needs and not task.domain_vocab:
            raise RequestError(f"transforms: {name!r} needs a task with a domain vocabulary; "
                               f"task {task.name!r} has none")
    if req.variants and not transforms:
        raise RequestError("transforms: empty list with variants > 0")
    try:
        spec = CacheSpec(
            teacher=TeacherSpec(model=str(path), weights_sha256=weights_sha256(path), head=req.head,
                                layers=layers, pooling=req.pooling, max_length=req.max_length),
            task=TaskSpec(name=task.name, rows_sha256=rows_sha256(task), label_names=task.label_names,
                          source=req.path, limit=req.limit, seed=req.split_seed),
            perturbations=PerturbationSpec(transforms=transforms, severities=tuple(req.severities),
                                           variants=req.variants, seed=req.perturb_seed),
            storage=StorageSpec(shard_rows=req.shard_rows),
        )
    except ValueError as e:
        raise RequestError(str(e)) from None
    return spec, task


@dataclass(frozen=True)
class RowRef:
    example: int   # index into task.examples
    variant: int   # 0 = clean


def plan(spec: CacheSpec, task: TaskData) -> tuple[list[RowRef], dict[str, layout.SplitRange]]:
    """Cache row order: splits in order; in perturbed splits each clean row is followed by its variants."""
    refs: list[RowRef] = []
    ranges: dict[str, layout.SplitRange] = {}
    index = {id(e): i for i, e in enumerate(task.examples)}
    for split in ("train", "validation", "test", "ood_test"):
        v = spec.perturbations.variants if split in spec.perturbations.splits else 0
        start = len(refs)
        for ex in task.split(split):
            refs.extend(RowRef(index[id(ex)], j) for j in range(v + 1))
        ranges[split] = layout.SplitRange(start=start, stop=len(refs), group_size=v + 1)
    return refs, ranges


def variant_text(spec: CacheSpec, source_id: str, text: str, variant: int,
                 ctx: perturb.PerturbContext) -> tuple[str, str, int]:
    """(text, transform, severity) of one variant; reproducible from (seed, source_id, variant) alone."""
    p = spec.perturbations
    rng = perturb.transform_rng(p.seed, source_id, "recipe", variant)
    name = rng.choice(p.transforms)
    severity = rng.choice(p.severities)
    out = perturb.apply(name, text, seed=p.seed, example_id=source_id, severity=severity, variant=variant,
                        ctx=ctx)
    return out, name, severity


def perturb_context(spec: CacheSpec, task: TaskData, enc: Encoder) -> perturb.PerturbContext:
    needs = {n for name in spec.perturbations.transforms for n in perturb.get(name).needs}
    neighbours = None
    if "neighbours" in needs:
        neighbours = perturb.build_neighbours(enc.tokenizer, enc.model.get_input_embeddings().weight.detach())
    return perturb.PerturbContext(neighbours=neighbours, domain_vocab=dict(task.domain_vocab) or None)


def prepare_shard(spec: CacheSpec, task: TaskData, refs: list[RowRef], start: int, stop: int,
                  enc: Encoder, ctx: perturb.PerturbContext) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in layout.ROWS_SCHEMA}
    for row in range(start, stop):
        ref = refs[row]
        ex = task.examples[ref.example]
        if ref.variant == 0:
            text, name, sev = ex.text, layout.CLEAN, 0
        else:
            text, name, sev = variant_text(spec, ex.source_id, ex.text, ref.variant, ctx)
        cols["example_id"].append(row)
        cols["source_id"].append(ex.source_id)
        cols["split"].append(ex.split)
        cols["domain"].append(ex.domain)
        cols["perturbation"].append(name)
        cols["severity"].append(sev)
        cols["variant"].append(ref.variant)
        cols["parent_id"].append(row - ref.variant)
        cols["text"].append(text)
        cols["label"].append(ex.label)
    cols["input_ids"] = enc.tokenize(cols["text"], spec.teacher.max_length)
    return pa.table(cols, schema=layout.ROWS_SCHEMA)


def length_batches(lengths: list[int], tokens: int = TOKENS_PER_BATCH) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class Outputs:
    """The teacher's raw outputs for the rows of one shard, in row order."""

    features: np.ndarray               # [n, D] pooled last layer (the head's input)
    layers: dict[int, np.ndarray]      # layer -> [n, D]
    logits: np.ndarray | None          # [n, C] from the model's own head, if it has one


class Forward:
    """Runs the teacher over a shard's rows in length-sorted batches.

    Batches are cut per shard, so a shard's outputs do not depend on which pass computed them (the head-fit
    pass or a resumed job): resumed caches are bit-identical to uninterrupted ones.
    """

    def __init__(self, spec: CacheSpec, enc: Encoder) -> None:
        self.spec, self.enc = spec, enc
        self.layers = spec.teacher.layers
        self.head: LinearHead | None = None
        self.seconds = 0.0

    def run(self, rows: pa.Table) -> Outputs:
        seqs = rows.column("input_ids").to_pylist()
        n = len(seqs)
        t0 = time.perf_counter()
        feats = np.zeros((n, self.enc.hidden_size), np.float32)
        layers = {k: np.zeros((n, self.enc.hidden_size), np.float32) for k in self.layers}
        logits = None
        for batch in length_batches([len(s) for s in seqs]):
            out = self.enc.forward_ids([seqs[i] for i in batch], self.layers, self.spec.teacher.pooling)
            feats[batch] = out.features.cpu().numpy()
            for k in self.layers:
                layers[k][batch] = out.layers[k].cpu().numpy()
            if out.logits is not None:
                if logits is None:
                    logits = np.zeros((n, out.logits.shape[1]), np.float32)
                logits[batch] = out.logits.cpu().numpy()
        self.seconds += time.perf_counter() - t0
        return Outputs(feats, layers, logits)

    def targets(self, out: Outputs) -> dict[str, np.ndarray]:
        logits = self.head.logits(out.features) if self.head is not None else out.logits
        return {"logits": logits.astype(np.float32), **{layout.layer_array(k): out.layers[k] for k in self.layers}}


def fit_head(spec: CacheSpec, task: TaskData, enc: Encoder,
             id_outputs: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> tuple[LinearHead | None, dict]:
    """The teacher head, and its tensors to store. `id_outputs`: clean (features, labels) of train/validation."""
    kind = spec.teacher.head
    if kind == "model":
        head_mod = enc.model.classifier if hasattr(enc.model, "classifier") else enc.model.score
        tensors = {k: v.detach().float().cpu().numpy() for k, v in head_mod.state_dict().items()}
        return None, {"tensors": tensors, "info": {"kind": "model"}}
    if kind == "zero-shot":
        out = enc.encode_texts(list(task.label_descriptions), layers=spec.teacher.layers,
                               pooling=spec.teacher.pooling, max_length=spec.teacher.max_length)
        head = zero_shot_head(out.features.cpu().numpy())
        return head, {"tensors": head.tensors(), "info": head.info}
    (xt, yt), (xv, yv) = id_outputs["train"], id_outputs["validation"]
    head = fit_linear_probe(xt, yt, xv, yv, len(spec.task.label_names))
    return head, {"tensors": head.tensors(), "info": head.info}


def clean_id_outputs(memo: dict[int, tuple[pa.Table, Outputs]], ranges: dict[str, layout.SplitRange],
                     shard_rows: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of the clean rows of train and validation, from the memoised shards."""
    out = {}
    for split in ("train", "validation"):
        r = ranges[split]
        feats, labels = [], []
        for row in range(r.start, r.stop, r.group_size):
            k = row // shard_rows
            rows, o = memo[k]
            feats.append(o.features[row - k * shard_rows])
            labels.append(rows.column("label")[row - k * shard_rows].as_py())
        out[split] = (np.stack(feats), np.asarray(labels))
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("robustkd", "torch", "transformers", "zarr", "pyarrow", "numpy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class FileLock:
    """An exclusive advisory lock on a local file (no-op on object stores, where workers own disjoint shards)."""

    def __init__(self, store: layout.Store, rel: str, blocking: bool) -> None:
        self.path = f"{store.path}/{rel}" if store.local else None
        self.blocking = blocking
        self.fh = None

    def acquire(self) -> bool:
        if self.path is None:
            return True
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            self.fh.close()
            self.fh = None
            return False

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_arrays(store: layout.Store, widths: dict[str, int], dtypes: dict[str, str], n: int,
                s: int) -> dict:
    """Open the cache's zarr arrays, creating them if missing. On object stores, where workers take no lock,
    another worker may create one at the same moment: then open what it created."""
    import zarr
    from zarr.errors import ContainsArrayError, ContainsGroupError

    for attempt in range(5):
        try:
            group = zarr.open_group(store.zarr_location(), mode="a")
            return {name: group[name] if name in group else group.create_array(
                name, shape=(n, width), chunks=(s, width), dtype=dtypes[name], fill_value=0)
                for name, width in widths.items()}
        except (ContainsArrayError, ContainsGroupError):
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not open the zarr arrays of {store.url}")


def _chain(*its):  # noqa: ANN002, ANN202
    for it in its:
        yield from it


def is_complete(root: str | Path, key: str) -> bool:
    return layout.Store(f"{root}/{key}").exists(layout.MANIFEST)


def precompute(spec: CacheSpec, task: TaskData, enc: Encoder, root: str | Path, *,
               progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
               shards: list[int] | None = None) -> layout.Manifest | None:
    """Write the cache for `spec` under `root/<key>` (a folder or fsspec URL); returns its manifest.

    Shards are claimed one lock each, so concurrent writers (scale-out workers given disjoint `shards`, or
    an accidental second process) never write the same shard; the call that finds every shard done writes
    the manifest. Returns None when other workers still own missing shards.
    """
    from safetensors.numpy import save

    key = spec.cache_key()
    store = layout.Store(f"{root}/{key}")
    if store.exists(layout.MANIFEST):
        return layout.Manifest.model_validate_json(store.read_bytes(layout.MANIFEST))
    progress = progress or (lambda *a: None)
    should_stop = should_stop or (lambda: False)
    t_start = time.perf_counter()
    for sub in ("", "rows", "shards"):
        store.makedirs(sub)
    if store.local:
        layout.remove_stale_temps(store.path)
    refs, ranges = plan(spec, task)
    for split, r in ranges.items():
        if r.stop == r.start:
            raise RequestError(f"split {split!r} of task {task.name!r} is empty")
    n, s = len(refs), spec.shard_rows
    n_shards = (n + s - 1) // s
    fwd = Forward(spec, enc)
    ctx = perturb_context(spec, task, enc)
    n_labels = len(spec.task.label_names)
    widths = {"logits": n_labels, **{layout.layer_array(k): enc.hidden_size for k in spec.teacher.layers}}
    dtypes = {"logits": spec.storage.logits_dtype,
              **{layout.layer_array(k): spec.storage.activations_dtype for k in spec.teacher.layers}}

    def done(k: int) -> bool:
        return store.exists(layout.marker_path(k)) and store.exists(layout.rows_path(k))

    with ThreadPoolExecutor(2) as pool:
        def prepared(ks: list[int]):  # noqa: ANN202 - yields (k, rows); shard k+1 is prepared meanwhile
            def submit(k: int) -> Future:
                return pool.submit(prepare_shard, spec, task, refs, k * s, min(n, k * s + s), enc, ctx)

            nxt = submit(ks[0]) if ks else None
            for i, k in enumerate(ks):
                if should_stop():
                    raise Cancelled(f"job {key} cancelled")
                rows = nxt.result()
                if i + 1 < len(ks):
                    nxt = submit(ks[i + 1])
                yield k, rows

        # 1. setup, one process at a time: spec, zarr arrays, and the head (a linear probe needs the clean
        #    train/validation features: those shards are computed once, kept, and written in step 2)
        t_head = time.perf_counter()
        memo: dict[int, tuple[pa.Table, Outputs]] = {}
        with FileLock(store, ".setup.lock", blocking=True):
            if store.exists(layout.SPEC):
                if CacheSpec.model_validate_json(store.read_bytes(layout.SPEC)).cache_key() != key:
                    raise RuntimeError(f"{store.url}/{layout.SPEC} belongs to another spec; refusing to mix caches")
            else:
                store.write_json(layout.SPEC, json.loads(spec.model_dump_json()))
            arrays = open_arrays(store, widths, dtypes, n, s)
            if store.exists(layout.HEAD):
                from safetensors.numpy import load

                tensors = load(store.read_bytes(layout.HEAD))
                if spec.teacher.head != "model":
                    fwd.head = LinearHead(tensors["weight"], tensors["bias"])
            else:
                id_outputs = None
                if spec.teacher.head == "linear-probe":
                    for k, rows in prepared(list(range((ranges["validation"].stop + s - 1) // s))):
                        memo[k] = (rows, fwd.run(rows))
                        progress("fitting head", sum(r.num_rows for r, _ in memo.values()), n)
                    id_outputs = clean_id_outputs(memo, ranges, s)
                fwd.head, head = fit_head(spec, task, enc, id_outputs)
                store.write_bytes(layout.HEAD, save(head["tensors"], metadata={"info": json.dumps(head["info"])}))
        head_s = time.perf_counter() - t_head

        # 2. the shards this call claims: forward (unless memoised), head, write; writing overlaps the forward
        wanted = sorted(set(range(n_shards) if shards is None else shards))
        locks = {k: FileLock(store, f"shards/{layout.shard_name(k)}.lock", blocking=False) for k in wanted
                 if not done(k)}
        todo = [k for k, lock in locks.items() if lock.acquire() and not done(k)]

        def write(k: int, rows: pa.Table, targets: dict[str, np.ndarray]) -> None:
            start, stop = k * s, min(n, (k + 1) * s)
            raw = layout.arrow_file_bytes(rows)
            store.write_bytes(layout.rows_path(k), raw)
            chunks = {}
            for name, arr in targets.items():
                arrays[name][start:stop] = arr.astype(dtypes[name])
                chunks[name] = layout.sha256_bytes(store.read_bytes(layout.chunk_path(name, k)))
            rec = layout.ShardRecord(index=k, start=start, stop=stop, rows_sha256=layout.sha256_bytes(raw),
                                     chunks_sha256=chunks)
            store.write_json(layout.marker_path(k), rec)
            locks[k].release()

        t_shards = time.perf_counter()
        rows_done = sum(min(n, (k + 1) * s) - k * s for k in range(n_shards) if k not in todo and done(k))
        new_rows = 0
        pending: Future | None = None
        try:
            for k, rows in _chain([(k, memo[k][0]) for k in todo if k in memo], prepared([k for k in todo
                                                                                         if k not in memo])):
                if should_stop():
                    raise Cancelled(f"job {key} cancelled")
                targets = fwd.targets(memo.pop(k)[1] if k in memo else fwd.run(rows))
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, k, rows, targets)
                rows_done += rows.num_rows
                new_rows += rows.num_rows
                progress("writing shards", rows_done, n)
            if pending is not None:
                pending.result()
        finally:
            for lock in locks.values():
                lock.release()
    shards_s = time.perf_counter() - t_shards

    # 3. the manifest, last, once every shard of every worker is done
    with FileLock(store, ".setup.lock", blocking=True):
        if store.exists(layout.MANIFEST):
            return layout.Manifest.model_validate_json(store.read_bytes(layout.MANIFEST))
        if not all(done(k) for k in range(n_shards)):
            return None
        records = [layout.ShardRecord.model_validate_json(store.read_bytes(layout.marker_path(k)))
                   for k in range(n_shards)]
        manifest = layout.Manifest(
            key=key, complete=True, format_version=spec.format_version,
            spec=json.loads(spec.model_dump_json()), n_rows=n, shard_rows=s, n_shards=n_shards,
            hidden_size=enc.hidden_size, num_labels=n_labels, label_names=list(spec.task.label_names),
            splits=ranges, arrays={k: {"shape": [n, w], "dtype": dtypes[k]} for k, w in widths.items()},
            shards=records, head_sha256=layout.sha256_bytes(store.read_bytes(layout.HEAD)), versions=versions(),
            timings={"head_s": round(head_s, 3), "shards_s": round(shards_s, 3),
                     "forward_s": round(fwd.seconds, 3), "total_s": round(time.perf_counter() - t_start, 3),
                     "rows_per_s": round(new_rows / (head_s + shards_s), 2) if new_rows else 0.0},
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        store.write_json(layout.MANIFEST, manifest)
    progress("done", n, n)
    return manifest


def cache_size_bytes(root: str | Path, key: str) -> int:
    return layout.Store(f"{root}/{key}").size_bytes()

