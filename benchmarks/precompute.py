"""Precompute throughput: rows/s of the whole precompute vs the bare teacher forward on the same batches.

    python benchmarks/precompute.py [--task sentiment-rt-drugs] [--limit N] [--threads T] [--model M] [--head H]

The whole precompute includes perturbation, tokenisation, head fitting and writing. It runs twice into fresh
cache folders: `cold`, the first cache of this model (the embedding-neighbour table is built), and `warm`, a
later cache of the same model (the table is reused, as the service and later processes do). The bare forward
replays the same per-shard, length-sorted batches through the model and nothing else. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from robustkd.shared.models import default_model
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.forward import length_batches
from robustkd.teacher_service.lm import load_teacher
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.store import Store
from robustkd.trainer.train import PeakMemory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sentiment-rt-drugs")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--head", default="linear-probe")
    args = ap.parse_args()
    model = args.model or default_model()
    spec, task = resolve(CacheRequest(task=args.task, limit=args.limit, model=model, head=args.head), model)
    mem = PeakMemory().__enter__()
    enc = load_teacher(spec.teacher.model, threads=args.threads)
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cold", "warm"):
            root = f"{tmp}/{name}"
            t0 = time.perf_counter()
            m = precompute(spec, task, enc, root)
            timings[name] = (time.perf_counter() - t0, m)
        size = Store(f"{tmp}/warm/{m.key}").size_bytes()
        reader = CacheReader(str(Path(tmp) / "warm" / m.key), verify=False)
        shards = [reader.read_shard(k).rows.column("input_ids").to_pylist() for k in range(m.n_shards)]
    t0 = time.perf_counter()
    for seqs in shards:  # the same per-shard, length-sorted batches as the pipeline
        for batch in length_batches([len(s) for s in seqs]):
            enc.forward_ids([seqs[i] for i in batch], spec.teacher.layers, spec.teacher.pooling)
    bare = time.perf_counter() - t0
    mem.__exit__()
    n = m.n_rows
    print(f"task {args.task}: {n} rows, {m.n_shards} shards, cache {size / 2**20:.1f} MiB on disk, "
          f"threads {torch.get_num_threads()}")
    for name, (whole, mm) in timings.items():
        print(f"whole precompute ({name}): {whole:.1f}s  {n / whole:.1f} rows/s  (head {mm.timings['head_s']:.1f}s, "
              f"shards {mm.timings['shards_s']:.1f}s)  ratio (whole / bare rows/s): {bare / whole:.3f}")
    print(f"bare forward:           {bare:.1f}s  {n / bare:.1f} rows/s")
    print(f"peak RSS (model loaded, both precomputes, bare forward): {mem.summary()['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
