"""A remote reader survives a dropped connection: it resumes after the last complete record batch."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from robustkd.shared.reader import CacheReader, HttpCacheReader, LocalCacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.settings import Settings
from robustkd.testing import free_port


class CuttingProxy:
    """TCP proxy to a local server that cuts the first rows response after `cut_after` bytes of it."""

    def __init__(self, upstream: int, cut_after: int) -> None:
        self.upstream, self.cut_after = upstream, cut_after
        self.requests: list[str] = []
        self.cut = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        state = {"counting": False, "sent": 0}

        def to_upstream() -> None:
            try:
                while data := client.recv(65536):
                    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    self.requests.append(line)
                    if "/rows?" in line and not self.cut:
                        state["counting"] = True
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=to_upstream, daemon=True).start()
        try:
            while data := up.recv(65536):
                if state["counting"] and not self.cut:
                    room = self.cut_after - state["sent"]
                    if len(data) >= room:
                        client.sendall(data[:room])
                        self.cut = True
                        break
                    state["sent"] += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:  # shutdown first: close alone sends no FIN while to_upstream still blocks in recv
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path):  # noqa: ANN201
    root = tmp_path / "cache"
    spec, task = resolve(CacheRequest(model=str(tiny_model), limit=12, shard_rows=9, layers=[1, 2]), str(tiny_model))
    m = precompute(spec, task, Encoder(str(tiny_model)), str(root))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(Settings(cache_root=str(root), model=str(tiny_model), threads=1)),
                                        host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.05)
    yield port, root, m
    srv.should_exit = True
    t.join(10)


def test_reader_resumes_after_the_last_complete_batch(server) -> None:  # noqa: ANN001
    port, root, m = server
    proxy = CuttingProxy(port, cut_after=30000)  # some record batches (one per shard) into the first response
    try:
        remote = CacheReader(f"http://127.0.0.1:{proxy.port}/v1/caches/{m.key}", retries=3)
        table = remote._fetch_rows(0, m.n_rows)
    finally:
        proxy.close()
    assert proxy.cut
    starts = [int(x) for x in re.findall(r"/rows\?start=(\d+)", " ".join(proxy.requests))]
    assert starts[0] == 0 and len(starts) == 2 and 0 < starts[1] < m.n_rows and starts[1] % m.shard_rows == 0
    local = CacheReader(str(root / m.key)).read_rows(0, m.n_rows)
    assert table.column("example_id").to_pylist() == list(range(m.n_rows))
    assert table.select(local.rows.column_names).equals(local.rows)
    np.testing.assert_array_equal(np.asarray(table.column("t_logits").combine_chunks().values).reshape(-1, 2),
                                  local.targets["logits"])


def test_reader_gives_up_with_a_clear_error(server) -> None:  # noqa: ANN001
    port, root, m = server
    remote = CacheReader(f"http://127.0.0.1:{port}/v1/caches/{m.key}", retries=1)
    remote.location = f"http://127.0.0.1:{free_port()}/v1/caches/{m.key}"  # nothing listens there any more
    with pytest.raises(Exception, match=r"reading rows \[0, 9\).*failed 2 times"):
        remote.read_shard(0)


def test_remote_reader_keeps_stored_dtypes_with_widen_false(server) -> None:  # noqa: ANN001
    """widen=False means the stored dtypes over HTTP too (the row stream carries them), as it does locally."""
    port, root, m = server
    remote = CacheReader(f"http://127.0.0.1:{port}/v1/caches/{m.key}")
    local = CacheReader(str(root / m.key))
    narrow, wide = remote.read_shard(1, widen=False), remote.read_shard(1)
    assert {k: str(v.dtype) for k, v in narrow.targets.items()} == {k: a.dtype for k, a in m.arrays.items()}
    assert {str(v.dtype) for v in wide.targets.values()} == {"float32"}
    for name, arr in local.read_shard(1, widen=False).targets.items():
        np.testing.assert_array_equal(narrow.targets[name], arr)
        assert narrow.targets[name].dtype == arr.dtype


def test_cache_reader_gives_the_backend_of_the_location(server) -> None:  # noqa: ANN001
    port, root, m = server
    remote, local = CacheReader(f"http://127.0.0.1:{port}/v1/caches/{m.key}"), CacheReader(str(root / m.key))
    assert type(remote) is HttpCacheReader and type(local) is LocalCacheReader
    assert type(CacheReader(f"file://{root / m.key}")) is LocalCacheReader
    assert remote.head_bytes() == local.head_bytes() and remote.manifest.shards == local.manifest.shards
