"""Training-step cost: median step time and peak memory of ft, ours (cached teacher) and online-kd.

    python benchmarks/train_step.py --cache <key|folder> [--steps 12] [--batch-groups 16] [--adapter full]

Each method runs in its own process on the same batches (same seed, so the same stream order) and the same
rows: ft trains cross-entropy on every row of the batch (clean and perturbed), ours and online-kd add the
distillation and activation terms on the perturbed rows, from the cache or from a teacher run each step.
Targets: ours <= 1.1x ft in time and memory; ours <= 0.6x online-kd in time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

METHODS = {"ft": {"method": "ft", "task_rows": "all", "dropout": False}, "ours": {"method": "ours"},
           "online-kd": {"method": "online-kd"}}


def child(args: argparse.Namespace) -> None:
    import tempfile

    import torch

    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.train import PeakMemory, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(cache=args.cache, out=out, batch_groups=args.batch_groups, seed=0, adapter=args.adapter,
                          max_steps=args.steps + 2, **METHODS[args.child])
        with PeakMemory() as mem:
            tr = Trainer(cfg)
            times = []
            for i, batch in enumerate(tr.stream):
                if i >= args.steps + 2:
                    break
                t0 = time.perf_counter()
                tr.step(batch)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if i >= 2:  # the first steps warm up allocators and kernels
                    times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "steps": len(times), **mem.summary()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-groups", type=int, default=16)
    ap.add_argument("--adapter", default="full")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    res = {}
    for name in METHODS:
        cmd = [sys.executable, __file__, "--cache", args.cache, "--steps", str(args.steps), "--batch-groups",
               str(args.batch_groups), "--adapter", args.adapter, "--child", name]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    mem_key = "peak_cuda_mb" if "peak_cuda_mb" in res["ft"] else "peak_rss_mb"
    print(f"{'method':10} {'median step s':>14} {mem_key:>14}")
    for name, r in res.items():
        print(f"{name:10} {r['median_s']:14.3f} {r[mem_key]:14.0f}")
    ft, ours, online = res["ft"], res["ours"], res["online-kd"]
    print(f"ours / ft time:        {ours['median_s'] / ft['median_s']:.3f}  (target <= 1.1)")
    print(f"ours / ft memory:      {ours[mem_key] / ft[mem_key]:.3f}  (target <= 1.1)")
    print(f"ours / online-kd time: {ours['median_s'] / online['median_s']:.3f}  (target <= 0.6)")
    print(f"ours / online-kd mem:  {ours[mem_key] / online[mem_key]:.3f}")


if __name__ == "__main__":
    main()
