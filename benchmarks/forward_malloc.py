"""The teacher's forward under glibc malloc settings: why the service lowers its mmap threshold only while row
streams run (teacher_service/memory.py).

    python benchmarks/forward_malloc.py                                  # glibc's sliding threshold
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/forward_malloc.py    # fixed 128 KiB: large tensors mapped afresh
    MALLOC_MMAP_THRESHOLD_=33554432 python benchmarks/forward_malloc.py  # fixed 32 MiB: what streams leave behind

MiniLM (the default teacher), a batch of 32 x 128 tokens with every hidden state, 1 thread, 5 timed passes after
one warm-up; prints the minimum and median seconds.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from transformers import AutoModel

from robustkd.shared.models import default_model


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(default_model()).eval()
    ids = torch.randint(1000, 5000, (32, 128))
    times = []
    with torch.inference_mode():
        model(input_ids=ids, output_hidden_states=True)
        for _ in range(5):
            t0 = time.perf_counter()
            model(input_ids=ids, output_hidden_states=True)
            times.append(time.perf_counter() - t0)
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_") or "glibc's sliding threshold"
    print(f"mmap threshold {threshold}: forward min {min(times):.3f} s, median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
