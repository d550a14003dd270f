"""On-disk layout of a teacher cache, its manifest, and a reader that needs no robustkd model code.

One folder per cache, named by its key, under a store root (`ROBUSTKD_CACHE_ROOT`, default `./cache`)::

    <root>/<key>/
      spec.json                  CacheSpec, written first so a partial folder can be identified
      rows/shard-00000.arrow     Arrow IPC file per shard: ROWS_SCHEMA
      targets.zarr/              Zarr v3 group; each array chunked by shard along rows
        logits                   [N, C] float32, teacher class logits
        layer_<i>                [N, D] float16, pooled hidden_states[i] (mean over real tokens, or CLS)
      head.safetensors           teacher head: weight [C, D], bias [C] (on the pooled last layer)
      shards/shard-00000.json    a shard's done-marker with its checksums, written after its data
      manifest.json              written LAST; a folder without it is not a cache

Row order: `train` groups, `validation` groups, `test`, `ood_test`. A group is a clean example followed by
its perturbed variants (`group_size` = 1 + variants rows) in the splits that get variants; other splits hold
clean rows only. Shard k holds rows [k*shard_rows, (k+1)*shard_rows); shard_rows is a multiple of the group
size, so no group straddles shards. Zarr chunk k of every array holds exactly shard k.

Readers take a local path, any fsspec URL (`file://`, `memory://`, `s3://`...), or the service URL of a cache
(`http://host:port/v1/caches/<key>`), which streams shards as Arrow IPC (see `teacher_service.app`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from shared.spec import CacheSpec

MANIFEST = "manifest.json"
SPEC = "spec.json"
HEAD = "head.safetensors"
TARGETS = "targets.zarr"
CLEAN = "clean"

ROWS_SCHEMA = pa.schema([
    ("example_id", pa.int64()),      # row index in the cache
    ("source_id", pa.string()),      # the task's stable row id
    ("split", pa.string()),
    ("domain", pa.string()),
    ("perturbation", pa.string()),   # transform name or "clean"
    ("severity", pa.int8()),         # 0 for clean rows
    ("variant", pa.int16()),         # 0 for clean rows, 1..variants otherwise
    ("parent_id", pa.int64()),       # example_id of the clean row of the group
    ("text", pa.string()),           # the exact text the teacher saw
    ("input_ids", pa.list_(pa.int32())),
    ("label", pa.int64()),
])


class CacheError(ValueError):
    """A cache is missing, incomplete, corrupted or not what the caller asked for."""


def default_root() -> str:
    return os.environ.get("ROBUSTKD_CACHE_ROOT", "cache")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def rows_path(index: int) -> str:
    return f"rows/{shard_name(index)}.arrow"


def marker_path(index: int) -> str:
    return f"shards/{shard_name(index)}.json"


def chunk_path(array: str, index: int) -> str:
    """Relative path of shard `index`'s chunk of a 2-D array (zarr v3 default chunk key encoding)."""
    return f"{TARGETS}/{array}/c/{index}/0"


def layer_array(layer: int) -> str:
    return f"layer_{layer}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ShardRecord(BaseModel):
    index: int
    start: int
    stop: int
    rows_sha256: str
    chunks_sha256: dict[str, str]


class SplitRange(BaseModel):
    start: int
    stop: int
    group_size: int

    @property
    def groups(self) -> int:
        return (self.stop - self.start) // self.group_size


class Manifest(BaseModel):
    key: str
    complete: bool
    format_version: int
    spec: dict[str, Any]
    n_rows: int
    shard_rows: int
    n_shards: int
    hidden_size: int
    num_labels: int
    label_names: list[str]
    splits: dict[str, SplitRange]
    arrays: dict[str, dict[str, Any]]   # name -> {"shape": [...], "dtype": "..."}
    shards: list[ShardRecord]
    head_sha256: str
    versions: dict[str, str]
    timings: dict[str, float]
    created_at: str

    def cache_spec(self) -> CacheSpec:
        return CacheSpec.model_validate(self.spec)

    @property
    def layers(self) -> list[int]:
        return list(self.spec["teacher"]["layers"])

    def shards_for(self, start: int, stop: int) -> list[int]:
        """Indices of shards overlapping rows [start, stop)."""
        if stop <= start:
            return []
        return list(range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1))


@dataclass
class Shard:
    """One shard read back: its rows and the teacher targets aligned with them."""

    index: int
    rows: pa.Table
    targets: dict[str, np.ndarray]  # "logits" and "layer_<i>", as float32


def targets_to_table(rows: pa.Table, targets: dict[str, np.ndarray]) -> pa.Table:
    """Rows plus targets as one Arrow table (fixed-size-list columns); the service's wire format."""
    cols = {name: rows.column(name) for name in rows.column_names}
    for name, arr in targets.items():
        flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
        cols[f"t_{name}"] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
    return pa.table(cols)


def table_to_shard(index: int, table: pa.Table) -> Shard:
    targets = {}
    for name in table.column_names:
        if name.startswith("t_"):
            col = table.column(name).combine_chunks()
            width = col.type.list_size
            targets[name[2:]] = col.values.to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)
    rows = table.select([n for n in table.column_names if not n.startswith("t_")])
    return Shard(index, rows, targets)


class CacheReader:
    """Reads a complete cache from a local path, an fsspec URL, or a robustkd service URL.

    Every shard is checked against the manifest's checksums when read (`verify=True`).
    """

    def __init__(self, location: str, *, verify: bool = True, timeout: float = 60.0) -> None:
        self.location = location.rstrip("/")
        self.verify = verify
        self.remote = self.location.startswith(("http://", "https://"))
        if self.remote:
            import httpx

            self._http = httpx.Client(timeout=timeout)
            r = self._http.get(self.location)
            if r.status_code == 404:
                raise CacheError(f"no cache at {self.location}")
            r.raise_for_status()
            body = r.json()
            if body.get("state") != "succeeded" or not body.get("manifest"):
                raise CacheError(f"cache at {self.location} is not complete (state: {body.get('state')})")
            self.manifest = Manifest.model_validate(body["manifest"])
        else:
            import fsspec

            self.fs, self.path = fsspec.core.url_to_fs(self.location)
            mpath = f"{self.path}/{MANIFEST}"
            if not self.fs.exists(mpath):
                if not self.fs.exists(self.path):
                    raise CacheError(f"no cache at {self.location}")
                raise CacheError(f"cache at {self.location} is incomplete: {MANIFEST} is missing "
                                 "(precompute has not finished, or was interrupted)")
            self.manifest = Manifest.model_validate_json(self.fs.cat_file(mpath))
            self._zarr = None
        if not self.manifest.complete or len(self.manifest.shards) != self.manifest.n_shards:
            raise CacheError(f"cache at {self.location} is incomplete: manifest lists "
                             f"{len(self.manifest.shards)} of {self.manifest.n_shards} shards")

    @property
    def key(self) -> str:
        return self.manifest.key

    def _group(self):  # noqa: ANN202 - zarr.Group, imported lazily
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_group(f"{self.location}/{TARGETS}", mode="r")
        return self._zarr

    def _read_local(self, index: int) -> Shard:
        rec = self.manifest.shards[index]
        raw = self.fs.cat_file(f"{self.path}/{rows_path(index)}")
        if self.verify:
            if sha256_bytes(raw) != rec.rows_sha256:
                raise CacheError(f"checksum mismatch in {rows_path(index)} of cache {self.key}")
            for name, digest in rec.chunks_sha256.items():
                try:
                    chunk = self.fs.cat_file(f"{self.path}/{chunk_path(name, index)}")
                except FileNotFoundError:
                    raise CacheError(f"missing {chunk_path(name, index)} of cache {self.key}") from None
                if sha256_bytes(chunk) != digest:
                    raise CacheError(f"checksum mismatch in {chunk_path(name, index)} of cache {self.key}")
        rows = pa.ipc.open_file(pa.BufferReader(raw)).read_all()
        group = self._group()
        targets = {name: np.asarray(group[name][rec.start:rec.stop], dtype=np.float32)
                   for name in self.manifest.arrays}
        return Shard(index, rows, targets)

    def read_shard(self, index: int) -> Shard:
        if not 0 <= index < self.manifest.n_shards:
            raise CacheError(f"shard {index} out of range 0..{self.manifest.n_shards - 1}")
        if not self.remote:
            return self._read_local(index)
        rec = self.manifest.shards[index]
        r = self._http.get(f"{self.location}/rows", params={"start": rec.start, "stop": rec.stop})
        if r.status_code != 200:
            raise CacheError(f"reading shard {index} from {self.location}: HTTP {r.status_code} {r.text[:200]}")
        table = pa.ipc.open_stream(pa.BufferReader(r.content)).read_all()
        return table_to_shard(index, table)

    def read_head(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        if self.remote:
            r = self._http.get(f"{self.location}/head")
            r.raise_for_status()
            raw = r.content
        else:
            raw = self.fs.cat_file(f"{self.path}/{HEAD}")
        if self.verify and sha256_bytes(raw) != self.manifest.head_sha256:
            raise CacheError(f"checksum mismatch in {HEAD} of cache {self.key}")
        return load(raw)

    def read_rows(self, start: int, stop: int) -> Shard:
        """Rows [start, stop) with their targets, across shards."""
        parts = [self.read_shard(i) for i in self.manifest.shards_for(start, stop)]
        if not parts:
            raise CacheError(f"empty row range [{start}, {stop})")
        base = parts[0].index * self.manifest.shard_rows
        rows = pa.concat_tables([p.rows for p in parts]).slice(start - base, stop - start)
        targets = {k: np.concatenate([p.targets[k] for p in parts])[start - base:stop - base]
                   for k in parts[0].targets}
        return Shard(parts[0].index, rows, targets)

    def read_split(self, split: str) -> Shard:
        rng = self.manifest.splits.get(split)
        if rng is None:
            raise CacheError(f"cache {self.key} has no split {split!r} (has {sorted(self.manifest.splits)})")
        return self.read_rows(rng.start, rng.stop)


def resolve_location(cache: str, root: str | None = None) -> str:
    """A key (64 hex chars) becomes `<root>/<key>`; paths and URLs pass through."""
    if len(cache) == 64 and all(c in "0123456789abcdef" for c in cache):
        return f"{root or default_root()}/{cache}"
    return cache


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write so a reader never sees a half-written file: temp file, fsync, rename; no temp left on error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: str) -> int:
    """Delete temp files (`*.tmp<pid>`) left by writers that died (kill -9 mid-write); live writers' stay."""
    import glob
    import re

    removed = 0
    for path in glob.glob(f"{glob.escape(folder)}/**/*.tmp*", recursive=True):
        m = re.search(r"\.tmp(\d+)$", path)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that process is alive: its write is in progress
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        os.unlink(path)
        removed += 1
    return removed


def json_bytes(obj: Any) -> bytes:
    return (obj.model_dump_json(indent=1) if isinstance(obj, BaseModel) else json.dumps(obj, indent=1)).encode()


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


class Store:
    """One cache folder on a local disk or any fsspec filesystem (e.g. `s3://bucket/caches/<key>`).

    Local writes are atomic (temp file + rename); object stores write each file in one PUT, which readers
    never see half-done. Set endpoint options the fsspec way, e.g. `FSSPEC_S3_ENDPOINT_URL`.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = str(url).rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._p(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            write_bytes_atomic(self._p(rel), data)
        else:
            self.fs.pipe_file(self._p(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json_bytes(obj))

    def makedirs(self, rel: str = "") -> None:
        if self.local:
            self.fs.makedirs(self._p(rel) if rel else self.path, exist_ok=True)

    def zarr_location(self) -> str:
        return self._p(TARGETS) if self.local else f"{self.url}/{TARGETS}"

    def size_bytes(self) -> int:
        return sum(self.fs.du(self.path, total=False).values())


def arrow_file_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()
