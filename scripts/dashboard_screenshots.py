"""Screenshots of the dashboard's main pages from a running `robustkd serve`, for docs/dashboard/.

    robustkd serve &                      # on the cache root that `make demo` and a bench wrote
    python scripts/dashboard_screenshots.py [--url http://127.0.0.1:8000] [--root cache] [--out docs/dashboard] [--jobs]

Pages at 1280 pixels wide (the whole page, up to 3000 tall; the run table of the bench's cache, else the demo's),
and the cache page at 400. With `--jobs` it first submits two small caches (arrests-year, hsb82-sector; `--token`
or ROBUSTKD_API_TOKEN when the service has one) so the jobs page shows one running and one queued. Needs
chromium, chromedriver and selenium (`make browsers`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

from robustkd.shared import registry
from robustkd.testing import browser_missing, check_local, chromium, screenshot

JOBS = ({"task": "arrests-year", "limit": 300}, {"task": "hsb82-sector", "limit": 300})


def submit_jobs(url: str, token: str | None) -> None:
    """Two small caches, so the jobs page has one running (with progress) and one queued."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    keys = [httpx.post(f"{url}/v1/caches", json=body, headers=headers, timeout=120).json()["key"] for body in JOBS]
    deadline = time.time() + 600
    while time.time() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{keys[0]}", timeout=30).json()
        if job["state"] != "running" or job["progress"]["rows_done"] > 0:
            return
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--root", default=os.environ.get("ROBUSTKD_CACHE_ROOT", "cache"), help="the service's cache root")
    ap.add_argument("--out", default="docs/dashboard")
    ap.add_argument("--jobs", action="store_true", help="submit two small caches first, to show live progress")
    ap.add_argument("--token", default=os.environ.get("ROBUSTKD_API_TOKEN"))
    args = ap.parse_args(argv)
    if (why := browser_missing()) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    url, out = check_local(args.url), Path(args.out)
    benches = registry.read_benches(args.root)
    bench = next((b for b in benches if b.kind == "bench"), None)
    demo = next((b for b in benches if b.kind == "demo"), None)
    pages = {"caches": "/"}
    if demo:
        pages |= {"cache": f"/caches/{demo.cache_key}", "demo-report": f"/benches/{demo.id}",
                  "runs": f"/runs?cache={demo.cache_key}&sort=ood_f1&order=desc"}
    if bench:
        pages |= {"runs": f"/runs?cache={bench.cache_key}&sort=ood_f1&order=desc", "bench": f"/benches/{bench.id}",
                  "bench-cache": f"/caches/{bench.cache_key}"}
    if args.jobs:
        submit_jobs(url, args.token)
    pages["jobs"] = "/jobs"
    driver = chromium()
    try:
        for name, path in pages.items():
            driver.set_window_size(1280, 800)
            driver.get(url + path)
            time.sleep(0.5)  # the jobs table's first refresh
            print(screenshot(driver, out / f"{name}.png"))
        if demo:
            driver.set_window_size(400, 800)
            driver.get(url + pages["cache"])
            print(screenshot(driver, out / "cache-narrow.png", width=400, max_height=2400))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        for e in errors:
            print(f"console error: {e['message']}", file=sys.stderr)
        return 1 if errors else 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
