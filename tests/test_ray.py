"""Precompute on Ray, on a local Ray cluster: the local engine's bytes, a killed worker retried, a stopped run
resumed, and the service with ROBUSTKD_ENGINE=ray."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from robustkd.shared import layout
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.testing import cache_digest, wait_job
from tests.conftest import REPO

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# a linear-probe head: its shards are forwarded by parallel tasks first, then one task fits it
REQ = dict(limit=16, shard_rows=12, layers=[1, 2])


def request(model: Path) -> CacheRequest:
    return CacheRequest(model=str(model), **REQ)


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[layout.Manifest, str]:
    """The cache the local engine writes, and its digest."""
    torch.set_num_threads(1)
    spec, task = resolve(request(tiny_model), str(tiny_model))
    root = tmp_path_factory.mktemp("local")
    m = precompute(spec, task, Encoder(str(tiny_model)), root)
    return m, cache_digest(root / m.key)


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201 - a local Ray with two CPUs, started in this process
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def precompute_ray(model: Path, root: Path, **kw):  # noqa: ANN003, ANN201
    from robustkd.teacher_service.ray_engine import precompute_ray as run

    spec, task = resolve(request(model), str(model))
    return run(spec, task, str(root), threads=1, **kw)


def marker_times(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "shards").glob("*.json")}


def test_ray_engine_writes_the_local_engines_bytes(cluster, tiny_model: Path, reference, tmp_path: Path) -> None:  # noqa: ANN001
    local, digest = reference
    m = precompute_ray(tiny_model, tmp_path)
    assert m.key == local.key and m.n_shards > 4
    assert cache_digest(tmp_path / m.key) == digest
    assert [s.model_dump() for s in m.shards] == [s.model_dump() for s in local.shards]
    assert CacheReader(str(tmp_path / m.key)).read_rows(0, m.n_rows).rows.num_rows == m.n_rows  # checksums hold
    assert precompute_ray(tiny_model, tmp_path) == m  # complete: found, nothing written


def test_a_worker_killed_mid_shard_is_retried_with_identical_bytes(cluster, tiny_model: Path, reference,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    """kill -9 the Ray worker process that holds a shard's lock (it is between claiming and writing it)."""
    local, digest = reference
    shards = tmp_path / local.key / "shards"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(m=precompute_ray(tiny_model, tmp_path)))
    run.start()
    killed = []
    while run.is_alive() and not killed:
        for proc in psutil.Process().children(recursive=True):
            try:
                held = [f.path for f in proc.open_files() if f.path.startswith(str(shards)) and
                        f.path.endswith(".lock")]
                if held:
                    proc.kill()
                    killed.append((proc.pid, Path(held[0]).name))
                    break
            except psutil.Error:
                continue
        time.sleep(0.005)
    run.join(300)
    assert killed, "no worker was caught holding a shard"
    assert not psutil.pid_exists(killed[0][0]) or psutil.Process(killed[0][0]).status() == psutil.STATUS_ZOMBIE
    assert result["m"] is not None and result["m"].key == local.key
    assert cache_digest(tmp_path / local.key) == digest


def test_a_stopped_run_resumes_writing_only_the_missing_shards(cluster, tiny_model: Path, reference,  # noqa: ANN001
                                                               tmp_path: Path) -> None:
    """`robustkd precompute --engine ray` killed (with its Ray) after some shards; a rerun writes the others."""
    local, digest = reference
    folder = tmp_path / local.key
    argv = [sys.executable, "-m", "robustkd", "precompute", "--engine", "ray", "--workers", "1", "--model",
            str(tiny_model), "--limit", str(REQ["limit"]), "--shard-rows", str(REQ["shard_rows"]), "--layers", "1,2"]
    env = {**os.environ, "ROBUSTKD_CACHE_ROOT": str(tmp_path), "ROBUSTKD_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(marker_times(folder)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = marker_times(folder)
    assert 2 <= len(before) < local.n_shards and not (folder / layout.MANIFEST).exists()

    m = precompute_ray(tiny_model, tmp_path)  # on the test's Ray
    after = marker_times(folder)
    assert {k: after[k] for k in before} == before  # the shards done before were not written again
    assert len(after) == local.n_shards and m.timings["rows_per_s"] > 0
    assert sum(s.stop - s.start for s in m.shards if f"{layout.shard_name(s.index)}.json" not in before) \
        == local.n_rows - sum(s.stop - s.start for s in local.shards if f"{layout.shard_name(s.index)}.json" in before)
    assert cache_digest(folder) == digest


def test_service_with_the_ray_engine_answers_jobs(make_server, tiny_model: Path, reference, tmp_path: Path) -> None:  # noqa: ANN001
    local, digest = reference
    body = {"model": str(tiny_model), **REQ}
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(tmp_path / "svc"),
                      ROBUSTKD_ENGINE="ray").start()
    r = httpx.post(srv.url + "/v1/caches", json=body, timeout=60)
    assert r.status_code == 202 and r.json()["key"] == local.key
    job = wait_job(srv.url, local.key)
    assert job["state"] == "succeeded", job
    assert job["progress"]["rows_done"] == job["progress"]["rows_total"] == local.n_rows
    ray_processes = [" ".join(c.cmdline()) for c in psutil.Process(srv.proc.pid).children(recursive=True)]
    assert any("raylet" in c for c in ray_processes), ray_processes  # the service started Ray for the job
    assert httpx.post(srv.url + "/v1/caches", json=body, timeout=60).status_code == 200
    assert cache_digest(tmp_path / "svc" / local.key) == digest
    remote = CacheReader(f"{srv.url}/v1/caches/{local.key}")
    assert remote.read_shard(1).rows.equals(CacheReader(str(tmp_path / "svc" / local.key)).read_shard(1).rows)
