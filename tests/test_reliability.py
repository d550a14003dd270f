"""Crash safety, write errors, integrity and access control of the teacher service."""

from __future__ import annotations

import errno
import shutil
import threading
import time
from collections import deque
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
    jobs = JobManager(settings).start()
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


def test_queue_positions_and_cancel_are_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    """Jobs wait in order until the worker starts; a queued job cancelled stays cancelled across a restart."""
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1)
    jobs = JobManager(settings)  # not started: every job stays queued
    keys = []
    for seed in (1, 2, 3):
        code, job = jobs.submit(CacheRequest(limit=6, shard_rows=6, layers=[1], perturb_seed=seed))
        assert code == 202 and job.state == "queued" and job.position == seed - 1
        keys.append(job.key)
    assert jobs.cancel(keys[2]).state == "cancelled"
    assert jobs.status(keys[1]).position == 1
    jobs.close()
    again = JobManager(settings).start()  # restored from the job files, in submission order
    try:
        assert list(again.queue) == keys[:2]
        for k in keys[:2]:
            deadline = time.time() + 300
            while again.status(k).state in ("queued", "running") and time.time() < deadline:
                time.sleep(0.05)
            assert again.status(k).state == "succeeded"
        assert again.status(keys[2]).state == "cancelled"
    finally:
        again.close()


def test_health_and_queue_positions_read_jobs_under_the_lock(tiny_model: Path, tmp_path: Path) -> None:
    """Handlers read and change `jobs` and `queue` while the worker changes them: all under the manager's lock (a
    read without it can fail mid-change: "dictionary changed size during iteration")."""
    jobs = JobManager(Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1))
    reads: list[tuple[str, bool]] = []

    def locked() -> bool:
        """Whether another thread is kept out of the lock now (this one holds it)."""
        free = []

        def probe() -> None:
            free.append(jobs.cond.acquire(blocking=False))
            if free[0]:
                jobs.cond.release()

        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return not free[0]

    class Jobs(dict):
        def items(self):  # noqa: ANN202
            reads.append(("jobs", locked()))
            return super().items()

        def pop(self, *args: object) -> object:
            reads.append(("jobs.pop", locked()))
            return super().pop(*args)

    class Queue(deque):
        def __iter__(self):  # noqa: ANN204
            reads.append(("queue", locked()))
            return super().__iter__()

        def __contains__(self, key: object) -> bool:
            reads.append(("queue", locked()))
            return super().__contains__(key)

    jobs.jobs, jobs.queue = Jobs(jobs.jobs), Queue(jobs.queue)
    try:
        _, job = jobs.submit(CacheRequest(limit=6, shard_rows=6, layers=[1]))
        assert jobs.status(job.key).position == 0
        jobs.cancel(job.key)
        jobs.start().ready.wait(60)
        assert jobs.health() is None
        assert jobs.delete(job.key) is False and jobs.status(job.key) is None  # it had no cache folder yet
    finally:
        jobs.close()
    assert {name for name, _ in reads} == {"jobs", "queue", "jobs.pop"}
    assert all(held for _, held in reads), reads
