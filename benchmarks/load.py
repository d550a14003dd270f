"""Bounded load on a live teacher service: concurrent streaming readers plus pollers, every response checked.

    python benchmarks/load.py [--url http://127.0.0.1:8000 [--key KEY]] [--readers 16] [--passes 2]
                              [--pollers 2] [--max-seconds 120]

Without `--url` it starts its own `robustkd serve` on a free port with a tiny random 2-layer BERT and
precomputes a small cache first. Only localhost URLs are accepted (127.0.0.1, localhost, ::1).
With `--url` and no `--key` it submits the small cache request to that server and waits for it.

Each reader thread (its own httpx.Client) reads every shard of the cache through
`GET /v1/caches/{key}/rows` `--passes` times (a 503 with Retry-After, all row streams busy, is waited out and
counted apart); each poller polls `GET /v1/jobs/{key}` and `/healthz`
every 50 ms until the readers finish. The load stops by itself after `--max-seconds` (setup has its own
`--setup-seconds`). Every response is verified: status 200, rows decode with pyarrow, row count equals
stop - start, and the same row range yields the same bytes for every reader. Exit code 1 on any error.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow as pa

from robustkd.testing import check_local, ensure_cache, self_hosted

SMALL_CACHE = {"task": "sentiment-rt-drugs", "limit": 10, "shard_rows": 16, "layers": [1, 2]}
POLL_INTERVAL_S = 0.05
BUSY_RETRIES = 20


def fetch_manifest(url: str, key: str) -> dict:
    r = httpx.get(f"{url}/v1/caches/{key}", timeout=60)
    if r.status_code != 200 or not r.json().get("manifest"):
        raise RuntimeError(f"GET /v1/caches/{key}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()["manifest"]


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    row_lat: list[float] = field(default_factory=list)
    poll_lat: list[float] = field(default_factory=list)
    row_requests: int = 0
    poll_requests: int = 0
    busy: int = 0  # 503 + Retry-After answers waited out (not errors)
    rows: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    digests: dict[tuple[int, int], str] = field(default_factory=dict)

    def error(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)


def reader(i: int, url: str, key: str, ranges: list[tuple[int, int]], passes: int, deadline: float,
           stats: Stats, timeout: float) -> None:
    with httpx.Client(timeout=timeout) as c:
        for _ in range(passes):
            for start, stop in ranges:
                if time.monotonic() > deadline:
                    return
                with stats.lock:
                    stats.row_requests += 1
                t0 = time.perf_counter()
                try:
                    for _ in range(BUSY_RETRIES):  # 503 + Retry-After: every row stream is taken; wait as told
                        r = c.get(f"{url}/v1/caches/{key}/rows", params={"start": start, "stop": stop})
                        if r.status_code != 503 or "retry-after" not in r.headers:
                            break
                        with stats.lock:
                            stats.busy += 1
                        time.sleep(min(float(r.headers["retry-after"]), 5.0))
                    body = r.content
                except httpx.HTTPError as e:
                    stats.error(f"reader {i} rows [{start},{stop}): {type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                with stats.lock:
                    stats.row_lat.append(dt)
                if r.status_code != 200:
                    stats.error(f"reader {i} rows [{start},{stop}): HTTP {r.status_code} {r.text[:200]}")
                    continue
                try:
                    n = pa.ipc.open_stream(pa.BufferReader(body)).read_all().num_rows
                except pa.ArrowException as e:
                    stats.error(f"reader {i} rows [{start},{stop}): undecodable Arrow stream: {e}")
                    continue
                if n != stop - start:
                    stats.error(f"reader {i} rows [{start},{stop}): {n} rows, expected {stop - start}")
                    continue
                digest = hashlib.sha256(body).hexdigest()
                with stats.lock:
                    first = stats.digests.setdefault((start, stop), digest)
                    stats.rows += n
                    stats.bytes += len(body)
                if first != digest:
                    stats.error(f"reader {i} rows [{start},{stop}): bytes differ from another reader's")


def poller(i: int, url: str, key: str, done: threading.Event, deadline: float, stats: Stats,
           timeout: float) -> None:
    with httpx.Client(timeout=timeout) as c:
        while not done.is_set() and time.monotonic() < deadline:
            for path, ok in ((f"/v1/jobs/{key}", lambda b: b.get("state") == "succeeded" and b.get("key") == key),
                             ("/healthz", lambda b: b == {"ok": True})):
                with stats.lock:
                    stats.poll_requests += 1
                t0 = time.perf_counter()
                try:
                    r = c.get(url + path)
                except httpx.HTTPError as e:
                    stats.error(f"poller {i} {path}: {type(e).__name__}: {e}")
                    continue
                with stats.lock:
                    stats.poll_lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    stats.error(f"poller {i} {path}: HTTP {r.status_code} {r.text[:200]}")
                    continue
                try:
                    good = ok(r.json())
                except ValueError:
                    good = False
                if not good:
                    stats.error(f"poller {i} {path}: unexpected body {r.text[:200]}")
            done.wait(POLL_INTERVAL_S)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def run_load(url: str, key: str, manifest: dict, readers: int, passes: int, pollers: int, max_seconds: float,
             timeout: float) -> int:
    n, step = manifest["n_rows"], manifest["shard_rows"]
    ranges = [(s, min(s + step, n)) for s in range(0, n, step)]
    stats, done = Stats(), threading.Event()
    t0 = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    rthreads = [threading.Thread(target=reader, args=(i, url, key, ranges, passes, deadline, stats, timeout),
                                 name=f"reader-{i}") for i in range(readers)]
    pthreads = [threading.Thread(target=poller, args=(i, url, key, done, deadline, stats, timeout),
                                 name=f"poller-{i}") for i in range(pollers)]
    for t in pthreads + rthreads:
        t.start()
    for t in rthreads:
        t.join()
    done.set()
    for t in pthreads:
        t.join()
    wall = time.perf_counter() - t0
    expected = readers * passes * len(ranges)
    row_requests = stats.row_requests
    deadline_hit = row_requests < expected
    errors = len(stats.errors)
    ms = 1000.0
    print(f"url: {url}")
    print(f"cache: {key} ({n} rows, {len(ranges)} shards of {step})")
    print(f"readers: {readers}")
    print(f"passes: {passes}")
    print(f"pollers: {pollers}")
    print(f"requests: {row_requests + stats.poll_requests} (rows {row_requests} of {expected}, "
          f"polls {stats.poll_requests})")
    print(f"errors: {errors}")
    print(f"busy answers waited out (503 + Retry-After): {stats.busy}")
    print(f"rows read: {stats.rows}")
    print(f"rows/s total: {stats.rows / wall:.1f}")
    print(f"bytes/s: {stats.bytes / wall:.0f} ({stats.bytes / wall / 2**20:.2f} MiB/s, {stats.bytes} bytes)")
    print(f"row latency p50: {percentile(stats.row_lat, 50) * ms:.1f} ms  "
          f"p99: {percentile(stats.row_lat, 99) * ms:.1f} ms")
    print(f"poll latency p50: {percentile(stats.poll_lat, 50) * ms:.1f} ms  "
          f"p99: {percentile(stats.poll_lat, 99) * ms:.1f} ms")
    print(f"wall time: {wall:.2f} s")
    print(f"stopped by deadline: {'yes' if deadline_hit else 'no'} (max {max_seconds:.0f} s)")
    for e in stats.errors[:20]:
        print(f"error: {e}")
    if errors > 20:
        print(f"... and {errors - 20} more errors")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running service (localhost only); default: start one")
    ap.add_argument("--key", help="cache to read (with --url); default: submit the small cache and wait")
    ap.add_argument("--token", help="API token for the submit (with --url)")
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--pollers", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="the load phase stops by itself after this")
    ap.add_argument("--setup-seconds", type=float, default=300.0, help="limit for server start and precompute")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    ap.add_argument("--limit", type=int, default=SMALL_CACHE["limit"], help="rows per split of the small cache")
    ap.add_argument("--shard-rows", type=int, default=SMALL_CACHE["shard_rows"])
    args = ap.parse_args(argv)
    if min(args.readers, args.passes) < 1 or args.pollers < 0 or args.max_seconds <= 0:
        ap.error("--readers and --passes must be >= 1, --pollers >= 0, --max-seconds > 0")
    if args.key and not (args.url and re.fullmatch(r"[0-9a-f]{64}", args.key)):
        ap.error("--key needs --url and 64 lower-case hex characters")
    request = {**SMALL_CACHE, "limit": args.limit, "shard_rows": args.shard_rows}

    def load(url: str, token: str | None) -> int:
        if args.key:
            manifest = fetch_manifest(url, args.key)
        else:
            manifest = ensure_cache(url, request, args.setup_seconds, token)
        return run_load(url, manifest["key"], manifest, args.readers, args.passes, args.pollers,
                        args.max_seconds, args.timeout)

    if args.url:
        try:
            url = check_local(args.url)
        except ValueError as e:
            ap.error(str(e))
        return load(url, args.token)
    with tempfile.TemporaryDirectory(prefix="robustkd-load-") as work, self_hosted(Path(work)) as url:
        return load(url, None)


if __name__ == "__main__":
    sys.exit(main())
