"""benchmarks/fuzz.py: schemathesis over the service's own OpenAPI finds no 5xx (needs the dev extra)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("schemathesis")


@pytest.mark.slow
def test_fuzz_finds_no_server_errors() -> None:
    before = {p.name for p in REPO.iterdir()}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--max-examples", "30",
                           "--max-seconds", "480"],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    assert "server errors (5xx): 0" in out and "result: ok" in out, out[-6000:]
    assert {p.name for p in REPO.iterdir()} - before <= set(), "the fuzzer wrote into the working tree"
