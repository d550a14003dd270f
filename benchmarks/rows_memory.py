"""Server memory while clients stream whole caches through `GET /v1/caches/{key}/rows`.

    python benchmarks/rows_memory.py [--streams 4] [--rows 65536] [--shard-rows 1024] [--hidden 32] [--work DIR]

Starts its own `robustkd serve` (tiny random 2-layer BERT, localhost only), builds a cache of at least `--rows`
rows (sentiment-rt-drugs with enough perturbed variants per example; `--work` keeps it for the next run), then
measures the server's RSS (psutil on its PID) before, during (peak, sampled every 20 ms) and after `--streams`
parallel requests of rows [0, rows), each read to the end by its own client. It prints the growth per stream
against the target: at most two shards' worth (the wire bytes of one shard) per concurrent stream.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from robustkd.testing import ensure_cache, make_tiny_model, self_hosted_process

MIB = 2**20


def cache_request(rows: int, shard_rows: int) -> dict:
    """sentiment-rt-drugs caps train/validation/test/ood at 2000/500/1000/1000 examples; train and validation
    get `variants` perturbed rows each, so 2500 * (1 + variants) + 3500 rows in all."""
    variants = max(1, -(-(rows - 3500) // 2500) - 1)
    return {"task": "sentiment-rt-drugs", "variants": variants, "shard_rows": shard_rows, "layers": [1, 2],
            "max_length": 32, "transforms": ["keyboard_typo", "word_dropout"]}


def stream(url: str, start: int, stop: int, timeout: float) -> tuple[int | str, int]:
    """(status or error, bytes received) of one request read to its end."""
    n = 0
    try:
        with httpx.Client(timeout=timeout) as c, c.stream("GET", url, params={"start": start, "stop": stop}) as r:
            for chunk in r.iter_bytes():
                n += len(chunk)
            return r.status_code, n
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}", n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=4, help="parallel full-range requests")
    ap.add_argument("--rows", type=int, default=65536, help="rows per request (the cache gets at least this many)")
    ap.add_argument("--shard-rows", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=32, help="width of the tiny model (MiniLM's is 384): wider "
                                                          "layers make each shard's activations larger")
    ap.add_argument("--work", type=Path, help="keep the model, cache and server log here (default: a temp folder)")
    ap.add_argument("--setup-seconds", type=float, default=1800.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    args = ap.parse_args(argv)
    if args.streams < 1 or args.rows < 3501:
        ap.error("--streams must be >= 1 and --rows > 3500")
    with tempfile.TemporaryDirectory(prefix="robustkd-rowsmem-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = work / f"tiny-bert-{args.hidden}"
        if not (model / "config.json").exists():
            make_tiny_model(model, hidden=args.hidden)
        # enough concurrent streams for this run, whatever the server's default
        env = {"ROBUSTKD_MAX_STREAMS": str(args.streams), "ROBUSTKD_MAX_ROWS_PER_REQUEST": str(args.rows),
               "ROBUSTKD_MODEL": str(model)}
        with self_hosted_process(work, env) as srv:
            t0 = time.perf_counter()
            m = ensure_cache(srv.url, cache_request(args.rows, args.shard_rows), args.setup_seconds)
            print(f"cache: {m['key']} ({m['n_rows']} rows, {m['n_shards']} shards of {m['shard_rows']}; "
                  f"ready in {time.perf_counter() - t0:.0f} s)")
            rows_url = f"{srv.url}/v1/caches/{m['key']}/rows"
            proc = psutil.Process(srv.proc.pid)
            httpx.get(rows_url, params={"start": 0, "stop": 10}, timeout=60).raise_for_status()  # warm the imports
            before = proc.memory_info().rss
            peak, done = before, threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.02):
                    peak = max(peak, proc.memory_info().rss)

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.streams) as pool:
                results = list(pool.map(lambda _: stream(rows_url, 0, args.rows, args.timeout), range(args.streams)))
            wall = time.perf_counter() - t0
            done.set()
            sampler.join()
            time.sleep(1.0)
            after = proc.memory_info().rss
    ok = [n for status, n in results if status == 200]
    failed = [(status, n) for status, n in results if status != 200]
    shard_bytes = (ok[0] if ok else 0) * m["shard_rows"] / args.rows
    budget = 2 * shard_bytes * args.streams
    print(f"streams: {args.streams} x rows [0, {args.rows}): {len(ok)} complete, {len(failed)} not: {failed}")
    print(f"bytes per stream: {ok[0] if ok else 0} ({(ok[0] if ok else 0) / MIB:.1f} MiB) in {wall:.1f} s")
    print(f"one shard on the wire: {shard_bytes / MIB:.2f} MiB")
    print(f"server RSS before: {before / MIB:.1f} MiB")
    print(f"server RSS peak:   {peak / MIB:.1f} MiB (+{(peak - before) / MIB:.1f} MiB, "
          f"{(peak - before) / MIB / args.streams:.1f} MiB per stream)")
    print(f"server RSS after:  {after / MIB:.1f} MiB (+{(after - before) / MIB:.1f} MiB)")
    print(f"target: growth <= 2 shards per stream = {budget / MIB:.1f} MiB -> "
          f"{'met' if peak - before <= budget else 'NOT met'}")
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
