"""Precompute throughput by engine: the local engine vs Ray with 1 and 2 workers, on the same cache.

    python benchmarks/precompute_engines.py [--task sentiment-rt-drugs] [--limit 100] [--shard-rows 60]
                                            [--model M] [--workers 1,2]

Each run writes the same cache (same key) into a fresh folder and is checked to hold the same bytes as the first.
A first, untimed run builds the model's embedding-neighbour table, which every run then finds beside its cache
(as later caches of a model do).
`wall` is the whole call (for Ray: a local Ray started for it, its workers' imports and model loads included);
`rows/s` is the manifest's (rows over setup and shards; Ray's start excluded). Local runs use 1 and then every
torch thread; each Ray worker uses 1 (ROBUSTKD_THREADS=1 per task), so Ray with N workers asks for N CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from robustkd.shared.models import default_model
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.lm import load_teacher
from robustkd.teacher_service.neighbours import NEIGHBOURS_DIR
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.testing import cache_digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sentiment-rt-drugs")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--shard-rows", type=int, default=60)
    ap.add_argument("--model", default=None)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated.")
    args = ap.parse_args()
    import ray

    from robustkd.teacher_service.ray_engine import precompute_ray

    model = args.model or default_model()
    spec, task = resolve(CacheRequest(task=args.task, limit=args.limit, shard_rows=args.shard_rows, model=model),
                         model)
    cores = len(os.sched_getaffinity(0))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = precompute(spec, task, load_teacher(model), f"{tmp}/warm")
        digest = cache_digest(Path(tmp) / "warm" / warm.key)
        runs = [("local", 1), ("local", cores)] + [("ray", int(w)) for w in args.workers.split(",")]
        for i, (engine, n) in enumerate(runs):
            root = Path(tmp) / str(i)
            shutil.copytree(Path(tmp) / "warm" / NEIGHBOURS_DIR, root / NEIGHBOURS_DIR)
            t0 = time.perf_counter()
            if engine == "local":
                m = precompute(spec, task, load_teacher(model, threads=n), str(root))
            else:
                ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
                try:
                    m = precompute_ray(spec, task, str(root), threads=1)
                finally:
                    ray.shutdown()
            wall = time.perf_counter() - t0
            assert cache_digest(root / m.key) == digest, f"{engine} x{n} wrote other bytes"
            results.append((engine, n, wall, m))
    name = Path(model).parent.name if Path(model).name == "model" else Path(model).name
    print(f"task {args.task}, model {name}: {m.n_rows} rows, {m.n_shards} shards, {cores} cores, "
          f"load {os.getloadavg()[0]:.1f}; every run wrote the same bytes")
    for engine, n, wall, mm in results:
        what = f"{n} thread{'s' * (n > 1)}" if engine == "local" else f"{n} worker{'s' * (n > 1)} x 1 thread"
        print(f"{engine:5s} {what:22s} wall {wall:6.1f}s  {mm.n_rows / wall:6.1f} rows/s whole  "
              f"{mm.timings['rows_per_s']:6.1f} rows/s (manifest: setup {mm.timings['head_s']:.1f}s, "
              f"shards {mm.timings['shards_s']:.1f}s)")
    print(f"torch {torch.__version__}, ray {ray.__version__}")


if __name__ == "__main__":
    main()
