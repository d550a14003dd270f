"""The service's handlers through FastAPI's TestClient (the real app, its worker and a tiny model, no socket)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from robustkd.shared import layout
from robustkd.shared.reader import sha256_bytes
from robustkd.teacher_service import resolve as resolve_module
from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.settings import Settings

BODY = {"task": "sentiment-rt-drugs", "limit": 6, "shard_rows": 9, "layers": [1, 2]}


def wait(client: TestClient, key: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{key}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise TimeoutError(key)


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("api-cache")
    with TestClient(create_app(Settings(cache_root=str(root), model=str(tiny_model), threads=1))) as client:
        key = client.post("/v1/caches", json=BODY).json()["key"]
        assert wait(client, key)["state"] == "succeeded"
        yield client, root, key


def test_rows_serve_the_stored_dtypes(served) -> None:  # noqa: ANN001
    client, root, key = served
    r = client.get(f"/v1/caches/{key}/rows", params={"start": 0, "stop": 20})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(pa.BufferReader(r.content)).read_all()
    assert table.num_rows == 20
    assert table.schema.field("t_layer_1").type == pa.list_(pa.float16(), 32)
    assert table.schema.field("t_logits").type == pa.list_(pa.float32(), 2)


def test_head_is_checked_before_it_is_served(served, tmp_path: Path) -> None:  # noqa: ANN001
    client, root, key = served
    ok = client.get(f"/v1/caches/{key}/head")
    assert ok.status_code == 200 and sha256_bytes(ok.content) == ok.headers["x-sha256"]
    head = root / key / layout.HEAD
    original = head.read_bytes()
    try:
        head.write_bytes(original[:-4] + b"\0\0\0\0")
        bad = client.get(f"/v1/caches/{key}/head")
        assert bad.status_code == 409 and "checksum" in bad.json()["detail"]  # damaged, named; not a crash
        head.unlink()
        gone = client.get(f"/v1/caches/{key}/head")
        assert gone.status_code == 409 and "no head.safetensors" in gone.json()["detail"]
    finally:
        head.write_bytes(original)


def test_post_for_a_complete_cache_resolves_from_memory(served, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A repeated request parses no data file and hashes no weights again (both memoised)."""
    client, root, key = served
    calls = {"task": 0, "hash": 0}
    real_task, real_open = resolve_module.load_task, open

    def counting_task(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        calls["task"] += 1
        return real_task(*a, **kw)

    def counting_open(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).endswith(".safetensors"):
            calls["hash"] += 1
        return real_open(path, *a, **kw)

    monkeypatch.setattr(resolve_module, "load_task", counting_task)
    monkeypatch.setattr("builtins.open", counting_open)
    for _ in range(3):
        r = client.post("/v1/caches", json=BODY)
        assert r.status_code == 200 and r.json()["key"] == key
    assert calls == {"task": 0, "hash": 0}


def test_bad_keys_and_ranges(served) -> None:  # noqa: ANN001
    client, root, key = served
    assert client.get("/v1/jobs/" + "z" * 64).status_code == 400
    assert client.get("/v1/jobs/" + "0" * 64).status_code == 404
    assert client.get(f"/v1/caches/{key}/rows", params={"start": 5, "stop": 4}).status_code == 416
    assert client.get(f"/v1/caches/{key}/rows", params={"start": 0, "stop": 10**6}).status_code == 416


def test_service_on_an_fsspec_root(tiny_model: Path) -> None:
    """ROBUSTKD_CACHE_ROOT may be any fsspec URL: jobs, caches, listing, rows and deletion all go through it."""
    import fsspec

    root = "memory://robustkd-api-test/caches"
    fs = fsspec.filesystem("memory")
    with TestClient(create_app(Settings(cache_root=root, model=str(tiny_model), threads=1))) as client:
        key = client.post("/v1/caches", json=BODY).json()["key"]
        assert wait(client, key)["state"] == "succeeded"
        assert fs.exists(f"/robustkd-api-test/caches/{key}/manifest.json")
        assert fs.exists(f"/robustkd-api-test/caches/_jobs/{key}.json")
        assert not Path("memory:").exists() and not Path("memory:/robustkd-api-test").exists()
        assert [c["key"] for c in client.get("/v1/caches").json()] == [key]
        r = client.get(f"/v1/caches/{key}/rows", params={"start": 0, "stop": 9})
        assert pa.ipc.open_stream(pa.BufferReader(r.content)).read_all().num_rows == 9
        assert client.delete(f"/v1/caches/{key}").status_code == 200
        assert not fs.exists(f"/robustkd-api-test/caches/{key}")
        assert client.get("/v1/caches").json() == []


def test_token_and_allowed_roots(tiny_model: Path, tmp_path: Path) -> None:
    settings = Settings(cache_root=str(tmp_path / "c"), model=str(tiny_model), api_token="s3cret",
                        model_roots=[str(tiny_model)], data_roots=[str(tmp_path / "data")], threads=1)
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/caches", json=BODY).status_code == 401
        assert client.post("/v1/caches", json=BODY, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = client.post("/v1/caches", json={**BODY, "model": "/etc"}, headers=auth)
        assert r.status_code == 422 and "allowed root" in r.text
        r = client.post("/v1/caches", json={**BODY, "task": "file", "path": "/etc/passwd", "label_column": "a",
                                            "domain_column": "b", "id_domains": ["x"], "ood_domains": ["y"],
                                            "text_column": "t"}, headers=auth)
        assert r.status_code == 422 and "path" in r.text
        key = client.post("/v1/caches", json=BODY, headers=auth).json()["key"]
        assert wait(client, key)["state"] == "succeeded"
        assert client.get(f"/v1/caches/{key}").status_code == 200  # reads need no token
        assert client.delete(f"/v1/jobs/{key}").status_code == 401
        assert client.delete(f"/v1/caches/{key}").status_code == 401
        assert client.delete(f"/v1/caches/{key}", headers=auth).status_code == 200
