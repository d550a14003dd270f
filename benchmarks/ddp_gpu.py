"""DDP training on GPUs: 2 processes with NCCL, one GPU each (the check of the set_device/NCCL fix).

    python benchmarks/ddp_gpu.py [--limit 64] [--steps 20] [--out runs/ddp-gpu]

Precomputes a small cache of the default task with the default model (on the GPU: bfloat16 autocast, which
the cache key records), then runs `torchrun --nproc_per_node 2 -m robustkd train` on it and prints the
train summary. NCCL needs a GPU per rank: with fewer than 2 GPUs it says so and exits 0 without training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.local import precompute_local
from robustkd.teacher_service.settings import Settings
from robustkd.testing import free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/ddp-gpu")
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"{gpus} GPU(s) here: NCCL DDP needs one GPU per rank, so 2; nothing run")
        return 0
    out = Path(args.out)
    settings = Settings(cache_root=str(out / "cache"))
    cache = precompute_local(CacheRequest(limit=args.limit), settings)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "robustkd", "train", "--cache", cache.location, "--out", str(out / "run"), "--max-steps",
           str(args.steps), "--batch-groups", "8", "--no-evaluate"]
    subprocess.run(cmd, check=True)
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    print(json.dumps({k: summary[k] for k in ("world_size", "device", "steps", "train_s", "s_per_step",
                                               "peak_cuda_mb") if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
