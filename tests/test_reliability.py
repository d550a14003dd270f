"""Crash safety, write errors, integrity and access control of the teacher service."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.shared import files, layout
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.jobs import JobManager
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.settings import Settings
from robustkd.testing import wait_job

BODY = {"task": "sentiment-rt-drugs", "limit": 20, "shard_rows": 12, "layers": [2, 6]}


def markers(folder: Path) -> int:
    return len(list((folder / "shards").glob("*.json"))) if (folder / "shards").exists() else 0


@pytest.mark.slow
def test_kill_9_at_several_points_resumes_to_identical_cache(make_server, minilm: Path, tmp_path: Path) -> None:  # noqa: ANN001
    spec, task = resolve(CacheRequest(model=str(minilm), **BODY), str(minilm))
    reference = precompute(spec, task, Encoder(str(minilm)), tmp_path / "ref")
    root = tmp_path / "cache"
    env = {"ROBUSTKD_MODEL": str(minilm), "ROBUSTKD_CACHE_ROOT": str(root)}
    folder = root / reference.key
    killed_at = []
    for point in (0, 3, 8):  # shards complete when killed (0: during the head fit or the first shard)
        srv = make_server(**env).start()
        r = httpx.post(srv.url + "/v1/caches", json=BODY, timeout=60)
        assert r.status_code == 202, r.text
        assert r.json()["key"] == reference.key
        deadline = time.time() + 600  # generous: CI machines can be busy
        while httpx.get(f"{srv.url}/v1/jobs/{reference.key}").json()["state"] == "queued" and time.time() < deadline:
            time.sleep(0.01)
        while markers(folder) < point and time.time() < deadline:
            time.sleep(0.01)
        srv.kill()
        assert not (folder / "manifest.json").exists(), "job finished before the kill: test not exercised"
        killed_at.append(markers(folder))
        with pytest.raises(layout.CacheError, match="incomplete|no cache"):
            CacheReader(str(folder))
    assert killed_at[-1] >= 8 and killed_at == sorted(killed_at)
    srv = make_server(**env).start()  # the restarted service picks the job up from its last complete shard
    job = wait_job(srv.url, reference.key)
    assert job["state"] == "succeeded", job
    final = layout.Manifest.model_validate_json((folder / "manifest.json").read_text())
    assert [s.model_dump() for s in final.shards] == [s.model_dump() for s in reference.shards]
    assert final.head_sha256 == reference.head_sha256
    assert list(root.rglob("*.tmp*")) == []


def test_write_error_fails_job_cleanly_and_survives_restart(tiny_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = files.write_bytes_atomic

    def disk_full(path: str, data: bytes) -> None:
        if "shard-00002.arrow" in path:
            with open(f"{path}.tmp-partial", "wb") as f:  # a partly written temp file, as a full disk leaves
                f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", disk_full)
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model))
    jobs = JobManager(settings)
    try:
        code, job = jobs.submit(CacheRequest(limit=8, shard_rows=9, layers=[1, 2]))
        assert code == 202
        deadline = time.time() + 600  # generous: CI machines can be busy
        while jobs.status(job.key).state in ("queued", "running") and time.time() < deadline:
            time.sleep(0.05)
        st = jobs.status(job.key)
        assert st.state == "failed" and "No space left" in st.error
        assert not (tmp_path / job.key / "manifest.json").exists()
        with pytest.raises(layout.CacheError, match="incomplete"):
            CacheReader(str(tmp_path / job.key))
    finally:
        jobs.close()
    again = JobManager(settings)  # job state survives a restart, and a failed job is not silently retried
    try:
        st = again.status(job.key)
        assert st.state == "failed" and "No space left" in st.error
        assert not again.queue
    finally:
        again.close()


def test_cache_verify_names_the_corrupted_shard(tiny_model: Path, tmp_path: Path) -> None:
    spec, task = resolve(CacheRequest(model=str(tiny_model), limit=8, shard_rows=9, layers=[1]), str(tiny_model))
    m = precompute(spec, task, Encoder(str(tiny_model)), tmp_path / "c")
    runner = CliRunner()
    ok = runner.invoke(app, ["cache", "verify", str(tmp_path / "c" / m.key)])
    assert ok.exit_code == 0 and f"{m.n_shards} shards" in ok.output
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "c" / m.key, bad)
    shard = bad / "rows" / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    res = runner.invoke(app, ["cache", "verify", str(bad)])
    assert res.exit_code == 2 and "rows/shard-00001.arrow" in res.output
    missing = runner.invoke(app, ["cache", "verify", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no cache" in missing.output


def test_token_roots_and_queue(make_server, tiny_model: Path, tmp_path: Path) -> None:  # noqa: ANN001
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(tmp_path / "c"),
                      ROBUSTKD_API_TOKEN="s3cret", ROBUSTKD_MODEL_ROOTS=json.dumps([str(tiny_model)]),
                      ROBUSTKD_DATA_ROOTS=json.dumps([str(tmp_path / "data")])).start()
    body = {"limit": 6, "shard_rows": 6, "layers": [1]}
    auth = {"Authorization": "Bearer s3cret"}
    assert httpx.post(srv.url + "/v1/caches", json=body).status_code == 401
    assert httpx.post(srv.url + "/v1/caches", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(srv.url + "/v1/caches", json={**body, "model": "/etc"}, headers=auth)
    assert r.status_code == 422 and "allowed root" in r.text
    r = httpx.post(srv.url + "/v1/caches", json={**body, "task": "file", "path": "/etc/passwd", "label_column": "a",
                                                 "domain_column": "b", "id_domains": ["x"], "ood_domains": ["y"],
                                                 "text_column": "t"}, headers=auth)
    assert r.status_code == 422 and "path" in r.text
    # three jobs: the later ones report their place in the queue; one is cancelled while queued
    keys = []
    for seed in (1, 2, 3):
        r = httpx.post(srv.url + "/v1/caches", json={**body, "perturb_seed": seed}, headers=auth)
        assert r.status_code == 202
        keys.append(r.json()["key"])
    last = httpx.get(f"{srv.url}/v1/jobs/{keys[2]}").json()
    if last["state"] == "queued":
        assert last["position"] is not None and last["position"] >= 0
        assert httpx.delete(f"{srv.url}/v1/jobs/{keys[2]}").status_code == 401
        c = httpx.delete(f"{srv.url}/v1/jobs/{keys[2]}", headers=auth)
        assert c.status_code == 200 and c.json()["state"] == "cancelled"
    for k in keys[:2]:
        assert wait_job(srv.url, k)["state"] == "succeeded"
    assert httpx.get(f"{srv.url}/v1/caches/{keys[0]}").status_code == 200  # reads need no token
    assert httpx.delete(f"{srv.url}/v1/caches/{keys[0]}").status_code == 401
    assert httpx.delete(f"{srv.url}/v1/caches/{keys[0]}", headers=auth).status_code == 200
