"""Scale-out: DDP training on 2 CPU processes (gloo), and precompute by 2 workers on a folder and on S3, and by 3 on a
generative cache."""

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

# the probe head: with zero-shot targets this random tiny model's embedding rows get near-zero gradients, which
# Adam turns into ±lr steps that differ between the two summation orders (every other weight stays within 5e-6)
REQ = dict(limit=12, shard_rows=9, layers=[1, 2], head="linear-probe")


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
            "--shard-rows", "9", "--layers", "1,2", "--head", "linear-probe", "--worker", str(worker), "--workers", "2"]


def run_workers(tiny_model: Path, env: dict[str, str]) -> None:
    procs = [subprocess.Popen(precompute_cmd(tiny_model, w), cwd=REPO, env={**os.environ, "ROBUSTKD_THREADS": "1",
                                                                            **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out


@pytest.mark.slow
def test_two_workers_on_a_folder_equal_one_process(tiny_model: Path, reference: layout.Manifest,
                                                   tmp_path: Path) -> None:
    run_workers(tiny_model, {"ROBUSTKD_CACHE_ROOT": str(tmp_path)})
    m = CacheReader(str(tmp_path / reference.key)).manifest
    assert [s.model_dump() for s in m.shards] == [s.model_dump() for s in reference.shards]
    assert m.n_shards > 4


@pytest.fixture
def s3():  # noqa: ANN201 - yields the environment that points fsspec's s3 at a local moto server
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    import fsspec

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
        fsspec.config.conf["s3"] = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]}  # env is read at import
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("robustkd")
        yield env
    finally:
        fsspec.config.conf.pop("s3", None)
        for k in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.pop(k, None)
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_two_workers_on_s3_compatible_store(tiny_model: Path, reference: layout.Manifest, s3: dict) -> None:
    run_workers(tiny_model, {**s3, "ROBUSTKD_CACHE_ROOT": "s3://robustkd/caches"})
    reader = CacheReader(f"s3://robustkd/caches/{reference.key}")
    assert [s.model_dump() for s in reader.manifest.shards] == [s.model_dump() for s in reference.shards]
    local = CacheReader(str(reference.root / reference.key))
    a, b = reader.read_shard(2), local.read_shard(2)  # checksums verified on read
    assert a.rows.equals(b.rows)
    assert (a.targets["layer_1"] == b.targets["layer_1"]).all()


@pytest.mark.slow
def test_service_with_an_s3_cache_root(make_server, tiny_model: Path, reference: layout.Manifest, s3: dict,  # noqa: ANN001
                                       tmp_path: Path) -> None:
    """The service's caches and job records on S3: nothing lands in a local `s3:` folder."""
    import fsspec
    import httpx

    from robustkd.testing import wait_job

    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT="s3://robustkd/svc", **s3).start()
    r = httpx.post(srv.url + "/v1/caches", json=REQ, timeout=60)
    assert r.status_code == 202 and r.json()["key"] == reference.key
    assert wait_job(srv.url, reference.key)["state"] == "succeeded"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.exists(f"robustkd/svc/{reference.key}/manifest.json")
    assert fs.exists(f"robustkd/svc/_jobs/{reference.key}.json")
    assert not (REPO / "s3:").exists() and not (tmp_path / "s3:").exists()
    assert [c["key"] for c in httpx.get(srv.url + "/v1/caches").json()] == [reference.key]
    remote = CacheReader(f"{srv.url}/v1/caches/{reference.key}")
    assert remote.read_shard(1).rows.equals(CacheReader(str(reference.root / reference.key)).read_shard(1).rows)
    assert httpx.delete(f"{srv.url}/v1/caches/{reference.key}").status_code == 200
    assert not fs.exists(f"robustkd/svc/{reference.key}")


CONCAT_RANKS = """
import json, sys
import torch
from safetensors.torch import save_file
from robustkd.shared.features import pad_batch
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.stream import CacheStream
from robustkd.trainer.train import Trainer

def concat(a, b):
    ids = [r[m.bool()].tolist() for x in (a, b) for r, m in zip(x["input_ids"], x["attention_mask"])]
    ids, mask = pad_batch(ids, 0)
    out = {k: torch.cat([a[k], b[k]]) for k in a if k not in ("input_ids", "attention_mask")}
    return {**out, "input_ids": ids, "attention_mask": mask}

cfg = TrainConfig.model_validate_json(sys.argv[1])
tr = Trainer(cfg)
ranks = [CacheStream(tr.reader, batch_groups=cfg.batch_groups, rank=r, world_size=2) for r in (0, 1)]
steps = min(len(s) for s in ranks)
epoch = 0
while tr.step_no < cfg.max_steps:
    for s in ranks:
        s.set_epoch(epoch)
    for i, (a, b) in enumerate(zip(*ranks)):
        if i >= steps or tr.step_no >= cfg.max_steps:
            break
        tr.step(concat(a, b))
    epoch += 1
save_file({k: v.contiguous() for k, v in tr.student.state_dict().items()}, sys.argv[2])
"""


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_union_of_their_batches(reference: layout.Manifest,
                                                                          tmp_path: Path) -> None:
    """2 gloo ranks of 2 groups each == one process stepping on each step's two rank batches together."""
    from safetensors.torch import load_file

    from robustkd.trainer.config import TrainConfig

    cache = str(reference.root / reference.key)
    # dropout off: ours' default λ3 = 0 turns it on, and two ranks would draw other masks than one process
    common = ["--cache", cache, "--method", "ours", "--max-steps", "6", "--threads", "1", "--lr", "1e-3",
              "--batch-groups", "2", "--no-evaluate", "--no-dropout"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "robustkd", "train", *common, "--out", str(tmp_path / "two")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["world_size"] == 2
    cfg = TrainConfig(cache=cache, out=str(tmp_path / "one"), method="ours", max_steps=6, threads=1, lr=1e-3,
                      batch_groups=2, evaluate=False, dropout=False)
    one = subprocess.run([sys.executable, "-c", CONCAT_RANKS, cfg.model_dump_json(), str(tmp_path / "one.st")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / "two" / "checkpoint" / "student.safetensors"))
    b = load_file(str(tmp_path / "one.st"))
    moved = [k for k in a if not torch.equal(a[k], torch.zeros_like(a[k]))]
    assert moved and a.keys() == b.keys()
    # Adam turns float noise on near-zero gradient entries (the two runs sum token gradients in another order) into
    # steps of up to ±lr: in the word embeddings a handful of single entries may differ; everything else is tight
    emb = "backbone.embeddings.word_embeddings.weight"
    off = ((a[emb] - b[emb]).abs() > 2e-5).sum().item()
    assert off <= 1e-5 * a[emb].numel(), off
    for k in a.keys() - {emb}:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)


def test_distributed_setup_sets_the_rank_device_before_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's pattern for NCCL: torch.cuda.set_device(local rank), then init_process_group. No GPU here, so
    the CUDA and process-group calls are recorded instead of made."""
    import torch.distributed as dist

    from robustkd.trainer import train

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls and calls[-1][0] == "init"))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend,
                                                                                         str(kw.get("device_id")))))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    rank, world, device = train.distributed_setup()
    assert calls == [("set_device", "cuda:1"), ("init", "nccl", "cuda:1")]
    assert (rank, world, str(device)) == (1, 2, "cuda:1")


def test_index_from_an_indexed_job_or_a_slurm_array(tiny_model: Path, reference: layout.Manifest,
                                                    tmp_path: Path) -> None:
    """Without --worker, the index comes from JOB_COMPLETION_INDEX (the count from --workers) or from a SLURM
    array's SLURM_ARRAY_TASK_ID, counted from SLURM_ARRAY_TASK_MIN (the count from SLURM_ARRAY_TASK_COUNT)."""
    from typer.testing import CliRunner

    from robustkd.cli import app

    args = precompute_cmd(tiny_model, 0)[3:-4]  # the request, without --worker/--workers
    base = {"ROBUSTKD_CACHE_ROOT": str(tmp_path), "ROBUSTKD_THREADS": "1"}
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--workers", "2"], env={**base, "JOB_COMPLETION_INDEX": "1"})
    assert r.exit_code == 0 and "worker 1/2" in r.output, r.output
    markers = sorted(p.name for p in (tmp_path / reference.key / "shards").glob("*.json"))
    assert markers == [f"{layout.shard_name(k)}.json" for k in range(1, reference.n_shards, 2)]
    r = runner.invoke(app, args, env={**base, "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "7",
                                      "SLURM_ARRAY_TASK_COUNT": "2"})
    assert r.exit_code == 0 and "wrote" in r.output, r.output  # worker 0 of 2 wrote the rest, then the manifest
    m = CacheReader(str(tmp_path / reference.key)).manifest
    assert [s.model_dump() for s in m.shards] == [s.model_dump() for s in reference.shards]
    r = runner.invoke(app, args, env={**base, "JOB_COMPLETION_INDEX": "1"})
    assert r.exit_code == 2 and "--workers" in r.output, r.output


def test_engine_options_are_checked(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app
    from robustkd.teacher_service import local

    args, env = precompute_cmd(tiny_model, 0)[3:-4], {"ROBUSTKD_CACHE_ROOT": str(tmp_path)}
    r = CliRunner().invoke(app, [*args, "--engine", "spark"], env=env)
    assert r.exit_code == 2 and "engine: must be local or ray, got 'spark'" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--engine", "ray", "--worker", "1"], env=env)
    assert r.exit_code == 2 and "Ray places the shards itself" in r.output, r.output
    monkeypatch.setattr(local, "find_spec", lambda name: None)  # as where the ray extra is not installed
    r = CliRunner().invoke(app, [*args, "--engine", "ray"], env=env)
    assert r.exit_code == 2 and "pip install 'robustkd[ray]'" in r.output, r.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_generative_cache_by_three_workers_equals_one_process(tmp_path: Path) -> None:
    """Workers on a generative cache with the unrelated prompts (the teacher answers those itself at precompute): the
    same shards, byte for byte, as one process writes."""
    from robustkd.testing import make_tiny_llama

    llama = make_tiny_llama(tmp_path / "llama", seed=3)
    args = [sys.executable, "-m", "robustkd", "precompute", "--model", str(llama), "--task", "condition-drugs",
            "--limit", "8", "--variants", "1", "--max-length", "96", "--general-max-new-tokens", "12",
            "--shard-rows", "16", "--sparse", "top-k", "--sparse-k", "8", "--general-prompts"]
    env = {**os.environ, "ROBUSTKD_THREADS": "1"}
    subprocess.run(args, cwd=REPO, env={**env, "ROBUSTKD_CACHE_ROOT": str(tmp_path / "one")}, check=True,
                   capture_output=True)
    procs = [subprocess.Popen([*args, "--worker", str(w), "--workers", "3"], cwd=REPO,
                              env={**env, "ROBUSTKD_CACHE_ROOT": str(tmp_path / "three")},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    key = next(p.name for p in (tmp_path / "one").iterdir() if len(p.name) == 64)
    one, three = CacheReader(str(tmp_path / "one" / key)).manifest, CacheReader(str(tmp_path / "three" / key)).manifest
    assert one.n_shards >= 3 and layout.GENERAL in one.splits
    assert [s.model_dump() for s in three.shards] == [s.model_dump() for s in one.shards]
