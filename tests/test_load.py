"""benchmarks/load.py against its own server: 16 concurrent streaming readers, every response verified."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
SCRIPT = str(REPO / "benchmarks" / "load.py")


def test_load_self_hosted_16_readers() -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "--readers", "16", "--passes", "1", "--pollers", "2",
                           "--limit", "10", "--shard-rows", "16", "--max-seconds", "300"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "errors: 0" in out, out
    assert "stopped by deadline: no" in out, out
    assert "readers: 16" in out, out


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.1:8000", "file:///etc/passwd",
                                 "http://127.0.0.1.evil.com/"])
def test_load_refuses_non_local_urls(url: str) -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "--url", url], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "refusing" in proc.stderr, proc.stdout + proc.stderr
