"""Evaluation of a generative student: per-token NLL and perplexity of the reference responses, and exact match
of its greedy answer, on ID test, OOD test and held-out-perturbed test (all rows from the cache)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from robustkd.shared.features import pad_batch
from robustkd.shared.reader import CacheReader
from robustkd.trainer.lm_student import LMStudent, response_mask

EVAL_SPLITS = ("test", "ood_test", "test_heldout")


@torch.no_grad()
def response_nll(student: LMStudent, seqs: list[list[int]], prompt_lens: list[int], pad_id: int,
                 batch_size: int = 16) -> np.ndarray:
    """Per row, the summed NLL of its response tokens (teacher forcing) and their count: [n, 2]."""
    student.eval()
    device = next(student.parameters()).device
    out = np.zeros((len(seqs), 2))
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[i:i + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        positions = response_mask(mask, torch.tensor(prompt_lens[i:i + batch_size], device=device))
        logits, _ = student(ids, mask, positions, with_layers=False)
        nll = F.cross_entropy(logits.float(), torch.roll(ids, -1, dims=1)[positions], reduction="none")
        rows = positions.nonzero()[:, 0]
        out[i:i + batch_size, 0] = torch.zeros(ids.shape[0], device=device).index_add_(0, rows, nll).cpu().numpy()
        out[i:i + batch_size, 1] = positions.sum(1).cpu().numpy()
    return out


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def evaluate_generation(student: LMStudent, reader: CacheReader, split: str, pad_id: int, tokenizer,  # noqa: ANN001
                        max_rows: int | None = None) -> dict:
    """NLL per response token, perplexity, and exact match (whitespace and case folded) of greedy answers."""
    rows = reader.read_clean(split).rows
    if max_rows is not None:
        rows = rows.slice(0, max_rows)
    seqs, lens = rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist()
    nll = response_nll(student, seqs, lens, pad_id)
    max_new = reader.manifest.spec.sparse.max_response_tokens
    answers = [tokenizer.decode(student.generate(s[:n], max_new, tokenizer.eos_token_id), skip_special_tokens=True)
               for s, n in zip(seqs, lens, strict=True)]
    refs = rows.column("response").to_pylist()
    per_token = float(nll[:, 0].sum() / nll[:, 1].sum())
    return {"n": len(seqs), "tokens": int(nll[:, 1].sum()), "nll_per_token": per_token,
            "perplexity": math.exp(per_token),
            "exact_match": float(np.mean([normalise(a) == normalise(r) for a, r in zip(answers, refs, strict=True)])),
            "examples": [{"response": r, "generated": a} for r, a in list(zip(refs, answers, strict=True))[:5]]}


def evaluate_generative_student(student: LMStudent, reader: CacheReader, pad_id: int, tokenizer) -> dict:  # noqa: ANN001
    return {split: evaluate_generation(student, reader, split, pad_id, tokenizer)
            for split in EVAL_SPLITS if split in reader.manifest.splits}
