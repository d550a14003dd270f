"""Model folders: what makes one usable, and the content hash that identifies it in a cache key."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

# Files whose bytes determine what a model computes; hashed into the cache key.
HASHED_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".txt", ".model")

_memo: dict[tuple, str] = {}
_lock = threading.Lock()


class ModelFolderError(ValueError):
    """A path that is not a usable model folder; the message says why."""


def model_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(HASHED_SUFFIXES))


def check_model_folder(path: str | Path, field: str = "model") -> Path:
    """The resolved folder, or ModelFolderError naming `field`: it must be a Hugging Face model folder."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelFolderError(f"{field}: {path} is not a folder")
    if not (p / "config.json").exists():
        raise ModelFolderError(f"{field}: {path} has no config.json (not a Hugging Face model folder)")
    return p.resolve()


def weights_sha256(path: str | Path) -> str:
    """sha256 over (name, content) of the weight, config and tokenizer files, in name order.

    Memoised by every hashed file's (name, size, mtime): hashing 90 MB of weights on each request would
    dominate a request for a cache that already exists.
    """
    path = Path(path)
    files = model_files(path)
    stamp = (str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    with _lock:
        if stamp in _memo:
            return _memo[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    with _lock:
        _memo[stamp] = digest
    return digest


def quiet_transformers() -> None:
    """No weight-loading bars or deprecation chatter from transformers in logs (both sides load models)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
