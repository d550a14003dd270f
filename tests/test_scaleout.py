"""Scale-out: DDP training on 2 CPU processes (gloo), and precompute by 2 workers on a folder and on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustkd.shared import layout
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.testing import free_port
from tests.conftest import REPO

REQ = dict(limit=12, shard_rows=9, layers=[1, 2])


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> layout.Manifest:
    torch.set_num_threads(1)
    spec, task = resolve(CacheRequest(model=str(tiny_model), **REQ), str(tiny_model))
    root = tmp_path_factory.mktemp("ref")
    m = precompute(spec, task, Encoder(str(tiny_model)), root)
    m.__dict__["root"] = root
    return m


def precompute_cmd(tiny_model: Path, worker: int) -> list[str]:
    return [sys.executable, "-m", "robustkd", "precompute", "--model", str(tiny_model), "--limit", "12",
            "--shard-rows", "9", "--layers", "1,2", "--worker", str(worker), "--workers", "2"]


def run_workers(tiny_model: Path, env: dict[str, str]) -> None:
    procs = [subprocess.Popen(precompute_cmd(tiny_model, w), cwd=REPO, env={**os.environ, "ROBUSTKD_THREADS": "1",
                                                                            **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out


def test_two_workers_on_a_folder_equal_one_process(tiny_model: Path, reference: layout.Manifest,
                                                   tmp_path: Path) -> None:
    run_workers(tiny_model, {"ROBUSTKD_CACHE_ROOT": str(tmp_path)})
    m = CacheReader(str(tmp_path / reference.key)).manifest
    assert [s.model_dump() for s in m.shards] == [s.model_dump() for s in reference.shards]
    assert m.n_shards > 4


@pytest.mark.slow
def test_two_workers_on_s3_compatible_store(tiny_model: Path, reference: layout.Manifest, tmp_path: Path) -> None:
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        import fsspec

        fsspec.config.conf["s3"] = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]}  # env is read at import
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("robustkd")
        run_workers(tiny_model, {**env, "ROBUSTKD_CACHE_ROOT": "s3://robustkd/caches"})
        reader = CacheReader(f"s3://robustkd/caches/{reference.key}")
        assert [s.model_dump() for s in reader.manifest.shards] == [s.model_dump() for s in reference.shards]
        local = CacheReader(str(reference.root / reference.key))
        a, b = reader.read_shard(2), local.read_shard(2)  # checksums verified on read
        assert a.rows.equals(b.rows)
        assert (a.targets["layer_1"] == b.targets["layer_1"]).all()
    finally:
        import fsspec

        fsspec.config.conf.pop("s3", None)
        for k in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.pop(k, None)
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_ddp_two_processes_match_one(reference: layout.Manifest, tmp_path: Path) -> None:
    cache = str(reference.root / reference.key)
    common = ["--cache", cache, "--method", "ours", "--max-steps", "6", "--threads", "1", "--lr", "1e-3"]
    one = subprocess.run([sys.executable, "-m", "robustkd", "train", *common, "--batch-groups", "4",
                          "--out", str(tmp_path / "one")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "robustkd", "train", *common, "--batch-groups", "2",
                          "--out", str(tmp_path / "two")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["world_size"] == 2
    for split in ("test", "ood_test"):
        for metric in ("accuracy", "macro_f1"):
            a, b = m1["student"][split][metric], m2["student"][split][metric]
            assert abs(a - b) <= 0.1, (split, metric, a, b)
    print({s: (m1["student"][s]["accuracy"], m2["student"][s]["accuracy"]) for s in ("test", "ood_test")})
