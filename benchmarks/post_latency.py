"""Latency of `POST /v1/caches` for a cache that already exists, against a `GET` of the same cache.

    python benchmarks/post_latency.py [--url http://127.0.0.1:8000] [--limit 50] [--repeats 20] [--parallel 8]

Without `--url` it starts its own `robustkd serve` with the default model (MiniLM) on a free localhost port.
It precomputes one small cache of the default task (the whole data file is still parsed and the weights
hashed on every unmemoised resolve), then times sequential GETs and POSTs of it, and `--parallel` identical
POSTs sent at once. A POST of a complete cache should answer within a few times a GET.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from robustkd.testing import ServiceProcess, check_local, ensure_cache


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    r = fn()
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return time.perf_counter() - t0


def measure(url: str, body: dict, repeats: int, parallel: int) -> None:
    key = ensure_cache(url, body, timeout=600)["key"]
    with httpx.Client(timeout=300) as c:
        get = [timed(lambda: c.get(f"{url}/v1/caches/{key}")) for _ in range(repeats)]
        post = [timed(lambda: c.post(f"{url}/v1/caches", json=body)) for _ in range(repeats)]
    together: list[float] = []

    def one() -> None:
        with httpx.Client(timeout=300) as c:
            together.append(timed(lambda: c.post(f"{url}/v1/caches", json=body)))

    threads = [threading.Thread(target=one) for _ in range(parallel)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = 1000
    print(f"cache {key[:12]} ({body})")
    print(f"GET  /v1/caches/<key>: median {statistics.median(get) * ms:.1f} ms (n={repeats})")
    print(f"POST /v1/caches (complete): median {statistics.median(post) * ms:.1f} ms, first {post[0] * ms:.1f} ms "
          f"(n={repeats})")
    print(f"{parallel} identical POSTs at once: slowest {max(together) * ms:.1f} ms, all done in {wall * ms:.1f} ms")
    print(f"ratio POST / GET (medians): {statistics.median(post) / statistics.median(get):.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running service (localhost only); default: start one")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    body = {"task": "sentiment-rt-drugs", "limit": args.limit}
    if args.url:
        measure(check_local(args.url), body, args.repeats, args.parallel)
        return 0
    with tempfile.TemporaryDirectory(prefix="robustkd-post-") as tmp:
        srv = ServiceProcess({"ROBUSTKD_CACHE_ROOT": f"{tmp}/cache", "ROBUSTKD_THREADS": "2"}, Path(tmp) / "log")
        try:
            srv.start(timeout=300)
            measure(srv.url, body, args.repeats, args.parallel)
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
