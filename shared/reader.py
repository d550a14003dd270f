"""Read a complete cache from a folder, an fsspec URL, or the teacher service, and the service's wire format.

`CacheReader(location)` is one interface over two backends: `LocalCacheReader` reads a folder or fsspec URL
and checks every shard against the manifest's checksums as it is read; `HttpCacheReader` reads the service's
row stream, Arrow IPC record batches that it resumes after the last complete one when a connection drops.
Neither needs robustkd model code: this is what the trainer streams from.
"""

from __future__ import annotations

import hashlib
import io
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from io import RawIOBase

import numpy as np
import pyarrow as pa

from robustkd.shared.layout import HEAD, MANIFEST, TARGETS, CacheError, Manifest, chunk_path, rows_path

ARROW_STREAM = "application/vnd.apache.arrow.stream"
BUSY_RETRIES = 100  # 503 + Retry-After answers (all row streams busy) waited out per request
HASH_BLOCK = 1 << 18  # bytes read at a time when checking a chunk
TARGET_PREFIX = "t_"  # wire columns `t_logits`, `t_layer_<i>` carry the teacher targets beside the rows


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Shard:
    """Rows read back and the teacher targets aligned with them (float32 unless read with widen=False)."""

    index: int
    rows: pa.Table
    targets: dict[str, np.ndarray]


def targets_to_table(rows: pa.Table, targets: dict[str, np.ndarray]) -> pa.Table:
    """Rows plus targets as one Arrow table, each target a fixed-size-list column in its own dtype."""
    cols = {name: rows.column(name) for name in rows.column_names}
    for name, arr in targets.items():
        flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
        cols[f"{TARGET_PREFIX}{name}"] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
    return pa.table(cols)


def table_to_shard(index: int, table: pa.Table, widen: bool = True) -> Shard:
    """A wire table back as a shard: targets in float32, or as sent (the stored dtypes) with `widen=False`."""
    targets = {}
    for name in table.column_names:
        if name.startswith(TARGET_PREFIX):
            col = table.column(name).combine_chunks()
            flat = col.values.to_numpy(zero_copy_only=False)
            arr = flat.reshape(-1, col.type.list_size)
            targets[name[len(TARGET_PREFIX):]] = arr.astype(np.float32) if widen else arr
    rows = table.select([n for n in table.column_names if not n.startswith(TARGET_PREFIX)])
    return Shard(index, rows, targets)


class _BytesIterIO(RawIOBase):
    """A readable file over an iterator of byte chunks (an HTTP body), for pyarrow's stream reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


class CacheReader(ABC):
    """A complete cache, read shard by shard. `CacheReader(location)` gives the reader for the location:
    `HttpCacheReader` for an http(s) URL of the service, `LocalCacheReader` for a folder or fsspec URL.

    A backend implements `_load_manifest`, `_read_shard` and `_head_raw`; the rest is shared.
    """

    def __new__(cls, location: str | None = None, **kwargs) -> CacheReader:  # noqa: ANN003 - the backend's options
        if cls is CacheReader and location is not None:
            cls = HttpCacheReader if is_http(location) else LocalCacheReader
        return super().__new__(cls)

    def __init__(self, location: str, *, verify: bool = True) -> None:
        self.location = location.rstrip("/")
        self.verify = verify
        self.manifest = self._load_manifest()
        if not self.manifest.complete or len(self.manifest.shards) != self.manifest.n_shards:
            raise CacheError(f"cache at {self.location} is incomplete: manifest lists "
                             f"{len(self.manifest.shards)} of {self.manifest.n_shards} shards")

    @abstractmethod
    def _load_manifest(self) -> Manifest:
        """The cache's manifest; CacheError when there is none."""

    @abstractmethod
    def _read_shard(self, index: int, widen: bool) -> Shard:
        """Shard `index` (in range), its targets in float32 or, with `widen=False`, their stored dtypes."""

    @abstractmethod
    def _head_raw(self) -> bytes:
        """The head file's bytes, unchecked."""

    @property
    def key(self) -> str:
        return self.manifest.key

    def read_shard(self, index: int, *, widen: bool = True) -> Shard:
        """Shard `index`: its rows and targets (float32; the stored dtypes with `widen=False`)."""
        if not 0 <= index < self.manifest.n_shards:
            raise CacheError(f"shard {index} out of range 0..{self.manifest.n_shards - 1}")
        return self._read_shard(index, widen)

    def head_bytes(self) -> bytes:
        """The head's safetensors bytes, checked against the manifest."""
        raw = self._head_raw()
        if self.verify and sha256_bytes(raw) != self.manifest.head_sha256:
            raise CacheError(f"checksum mismatch in {HEAD} of cache {self.key}")
        return raw

    def read_head(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        return load(self.head_bytes())

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

    def read_clean(self, split: str) -> Shard:
        """The clean rows of a split (the first of each group), with their targets."""
        rng = self.manifest.splits[split]
        shard = self.read_split(split)
        keep = np.asarray(rng.clean_rows()) - rng.start
        return Shard(shard.index, shard.rows.take(pa.array(keep)), {k: v[keep] for k, v in shard.targets.items()})


def is_http(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class LocalCacheReader(CacheReader):
    """A cache in a folder or at an fsspec URL (s3://, memory://, ...): shards checked against their checksums."""

    def __init__(self, location: str, *, verify: bool = True) -> None:
        import fsspec

        self.fs, self.path = fsspec.core.url_to_fs(location.rstrip("/"))
        self._zarr = None
        super().__init__(location, verify=verify)

    def _load_manifest(self) -> Manifest:
        mpath = f"{self.path}/{MANIFEST}"
        if not self.fs.exists(mpath):
            if not self.fs.exists(self.path):
                raise CacheError(f"no cache at {self.location}")
            raise CacheError(f"cache at {self.location} is incomplete: {MANIFEST} is missing "
                             "(precompute has not finished, or was interrupted)")
        return Manifest.model_validate_json(self.fs.cat_file(mpath))

    def _group(self):  # noqa: ANN202 - zarr.Group, imported lazily
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_group(f"{self.location}/{TARGETS}", mode="r")
        return self._zarr

    def _read_shard(self, index: int, widen: bool) -> Shard:
        rec = self.manifest.shards[index]
        raw = self.fs.cat_file(f"{self.path}/{rows_path(index)}")
        if self.verify:
            if sha256_bytes(raw) != rec.rows_sha256:
                raise CacheError(f"checksum mismatch in {rows_path(index)} of cache {self.key}")
            for name, digest in rec.chunks_sha256.items():
                self._check_chunk(chunk_path(name, index), digest)
        rows = pa.ipc.open_file(pa.BufferReader(raw)).read_all()
        group = self._group()
        targets = {}
        for name in self.manifest.arrays:
            arr = np.asarray(group[name][rec.start:rec.stop])
            targets[name] = arr.astype(np.float32) if widen else arr
        return Shard(index, rows, targets)

    def _check_chunk(self, rel: str, digest: str) -> None:
        """A target chunk's sha256, read in blocks: no copy of it is held while zarr reads it next."""
        h = hashlib.sha256()
        try:
            with self.fs.open(f"{self.path}/{rel}", "rb") as f:
                while block := f.read(HASH_BLOCK):
                    h.update(block)
        except FileNotFoundError:
            raise CacheError(f"missing {rel} of cache {self.key}") from None
        if h.hexdigest() != digest:
            raise CacheError(f"checksum mismatch in {rel} of cache {self.key}")

    def _head_raw(self) -> bytes:
        try:
            return self.fs.cat_file(f"{self.path}/{HEAD}")
        except FileNotFoundError:
            raise CacheError(f"cache {self.key} has no {HEAD}") from None


class HttpCacheReader(CacheReader):
    """A cache served by the teacher service (`<server>/v1/caches/<key>`), read over its row stream.

    Connection errors are retried by the transport; a response cut short is resumed from the last complete
    record batch, `retries` times with exponential back-off. Targets arrive in their stored dtypes.
    """

    def __init__(self, location: str, *, verify: bool = True, timeout: float = 60.0, retries: int = 5) -> None:
        import httpx

        self.retries = retries
        self._http = httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(retries=retries))
        super().__init__(location, verify=verify)

    def _load_manifest(self) -> Manifest:
        body = self._get_json(self.location)
        if body.get("state") != "succeeded" or not body.get("manifest"):
            raise CacheError(f"cache at {self.location} is not complete (state: {body.get('state')})")
        return Manifest.model_validate(body["manifest"])

    def _get_json(self, url: str) -> dict:
        import httpx

        try:
            r = self._http.get(url)
        except httpx.HTTPError as e:
            raise CacheError(f"cannot reach {url} ({type(e).__name__}: {e})") from None
        if r.status_code == 404:
            raise CacheError(f"no cache at {self.location}")
        if r.status_code != 200:
            raise CacheError(f"{url}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    def _read_shard(self, index: int, widen: bool) -> Shard:
        rec = self.manifest.shards[index]
        return table_to_shard(index, self._fetch_rows(rec.start, rec.stop), widen)

    def _fetch_rows(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) from the service; a cut-off response resumes after its last complete batch."""
        import httpx

        batches: list[pa.RecordBatch] = []
        at, failures, busy = start, 0, 0
        while at < stop:
            try:
                with self._http.stream("GET", f"{self.location}/rows", params={"start": at, "stop": stop}) as r:
                    if r.status_code == 503 and "retry-after" in r.headers and busy < BUSY_RETRIES:
                        busy += 1  # every stream slot is taken: wait as told, not counted as a failure
                        time.sleep(min(30.0, float(r.headers["retry-after"]) if r.headers["retry-after"].isdigit()
                                       else 1.0))
                        continue
                    if r.status_code != 200:
                        r.read()
                        raise CacheError(f"reading rows [{at}, {stop}) from {self.location}: "
                                         f"HTTP {r.status_code} {r.text[:200]}")
                    # buffered: pyarrow needs whole reads, and network chunks cut messages over 64 KiB
                    body = io.BufferedReader(_BytesIterIO(r.iter_bytes()))
                    for batch in pa.ipc.open_stream(pa.PythonFile(body, mode="r")):
                        batches.append(batch)
                        at += batch.num_rows
                        failures = 0
                if at < stop:
                    raise pa.ArrowInvalid(f"response ended at row {at} of [{start}, {stop})")
            except (httpx.TransportError, pa.ArrowInvalid, OSError) as e:
                failures += 1
                if failures > self.retries:
                    raise CacheError(f"reading rows [{at}, {stop}) from {self.location} failed "
                                     f"{failures} times; last error: {type(e).__name__}: {e}") from None
                time.sleep(min(8.0, 0.25 * 2 ** failures))
        return pa.Table.from_batches(batches)

    def _head_raw(self) -> bytes:
        import httpx

        try:
            r = self._http.get(f"{self.location}/head")
        except httpx.HTTPError as e:
            raise CacheError(f"cannot read the head of {self.location} ({type(e).__name__})") from None
        if r.status_code != 200:
            raise CacheError(f"reading the head of {self.location}: HTTP {r.status_code} {r.text[:200]}")
        return r.content
