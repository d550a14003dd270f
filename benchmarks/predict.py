"""`robustkd predict` over a large file: rows/s and the process's peak RSS, sampled while it runs.

    python benchmarks/predict.py [--model runs/demo/export] [--rows 1000000] [--format csv|parquet|jsonl]
                                 [--batch-rows 256] [--threads T] [--work DIR]

The file holds the task's real texts (Rotten Tomatoes snippets and Drugs.com reviews of `sentiment-rt-drugs`)
repeated up to `--rows` and shuffled, with their labels, so the run also prints accuracy. RSS is sampled every
0.2 s; the peak over the first 10%, 25%, 50%, 75% of the run and over all of it are printed: a streamed run's peak
levels off instead of growing with the rows read. `--model` is a run or exported folder (`make demo` leaves one in
runs/demo/export).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil


def write_file(path: Path, rows: int) -> None:
    from robustkd.teacher_service.builtin_tasks import load_task

    task = load_task("sentiment-rt-drugs")
    base = pd.DataFrame({"text": [e.text for e in task.examples],
                         "label": [task.label_names[e.label] for e in task.examples]})
    frame = pd.concat([base] * (rows // len(base) + 1), ignore_index=True).iloc[:rows]
    # shuffled (seeded) so any prefix has the length mix of the whole: the early and final peaks are comparable
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.insert(0, "uid", range(rows))
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, row_group_size=65536)
    else:
        frame.to_json(path, orient="records", lines=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/export")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--format", choices=["csv", "parquet", "jsonl"], default="csv")
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="Folder for the input and output files (default: a temporary one).")
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        sys.exit(f"--model: {args.model} does not exist (run `make demo`, or pass a run or exported folder)")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        src, out = Path(tmp) / f"rows.{args.format}", Path(tmp) / "preds.csv"
        t0 = time.perf_counter()
        write_file(src, args.rows)
        print(f"input: {args.rows} rows, {src.stat().st_size / 2**20:.0f} MiB {args.format} "
              f"(written in {time.perf_counter() - t0:.0f}s)")
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        cmd = [sys.executable, "-m", "robustkd", "predict", args.model, "--path", str(src), "--text-column", "text",
               "--label-column", "label", "--id-column", "uid", "--out", str(out), "--batch-rows",
               str(args.batch_rows)]
        t0 = time.perf_counter()
        log = Path(tmp) / "stderr.log"  # a file, not a pipe: the progress bar must never block on it
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            ps, peak, samples = psutil.Process(proc.pid), 0, []
            while proc.poll() is None:
                try:
                    rss = ps.memory_info().rss
                except psutil.NoSuchProcess:
                    break
                peak = max(peak, rss)
                samples.append((time.perf_counter() - t0, rss))
                time.sleep(0.2)
            stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"predict failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
        written = sum(1 for _ in open(out)) - 1
        marks = {f: max((r for t, r in samples if t <= wall * f), default=0) for f in (0.1, 0.25, 0.5, 0.75)}
        print(stdout.strip())
        print(f"rows: {written} in {wall:.1f}s = {written / wall:.0f} rows/s (model load included), "
              f"{os.cpu_count()} cores, batch rows {args.batch_rows}")
        print(f"peak RSS: {peak / 2**20:.0f} MiB; over the first "
              + ", ".join(f"{f:.0%}: {r / 2**20:.0f}" for f, r in marks.items()) + " MiB of the run")


if __name__ == "__main__":
    main()
