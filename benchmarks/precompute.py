"""Precompute throughput: rows/s of the whole precompute vs the bare teacher forward on the same batches.

    python benchmarks/precompute.py [--task sentiment-rt-drugs] [--limit N] [--threads T]

The whole precompute includes perturbation, tokenisation, head fitting, neighbour tables and writing;
the bare forward replays the same length-sorted batches through the model and nothing else.
Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shared.layout import CacheReader  # noqa: E402
from shared.schemas import CacheRequest  # noqa: E402
from teacher_service.model import Encoder  # noqa: E402
from teacher_service.precompute import cache_size_bytes, length_batches, precompute, resolve  # noqa: E402
from teacher_service.settings import default_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sentiment-rt-drugs")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_model()
    spec, task = resolve(CacheRequest(task=args.task, limit=args.limit, model=model), model)
    enc = Encoder(spec.teacher.model, threads=args.threads)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        m = precompute(spec, task, enc, root)
        whole = time.perf_counter() - t0
        size = cache_size_bytes(root, m.key)
        reader = CacheReader(str(Path(root) / m.key), verify=False)
        shards = [reader.read_shard(k).rows.column("input_ids").to_pylist() for k in range(m.n_shards)]
    t0 = time.perf_counter()
    for seqs in shards:  # the same per-shard, length-sorted batches as the pipeline
        for batch in length_batches([len(s) for s in seqs]):
            enc.forward_ids([seqs[i] for i in batch], spec.teacher.layers, spec.teacher.pooling)
    bare = time.perf_counter() - t0
    n = m.n_rows
    print(f"task {args.task}: {n} rows, {m.n_shards} shards, cache {size / 2**20:.1f} MiB on disk, "
          f"threads {torch.get_num_threads()}")
    print(f"whole precompute: {whole:.1f}s  {n / whole:.1f} rows/s  "
          f"(head {m.timings['head_s']:.1f}s, shards {m.timings['shards_s']:.1f}s)")
    print(f"bare forward:     {bare:.1f}s  {n / bare:.1f} rows/s")
    print(f"ratio (whole / bare rows/s): {bare / whole:.3f}")


if __name__ == "__main__":
    main()
