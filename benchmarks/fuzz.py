"""Fuzz the teacher service's HTTP API with schemathesis, from its own `/openapi.json`.

    python benchmarks/fuzz.py [--max-examples 30] [--seed 0] [--max-seconds 480]

Starts its own `robustkd serve` (tiny random 2-layer BERT, ROBUSTKD_THREADS=1, localhost only), precomputes a
small cache, then runs `schemathesis run` twice:

1. pinned: the GET operations that take a cache key, with `key` fixed to that real cache, so `rows`,
   `head` and the job/cache views are fuzzed against data that exists (start/stop, etc.);
2. whole API: every operation with generated input (POST /v1/caches enqueues real jobs on the tiny model;
   only the responses are checked, nothing waits for the jobs).

Everything schemathesis and hypothesis write (reports, `.schemathesis/`, `.hypothesis/`) goes under a temporary
folder, not the working tree. All schemathesis checks run and are reported, but only server errors (5xx, check
`not_a_server_error`, code ST101), schemathesis errors (e.g. the connection dropped) or a server that died
fail the run (exit 1).
Needs the dev extra (`pip install -e .[dev]`, schemathesis>=4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from robustkd.testing import ensure_cache, self_hosted

SMALL_CACHE = {"task": "sentiment-rt-drugs", "limit": 10, "shard_rows": 16, "layers": [1, 2]}

SERVER_ERROR = "ST101"  # schemathesis' code for the not_a_server_error check


def schemathesis(url: str, report_dir: Path, args: argparse.Namespace, extra: list[str],
                 config: Path | None, timeout: float) -> dict:
    """One `schemathesis run`; returns its JSON report (plus the CLI's exit code and output tail)."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "--no-color"]
    if config is not None:
        cmd += ["--config-file", str(config)]
    cmd += ["run", f"{url}/openapi.json", "--checks", "all", "--continue-on-failure",
            "--max-examples", str(args.max_examples), "--seed", str(args.seed), "--workers", "1",
            "--generation-database", "none", "--request-timeout", str(args.request_timeout),
            "--suppress-health-check", "all",
            "--report", "json", "--report-dir", str(report_dir), *extra]
    try:
        # cwd: schemathesis and hypothesis write `.schemathesis/` and `.hypothesis/` into it; keep the tree clean
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=report_dir.parent)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"cli_exit": None, "tail": out[-4000:], "timed_out": True}
    reports = sorted(report_dir.glob("json-*.json"))
    report = json.loads(reports[-1].read_text()) if reports else {}
    report.update(cli_exit=proc.returncode, tail=(proc.stdout + proc.stderr)[-4000:])
    return report


def summarise(name: str, rep: dict) -> tuple[int, int]:
    """Print one run's figures; returns (server errors, schemathesis errors)."""
    if rep.get("timed_out") or "operations" not in rep:
        print(f"[{name}] no report (timed out: {bool(rep.get('timed_out'))}); output tail:\n{rep.get('tail', '')}")
        return 0, 1
    ops, cases = rep["operations"], rep["test_cases"]
    print(f"[{name}] operations tested: {ops['tested']} of {ops['selected']} selected ({ops['errored']} errored)")
    print(f"[{name}] examples: {cases['generated']} generated, {cases['with_failures']} with failures, "
          f"{cases['unique_failures']} unique failures")
    print(f"[{name}] phases: " + ", ".join(f"{k} {v['status']}" for k, v in rep.get("phases", {}).items()))
    server = 0
    for f in rep.get("failures", []):
        fatal = f["code"] == SERVER_ERROR
        server += f["count"] if fatal else 0
        print(f"[{name}] {'FAIL' if fatal else 'note'} {f['code']} {f['title']}: {f['count']} "
              f"({', '.join(f['operations'])})")
    errors = rep.get("errors", [])
    for e in errors:
        print(f"[{name}] ERROR {json.dumps(e)[:500]}")
    print(f"[{name}] server errors (5xx): {server}; errors: {len(errors)}; stop reason: {rep.get('stop_reason')}; "
          f"running time: {rep.get('running_time', 0):.1f} s")
    if server or errors:
        print(rep["tail"])
    return server, len(errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=30, help="test cases per operation and phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=480.0,
                    help="hard limit for each schemathesis run (a run cut short counts as an error)")
    ap.add_argument("--setup-seconds", type=float, default=300.0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="robustkd-fuzz-") as tmp:
        work = Path(tmp)
        with self_hosted(work) as url:
            key = ensure_cache(url, SMALL_CACHE, args.setup_seconds)["key"]
            pin = work / "pinned.toml"
            pin.write_text(f'[parameters]\n"path.key" = "{key}"\n')
            runs = {
                "pinned": schemathesis(url, work / "report-pinned", args,
                                       ["--include-path-regex", r"\{key\}", "--exclude-method", "DELETE"],
                                       pin, args.max_seconds),
                "all": schemathesis(url, work / "report-all", args, [], None, args.max_seconds),
            }
            try:
                alive = httpx.get(f"{url}/healthz", timeout=30).status_code == 200
            except httpx.HTTPError:
                alive = False
            log = (work / "server.log").read_text(errors="replace")
    server = errors = 0
    tested = examples = 0
    for name, rep in runs.items():
        s, e = summarise(name, rep)
        server, errors = server + s, errors + e
        tested += rep.get("operations", {}).get("tested", 0)
        examples += rep.get("test_cases", {}).get("generated", 0)
    tracebacks = log.count("Traceback (most recent call last)")
    print(f"cache: {key}")
    print(f"operations tested: {tested} (both runs)")
    print(f"examples: {examples}")
    print(f"server errors (5xx): {server}")
    print(f"errors: {errors}")
    print(f"server alive after: {'yes' if alive else 'no'}")
    print(f"tracebacks in server log: {tracebacks} (failed precompute jobs on fuzzed requests land here too)")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    ok = server == 0 and errors == 0 and alive
    print(f"result: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
