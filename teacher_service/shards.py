"""A cache's shard files and the locks that keep two writers off one shard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.reader import sha256_bytes
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.plan import Plan
from robustkd.teacher_service.store import Store, arrow_file_bytes, open_arrays


class ShardFiles:
    """The files of one cache's shards: rows file, zarr chunks, then the done-marker with their checksums."""

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
