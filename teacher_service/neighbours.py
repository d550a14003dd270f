"""Nearest neighbours in a model's own token-embedding space (the `embedding_neighbour` transform's table).

The table depends only on the model, so it is built once per model (by weights hash) and kept: in memory for
the process, and as JSON under the cache root's `_neighbours/` for later processes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any

import torch

from robustkd.teacher_service.store import Store

NEIGHBOURS_DIR = "_neighbours"
TABLE_VERSION = 1  # bump when build_neighbours changes its output

_memo: dict[str, dict[str, list[str]]] = {}
_lock = threading.Lock()


_WORD_OK = re.compile(r"[a-z]{3,}")
_BPE_MARKERS = ("Ġ", "▁")


def _is_trivial_variant(a: str, b: str) -> bool:
    """True for simple plural pairs such as movie/movies or box/boxes."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return long_ in (short + "s", short + "es")


def build_neighbours(
    tokenizer: Any, embeddings: torch.Tensor, k: int = 5, max_words: int = 20000
) -> dict[str, list[str]]:
    """Cosine top-``k`` neighbours among whole-word vocab entries, using the input embedding matrix [V, D]."""

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    weight = getattr(embeddings, "weight", embeddings)  # also accept an nn.Embedding
    vocab: Mapping[str, int] = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    uses_markers = any(tok.startswith(_BPE_MARKERS) for tok in vocab)

    words: list[str] = []
    ids: list[int] = []
    seen: set[str] = set()
    # Id order is roughly frequency order for BPE/WordPiece vocabs, so max_words keeps the common words.
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if tok in specials or tok.startswith("##") or idx >= weight.shape[0]:
            continue
        if uses_markers:
            # In marker vocabularies an unmarked entry is a word-internal piece, not a whole word.
            if not tok.startswith(_BPE_MARKERS):
                continue
            tok = tok[1:]
        if not _WORD_OK.fullmatch(tok) or tok in seen:
            continue
        seen.add(tok)
        words.append(tok)
        ids.append(idx)
        if len(words) >= max_words:
            break
    if len(words) < 2:
        return {}

    with torch.no_grad():
        mat = weight.detach()[torch.tensor(ids)].to(dtype=torch.float32, device="cpu")
        mat = torch.nn.functional.normalize(mat, dim=1)
        n = len(words)
        # Extra candidates leave room to drop plural variants and still return k neighbours.
        take = min(n - 1, k + 8)
        result: dict[str, list[str]] = {}
        chunk = 1024
        for start in range(0, n, chunk):
            sims = mat[start : start + chunk] @ mat.T
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = float("-inf")
            top = torch.topk(sims, take, dim=1, sorted=True).indices.tolist()
            for r, cand in enumerate(top):
                w = words[start + r]
                picked = [words[c] for c in cand if not _is_trivial_variant(w, words[c])][:k]
                result[w] = picked
    return result


def model_neighbours(tokenizer: Any, embeddings: torch.Tensor, weights_sha256: str, root: str | None = None,
                     k: int = 5, max_words: int = 20000) -> dict[str, list[str]]:
    """`build_neighbours` for a model, built once per (weights, k, max_words) and kept under `root`."""
    name = f"{weights_sha256}-v{TABLE_VERSION}-k{k}-n{max_words}.json"
    with _lock:
        if name in _memo:
            return _memo[name]
        store = Store(f"{root}/{NEIGHBOURS_DIR}") if root else None
        if store is not None and store.exists(name):
            table = json.loads(store.read_bytes(name))
        else:
            table = build_neighbours(tokenizer, embeddings, k=k, max_words=max_words)
            if store is not None:
                store.write_bytes(name, json.dumps(table, separators=(",", ":")).encode())
        _memo[name] = table
        return table
