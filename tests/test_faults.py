"""Faults that would stop the service or lose data if unhandled (issue #9, items 1-3).

Write errors: fault-injected (runs everywhere) and, as root, a real 600 KiB tmpfs and a read-only remount.
Symlinks and foreign folders in the cache root, against a real server. Cancellation that sticks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from robustkd.shared import layout
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service import store as store_module
from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.jobs import JobManager
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.settings import Settings
from robustkd.testing import wait_job

BODY = {"task": "sentiment-rt-drugs", "limit": 6, "shard_rows": 9, "layers": [1, 2]}
FAST = {**BODY, "transforms": ["keyboard_typo", "word_dropout"]}  # no neighbour table to build first


def settle(client: TestClient, key: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{key}").json()
        if job["state"] not in ("queued", "running", "cancelling"):
            return job
        time.sleep(0.05)
    raise TimeoutError(key)


def wait_ready(client: TestClient, timeout: float = 120) -> httpx.Response:
    deadline = time.time() + timeout
    while (r := client.get("/readyz")).status_code != 200 and time.time() < deadline:
        time.sleep(0.05)
    return r


def record(root: Path, key: str) -> dict:
    return json.loads((root / "_jobs" / f"{key}.json").read_text())


# ---- 1. write errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_write_errors_never_kill_the_worker_nor_half_enqueue(code: int, tiny_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails once the job runs: the job fails, the worker lives on, POST is refused whole."""
    real = store_module.Store.write_bytes
    full = threading.Event()
    why = os.strerror(code)

    def maybe_full(self: store_module.Store, rel: str, data: bytes) -> None:
        if full.is_set():
            raise OSError(code, why)
        real(self, rel, data)

    monkeypatch.setattr(store_module.Store, "write_bytes", maybe_full)
    monkeypatch.setattr(Encoder, "forward_ids", _fill_disk_on_first_forward(Encoder.forward_ids, full))
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1)
    with TestClient(create_app(settings)) as client:
        key = client.post("/v1/caches", json=BODY).json()["key"]
        job = settle(client, key)
        assert job["state"] == "failed" and why in job["error"], job
        assert record(tmp_path, key)["state"] == "running"  # the disk is full: the record could not be updated
        ready = client.get("/readyz")
        assert ready.status_code == 503 and why in ready.json()["reason"], ready.text
        other = {**BODY, "perturb_seed": 1}
        r = client.post("/v1/caches", json=other)
        assert r.status_code == 507 and why in r.json()["detail"], r.text
        assert client.get("/v1/jobs/" + _key_of(client, other)).status_code == 404  # nothing half-enqueued
        full.clear()  # space again: the worker saves the failed job's record, then serves new jobs
        deadline = time.time() + 60
        while record(tmp_path, key)["state"] != "failed" and time.time() < deadline:
            time.sleep(0.05)
        assert record(tmp_path, key)["state"] == "failed"
        r = client.post("/v1/caches", json=other)
        assert r.status_code == 202, r.text
        assert settle(client, r.json()["key"])["state"] == "succeeded"
        assert wait_ready(client).status_code == 200
    again = JobManager(settings)  # a restart does not re-run the failed job
    assert again.status(key).state == "failed" and not again.queue


def _fill_disk_on_first_forward(forward, full: threading.Event):  # noqa: ANN001, ANN202
    calls = []

    def wrapped(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not calls:
            full.set()
        calls.append(1)
        return forward(self, *a, **kw)

    return wrapped


def _key_of(client: TestClient, body: dict) -> str:
    """The key a request resolves to, from the worker-less resolver (no write involved)."""
    from robustkd.teacher_service.resolve import resolve

    settings = client.app.state.settings
    return resolve(CacheRequest(**body), settings.model)[0].cache_key()


def test_a_reader_never_sees_a_state_the_record_does_not_have(tiny_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker writes a job's record before it publishes the new state, so a restart agrees with readers.
    The final record is written slowly here, so a worker that published the state first would be caught every time."""
    real = store_module.Store.write_bytes

    def slow_records(self: store_module.Store, rel: str, data: bytes) -> None:
        if "shard-00001.arrow" in rel:
            raise OSError(errno.EIO, "Input/output error")
        if rel.startswith("_jobs/") and b'"failed"' in data:
            time.sleep(0.5)
        real(self, rel, data)

    monkeypatch.setattr(store_module.Store, "write_bytes", slow_records)
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1)
    jobs = JobManager(settings).start()
    try:
        _, job = jobs.submit(CacheRequest(**BODY))
        deadline = time.time() + 300
        while jobs.status(job.key).state != "failed" and time.time() < deadline:
            time.sleep(0.005)
        assert record(tmp_path, job.key)["state"] == "failed"
        assert "Input/output error" in jobs.status(job.key).error
    finally:
        jobs.close()


def test_readyz_reports_a_dead_or_stuck_worker(tiny_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = Encoder.forward_ids

    def stuck(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        release.wait(120)
        return real(self, *a, **kw)

    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1, worker_stall_s=0.5)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client).status_code == 200
        monkeypatch.setattr(Encoder, "forward_ids", stuck)
        key = client.post("/v1/caches", json=BODY).json()["key"]
        deadline = time.time() + 60
        while client.get("/readyz").status_code == 200 and time.time() < deadline:
            time.sleep(0.05)
        r = client.get("/readyz")
        assert r.status_code == 503 and "no progress" in r.json()["reason"], r.text
        release.set()
        assert settle(client, key)["state"] == "succeeded"
        r = wait_ready(client)  # the worker records the end of the job just after its manifest
        assert r.status_code == 200, r.text
        client.app.state.jobs.close()  # the worker ends: readyz must say so
        client.app.state.jobs.thread.join(30)
        r = client.get("/readyz")
        assert r.status_code == 503 and "worker" in r.json()["reason"], r.text


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the fault-injected test above covers write errors")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path):  # noqa: ANN201
    where = tmp_path / "tmpfs"
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_full_disk_and_read_only_root_on_a_real_server(make_server, tiny_model: Path, tmpfs: Path) -> None:  # noqa: ANN001
    _mount_tmpfs(tmpfs, "600k")
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(tmpfs)).start()
    body = FAST  # no neighbour table: it would not fit
    small = httpx.post(srv.url + "/v1/caches", json=body, timeout=60).json()["key"]
    assert wait_job(srv.url, small)["state"] == "succeeded"
    big = {**body, "limit": 400, "shard_rows": 90}  # does not fit in what is left of 600 KiB
    r = httpx.post(srv.url + "/v1/caches", json=big, timeout=60)
    assert r.status_code == 202, r.text
    job = wait_job(srv.url, r.json()["key"])
    assert job["state"] == "failed" and "No space left" in job["error"], job
    assert httpx.delete(f"{srv.url}/v1/caches/{job['key']}", timeout=60).status_code == 200  # frees the space
    again = httpx.post(srv.url + "/v1/caches", json={**body, "perturb_seed": 1}, timeout=60)
    assert again.status_code == 202 and wait_job(srv.url, again.json()["key"])["state"] == "succeeded"

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    r = httpx.post(srv.url + "/v1/caches", json={**body, "perturb_seed": 2}, timeout=60)
    assert r.status_code == 507 and "Read-only" in r.json()["detail"], r.text
    assert httpx.get(srv.url + "/v1/jobs/" + r.json().get("key", "0" * 64)).status_code in (400, 404)
    d = httpx.delete(f"{srv.url}/v1/caches/{small}", timeout=60)
    assert d.status_code == 507 and "Read-only" in d.json()["detail"], d.text
    ready = httpx.get(srv.url + "/readyz", timeout=30)
    assert ready.status_code == 503 and "Read-only" in ready.json()["reason"], ready.text
    assert (tmpfs / small / layout.MANIFEST).exists()
    assert httpx.get(f"{srv.url}/v1/caches/{small}/head", timeout=30).status_code == 200  # reads still work


# ---- 2. symlinks and foreign folders ------------------------------------------------------------
@pytest.mark.slow
def test_symlinks_and_renamed_folders_are_not_served(make_server, tiny_model: Path, tmp_path: Path) -> None:  # noqa: ANN001
    root, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(root)).start()
    keys = []
    for seed in (0, 1):
        r = httpx.post(srv.url + "/v1/caches", json={**FAST, "perturb_seed": seed}, timeout=60)
        keys.append(r.json()["key"])
        assert wait_job(srv.url, keys[-1])["state"] == "succeeded"
    linked, head_linked = keys
    # a copy of a cache under another folder name
    other = "f" * 64
    shutil.copytree(root / head_linked, root / other)
    # a 64-hex symlink to a cache outside the root
    shutil.move(root / linked, outside / linked)
    (root / linked).symlink_to(outside / linked, target_is_directory=True)
    # a head that is a symlink to a copy outside (same bytes: only the link gives it away)
    shutil.copy(root / head_linked / layout.HEAD, outside / "head.copy")
    (root / head_linked / layout.HEAD).unlink()
    (root / head_linked / layout.HEAD).symlink_to(outside / "head.copy")

    for key in (linked, other):
        assert httpx.get(f"{srv.url}/v1/caches/{key}").status_code == 404
        assert httpx.get(f"{srv.url}/v1/caches/{key}/rows", params={"start": 0, "stop": 4}).status_code == 404
        assert httpx.get(f"{srv.url}/v1/caches/{key}/head").status_code == 404
    h = httpx.get(f"{srv.url}/v1/caches/{head_linked}/head")
    assert h.status_code == 409 and "symbolic link" in h.json()["detail"], h.text
    assert httpx.get(f"{srv.url}/v1/caches/{head_linked}/rows", params={"start": 0, "stop": 4}).status_code == 200
    listed = [c["key"] for c in httpx.get(srv.url + "/v1/caches").json()]
    assert listed == [head_linked], listed
    d = httpx.delete(f"{srv.url}/v1/caches/{linked}", timeout=60)
    assert d.status_code == 404, d.text
    assert (outside / linked / layout.MANIFEST).exists() and (root / linked).is_symlink()
    assert httpx.delete(f"{srv.url}/v1/caches/{head_linked}", timeout=60).status_code == 200
    assert (outside / "head.copy").exists() and not (root / head_linked).exists()


# ---- 3. cancellation ----------------------------------------------------------------------------
def test_cancel_sticks_across_a_restart_and_acts_within_a_shard(tiny_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A running job cancelled answers `cancelling`, persists it, and stops at the next batch of its shard."""
    gate, calls = threading.Event(), []
    real = Encoder.forward_ids

    def gated(self, seqs, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(len(seqs))
        if len(calls) == 2:
            gate.wait(120)
        return real(self, seqs, *a, **kw)

    monkeypatch.setattr(Encoder, "forward_ids", gated)
    monkeypatch.setattr("robustkd.teacher_service.forward.TOKENS_PER_BATCH", 256)  # several batches a shard
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1)
    jobs = JobManager(settings).start()
    _, job = jobs.submit(CacheRequest(**{**BODY, "limit": 40, "shard_rows": 300}))
    deadline = time.time() + 120
    while len(calls) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert len(calls) == 2, "the job never reached its second forward batch"
    answer = jobs.cancel(job.key)
    assert answer.state == "cancelling"
    assert record(tmp_path, job.key)["state"] == "cancelling"
    restarted = JobManager(settings)  # as after a crash now: the job is not run again
    assert restarted.status(job.key).state == "cancelled" and not restarted.queue
    gate.set()
    while jobs.status(job.key).state == "cancelling" and time.time() < deadline:
        time.sleep(0.02)
    jobs.close()
    assert jobs.status(job.key).state == "cancelled" and record(tmp_path, job.key)["state"] == "cancelled"
    assert len(calls) == 2, f"forward batches after the cancel: {len(calls) - 2}"
    assert not list((tmp_path / job.key / "shards").glob("*.json"))


@pytest.mark.parametrize("field, value", [
    ("shard_rows", 1_000_000), ("limit", 10**30), ("perturb_seed", 2**70), ("split_seed", -1),
    ("variants", 1000), ("layers", list(range(200))), ("severities", [2] * 100), ("max_length", 10**6),
    ("transforms", ["keyboard_typo"] * 100), ("id_domains", ["x"] * 10_000), ("task", "x" * 10_000),
])
def test_request_sizes_are_bounded(field: str, value: object, tiny_model: Path, tmp_path: Path) -> None:
    """Sizes a client can choose are bounded by the schema: 422 before any work."""
    app = create_app(Settings(cache_root=str(tmp_path), model=str(tiny_model)))
    app.state.jobs = JobManager(app.state.settings)  # not started: nothing runs
    r = TestClient(app).post("/v1/caches", json={**BODY, field: value})
    assert r.status_code == 422 and field in r.text, (r.status_code, r.text[:300])
