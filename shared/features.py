"""How features come out of a model: pooling, padding and the linear head. Both sides compute them so."""

from __future__ import annotations

from typing import TypeVar

import torch

Array = TypeVar("Array")  # numpy array or torch tensor: `@`, `.T` and `+` work on both


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, D] hidden states -> [B, D]: mean over real tokens, the first ([CLS]) token, or the last real token
    (causal LMs, whose last token is the only one that has seen the whole input; rows are right-padded)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = (attention_mask.sum(1) - 1).clamp_min(0).to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"pooling: unknown {pooling!r} (use 'mean', 'cls' or 'last')")


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest; returns (input_ids, attention_mask) as int64."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def head_logits(features: Array, weight: Array, bias: Array) -> Array:
    """The teacher head: logits = features · weightᵀ + bias (weight [C, D], bias [C])."""
    return features @ weight.T + bias
