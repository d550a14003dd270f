"""Precompute a teacher cache: plan -> setup -> claim -> forward -> write, a shard at a time; the manifest last.

The shard is the unit of work: its rows (Arrow), its zarr chunks, then its done-marker. A restarted job skips
shards whose marker exists, so it resumes from the last complete shard. Preparing shard k+1 (perturbation,
tokenisation) and writing shard k-1 overlap the forward of shard k. Forward batches are cut per shard, so a
shard's bytes do not depend on which pass or process computed it: resumed caches are bit-identical.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
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
from robustkd.teacher_service.head_fit import fit_head, head_info, head_shards, load_head, store_head
from robustkd.teacher_service.lm import CausalLM
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.neighbours import model_neighbours
from robustkd.teacher_service.plan import Plan, label_counts, prepare_shard
from robustkd.teacher_service.plan import plan as make_plan
from robustkd.teacher_service.shards import ShardFiles, file_lock
from robustkd.teacher_service.store import Store, remove_stale_temps
from robustkd.teacher_service.taskdata import TaskData

ProgressFn = Callable[[str, int, int], None]
SETUP_LOCK = ".setup.lock"


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


def complete_manifest(root: str, key: str) -> layout.Manifest | None:
    store = Store(f"{root}/{key}")
    return layout.Manifest.model_validate_json(store.read_bytes(layout.MANIFEST)) if store.exists(layout.MANIFEST) \
        else None


def run_timings(head_s: float, shards_s: float, forward_s: float, total_s: float, new_rows: int) -> dict[str, float]:
    """The manifest's timings of a run: its phases, the rows it computed (of a static worker: its own shards') and
    their rate per busy second."""
    busy = head_s + shards_s
    return {"head_s": round(head_s, 3), "shards_s": round(shards_s, 3), "forward_s": round(forward_s, 3),
            "total_s": round(total_s, 3), "rows": float(new_rows),
            "rows_per_s": round(new_rows / busy, 2) if new_rows else 0.0}


class CacheWriter:
    """One process's part in writing the cache of `spec` under `root`, in phases that run in this order:

    plan     the rows of every shard, checked; the cache's folders; the teacher's forward
    setup    one process at a time: spec.json, the target arrays, the head (a head fitted on features gets the
             shards it needs forwarded, and they are kept until written)
    claim    lock the wanted shards that are not done and that no other writer holds
    forward  a shard's rows through the teacher, the head turning features into logits
    write    a shard's rows file, its zarr chunks, then its done-marker
    finish   the manifest, written last by whoever finds every shard done

    `run` claims, forwards and writes this process's shards, preparing shard k+1 and writing shard k-1 while
    shard k is forwarded. The Ray engine calls the same phases a shard at a time.
    """

    def __init__(self, spec: CacheSpec, task: TaskData, enc: Encoder | CausalLM, root: str, *,
                 progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        self.spec, self.task, self.enc, self.root = spec, task, enc, str(root)
        self.key = spec.cache_key()
        self.store = Store(f"{self.root}/{self.key}")
        self.progress = progress or (lambda *a: None)
        self.should_stop = should_stop or (lambda: False)
        self.pool = ThreadPoolExecutor(2)  # prepares the next shard and writes the last one
        self.memo: dict[int, tuple[pa.Table, Outputs]] = {}  # shards forwarded for the head, not yet written
        self.stats = {"head_s": 0.0, "shards_s": 0.0, "new_rows": 0}
        self.t_start = time.perf_counter()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()

    # ---- plan -----------------------------------------------------------------------------------------------
    def plan(self) -> None:
        check_placement(self.spec, self.enc)
        self.p = make_plan(self.spec, self.task)
        for split, r in self.p.splits.items():
            if r.stop == r.start:
                raise PrecomputeError(f"split {split!r} of task {self.task.name!r} is empty")
        for sub in ("", "rows", "shards"):
            self.store.makedirs(sub)
        if self.store.local:
            remove_stale_temps(self.store.path)
        self.fwd = (TokenForward if self.spec.generative else Forward)(self.spec, self.enc, self.should_stop)
        self.files = ShardFiles(self.store, self.spec, self.p, self.enc.hidden_size)
        self.ctx = perturb_context(self.spec, self.task, self.enc, self.root)

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self, forwarded: Callable[[list[int]], dict[int, tuple[pa.Table, Outputs]]] | None = None) -> None:
        """spec.json, the target arrays and the head, one process at a time. A head fitted on features gets the
        shards `head_shards` names from `forwarded` (default: forwarded here, in order)."""
        t0 = time.perf_counter()
        with file_lock(self.store, SETUP_LOCK):
            if self.store.exists(layout.SPEC):
                if CacheSpec.model_validate_json(self.store.read_bytes(layout.SPEC)).cache_key() != self.key:
                    raise PrecomputeError(f"{self.store.url}/{layout.SPEC} belongs to another spec; refusing to mix")
            else:
                self.store.write_json(layout.SPEC, self.spec)
            self.files.open()
            if self.store.exists(layout.HEAD):
                self.fwd.head = load_head(self.store, self.spec)
            else:
                self.memo = (forwarded or self.forward_all)(head_shards(self.spec, self.p))
                self.fwd.head, tensors, info = fit_head(self.spec, self.task, self.enc, self.p, self.memo)
                store_head(self.store, tensors, info)
        self.stats["head_s"] = time.perf_counter() - t0

    def forward_all(self, ks: list[int]) -> dict[int, tuple[pa.Table, Outputs]]:
        """Shards `ks` prepared and forwarded, without the head: (rows, outputs) by shard."""
        out: dict[int, tuple[pa.Table, Outputs]] = {}
        for k, rows in self.prepared(ks):
            out[k] = (rows, self.fwd.run(rows))
            self.progress("forward (train, validation)", sum(r.num_rows for r, _ in out.values()), self.p.n_rows)
        return out

    # ---- claim ----------------------------------------------------------------------------------------------
    def claim(self, wanted: list[int]) -> tuple[ExitStack, list[int]]:
        """Lock the wanted shards that are not done and no other writer holds; the stack releases the locks."""
        stack = ExitStack()
        todo = []
        for k in wanted:
            if not self.files.done(k) and stack.enter_context(
                    file_lock(self.store, f"shards/{layout.shard_name(k)}.lock", blocking=False)) \
                    and not self.files.done(k):
                todo.append(k)
        return stack, todo

    # ---- forward --------------------------------------------------------------------------------------------
    def rows_of(self, k: int) -> pa.Table:
        """Shard k's rows: perturbed and tokenised as the teacher reads them."""
        return shard_rows(self.spec, self.task, self.p, k, self.enc, self.ctx)

    def prepared(self, ks: list[int]) -> Iterator[tuple[int, pa.Table]]:
        """(k, rows) in order; shard k+1 is prepared while the caller runs shard k."""
        nxt = self.pool.submit(self.rows_of, ks[0]) if ks else None
        for i, k in enumerate(ks):
            self.check_stop()
            rows = nxt.result()
            if i + 1 < len(ks):
                nxt = self.pool.submit(self.rows_of, ks[i + 1])
            yield k, rows

    def forward(self, k: int, rows: pa.Table) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """Shard k's rows as written and its targets; a shard forwarded for the head is not forwarded again."""
        out = self.memo.pop(k)[1] if k in self.memo else self.fwd.run(rows)
        return self.fwd.with_columns(rows, out), self.fwd.targets(out)

    def check_stop(self) -> None:
        if self.should_stop():
            raise Cancelled(f"job {self.key} cancelled")

    # ---- write shard ----------------------------------------------------------------------------------------
    def write_shard(self, k: int, rows: pa.Table, targets: dict[str, np.ndarray]) -> layout.ShardRecord:
        return self.files.write(k, rows, targets)

    def run(self, shards: list[int] | None = None) -> None:
        """Claim the wanted shards (default: all), then forward and write those claimed, shard k-1 written while
        shard k is forwarded."""
        t0 = time.perf_counter()
        wanted = sorted(set(range(self.p.n_shards) if shards is None else shards))
        stack, todo = self.claim(wanted)
        memoised = [(k, self.memo[k][0]) for k in todo if k in self.memo]
        # rows through the teacher so far: done shards and those forwarded for the head (progress only goes up)
        rows_done = sum(self.p.bounds(k)[1] - self.p.bounds(k)[0] for k in range(self.p.n_shards)
                        if k not in todo and self.files.done(k)) + sum(r.num_rows for _, r in memoised)
        pending: Future | None = None
        with stack:
            for k, rows in itertools.chain(memoised, self.prepared([k for k in todo if k not in self.memo])):
                self.check_stop()
                fresh = k not in self.memo
                rows, targets = self.forward(k, rows)
                if pending is not None:
                    pending.result()
                pending = self.pool.submit(self.write_shard, k, rows, targets)
                rows_done += rows.num_rows if fresh else 0
                self.stats["new_rows"] += rows.num_rows
                self.progress("forward and write", rows_done, self.p.n_rows)
            if pending is not None:
                pending.result()
        self.stats["shards_s"] = time.perf_counter() - t0

    # ---- finish ---------------------------------------------------------------------------------------------
    def finish(self, timings: dict[str, float] | None = None) -> layout.Manifest | None:
        """The manifest, once every shard of every worker is done (None before then); written last. `timings`:
        the run's, when this writer did not run it all (default: this writer's)."""
        with file_lock(self.store, SETUP_LOCK):
            if self.store.exists(layout.MANIFEST):
                return layout.Manifest.model_validate_json(self.store.read_bytes(layout.MANIFEST))
            if not all(self.files.done(k) for k in range(self.p.n_shards)):
                return None
            if self.store.local:  # a worker killed mid-write (and retried elsewhere) leaves its temp file behind
                remove_stale_temps(self.store.path)
            manifest = self.manifest(timings or self.timings())
            self.store.write_json(layout.MANIFEST, manifest)
        self.progress("done", self.p.n_rows, self.p.n_rows)
        return manifest

    def timings(self) -> dict[str, float]:
        st = self.stats
        return {**run_timings(st["head_s"], st["shards_s"], self.fwd.seconds, time.perf_counter() - self.t_start,
                              st["new_rows"]), **self.fwd.timings()}

    def manifest(self, timings: dict[str, float]) -> layout.Manifest:
        spec, p = self.spec, self.p
        head_raw = self.store.read_bytes(layout.HEAD)
        return layout.Manifest(
            key=self.key, complete=True, format_version=spec.format_version, spec=spec, n_rows=p.n_rows,
            shard_rows=p.shard_rows, n_shards=p.n_shards, hidden_size=self.enc.hidden_size,
            num_labels=len(spec.task.label_names), label_names=list(spec.task.label_names), splits=p.splits,
            label_counts=label_counts(self.task, p, len(spec.task.label_names)), notes=list(self.task.notes),
            arrays={k: layout.ArrayInfo(shape=[p.n_rows, w], dtype=self.files.dtypes[k])
                    for k, w in self.files.widths.items()},
            shards=self.files.records(), head_sha256=sha256_bytes(head_raw), head_info=head_info(head_raw),
            vocab_size=self.enc.vocab_size if isinstance(self.enc, CausalLM) else None, versions=versions(),
            timings=timings, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def precompute(spec: CacheSpec, task: TaskData, enc: Encoder, root: str, *,
               progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
               shards: list[int] | None = None) -> layout.Manifest | None:
    """Write the cache for `spec` under `root/<key>` (a folder or fsspec URL); returns its manifest.

    Shards are claimed one lock each, so concurrent writers (scale-out workers given disjoint `shards`, or an
    accidental second process) never write the same shard; the call that finds every shard done writes the
    manifest. Returns None when other workers still own missing shards.
    """
    done = complete_manifest(str(root), spec.cache_key())
    if done is not None:
        return done
    with CacheWriter(spec, task, enc, str(root), progress=progress, should_stop=should_stop) as writer:
        writer.plan()
        writer.setup()
        writer.run(shards)
    return writer.finish()
