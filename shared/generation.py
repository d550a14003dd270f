"""Greedy decoding of many prompts at once, alike for the teacher (its answers to unrelated prompts, at precompute)
and for students (their answers, at evaluation): prompts sorted by length and left-padded into batches, so a few
hundred prompts cost a few hundred batched decoding steps rather than one pass each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BATCH = 16  # prompts per batch on a CPU
BATCH_ACCELERATOR = 64  # on a GPU: at 16, decoding a small model is bound by kernel launches, the GPU mostly idle


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int, *,  # noqa: ANN001
           batch_size: int | None = None, keep_eos: bool = False, before_batch: Callable[[], None] | None = None
           ) -> list[list[int]]:
    """Per prompt, the new token ids of `model.generate`'s greedy continuation, cut at the first EOS (kept with
    `keep_eos`). `model` is a transformers causal LM (or a peft model wrapping one); `before_batch` is called before
    each batch (a cancel check). `batch_size`: default BATCH on a CPU, BATCH_ACCELERATOR elsewhere."""
    device = next(model.parameters()).device
    batch_size = batch_size or (BATCH if device.type == "cpu" else BATCH_ACCELERATOR)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        if before_batch is not None:
            before_batch()
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[r, width - len(prompts[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)[:, width:].tolist()
        for r, i in enumerate(idx):
            g = gen[r]
            out[i] = g[:g.index(eos_id) + int(keep_eos)] if eos_id in g else g
    return out
