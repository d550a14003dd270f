"""Where the teacher writes: one cache folder on a local disk or any fsspec filesystem, and its zarr arrays.

Local writes are atomic (temp file + fsync + rename); object stores write each file in one PUT, which readers
never see half-done. Set endpoint options the fsspec way, e.g. `FSSPEC_S3_ENDPOINT_URL`.
"""

from __future__ import annotations

import glob
import io
import os
import re
import time
from typing import Any

import pyarrow as pa

from robustkd.shared import files
from robustkd.shared.layout import TARGETS


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


class Store:
    """A folder (local path or fsspec URL) with atomic whole-file writes relative to it."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = str(url).rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.local = is_local(self.fs)

    def child(self, rel: str) -> Store:
        return Store(f"{self.url}/{rel}")

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self._p(rel))

    def is_plain(self, rel: str) -> bool:
        """Whether `rel` is reached without a symbolic link from the root (object stores have none).
        The service never reads, lists or deletes through a link: it could point anywhere on the host."""
        if not self.local:
            return True
        real_root = os.path.realpath(self.path)
        return os.path.realpath(self._p(rel)) == os.path.normpath(os.path.join(real_root, rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            self.makedirs(os.path.dirname(rel))
            files.write_bytes_atomic(self._p(rel), data)
        else:
            self.fs.pipe_file(self._p(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, files.json_bytes(obj))

    def delete(self, rel: str) -> None:
        if self.fs.exists(self._p(rel)):
            self.fs.rm(self._p(rel), recursive=True)

    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self._p(rel), exist_ok=True)

    def list(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (empty if it does not exist)."""
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self._p(rel), detail=False))
        except FileNotFoundError:
            return []

    def zarr_location(self) -> str:
        return self._p(TARGETS) if self.local else f"{self.url}/{TARGETS}"

    def size_bytes(self) -> int:
        return sum(self.fs.du(self.path, total=False).values())


def arrow_file_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def open_arrays(store: Store, widths: dict[str, int], dtypes: dict[str, str], n: int, shard_rows: int) -> dict:
    """The cache's zarr arrays, created if missing (chunk k = shard k). On object stores, where workers take no
    lock, another worker may create one at the same moment: then open what it created."""
    import zarr
    from zarr.errors import ContainsArrayError, ContainsGroupError

    for attempt in range(5):
        try:
            group = zarr.open_group(store.zarr_location(), mode="a")
            return {name: group[name] if name in group else group.create_array(
                name, shape=(n, width), chunks=(shard_rows, width), dtype=dtypes[name], fill_value=0)
                for name, width in widths.items()}
        except (ContainsArrayError, ContainsGroupError):
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not open the zarr arrays of {store.url}")


def remove_stale_temps(folder: str) -> int:
    """Delete temp files (`*.tmp<pid>`) left by writers that died (kill -9 mid-write); live writers' stay."""
    removed = 0
    for path in glob.glob(f"{glob.escape(folder)}/**/*{files.TEMP_MARK}*", recursive=True):
        m = re.search(rf"{re.escape(files.TEMP_MARK)}(\d+)$", path)
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
