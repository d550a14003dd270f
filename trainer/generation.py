"""Evaluation of a generative student: per-token NLL and perplexity of the reference responses, and its greedy
answers (batched), on ID test, OOD test and held-out-perturbed test (all rows from the cache).

An answer is read as its first non-empty line, case and whitespace folded and stripped of the punctuation around
it: `accuracy` is that line equal to the reference; `exact_match` is the stricter whole answer up to EOS equal to
it. A task whose responses form a closed label set (a generative cache with `label_names`, e.g. sentiment-answer)
reads each answer as the label word its first line names first ("Negative.", "The review is negative." ->
negative; none: -1, counted wrong), so accuracy and macro-F1 over the label words exist as for classification, for
a teacher that answers in a sentence too. Per-row figures go to predictions.npz for paired bootstraps.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from robustkd.shared.features import pad_batch
from robustkd.shared.generation import greedy
from robustkd.shared.reader import CacheReader
from robustkd.shared.sparse import read_batch
from robustkd.trainer.lm_student import LMStudent, response_mask
from robustkd.trainer.sparse_losses import kl_per_token

EVAL_SPLITS = ("test", "ood_test", "test_heldout")
ANSWER_MARGIN = 8  # new tokens beyond the longest reference: room for "The review is negative."
PUNCT = string.punctuation + string.whitespace


@torch.no_grad()
def response_scores(student: LMStudent, seqs: list[list[int]], prompt_lens: list[int], pad_id: int,
                    targets: tuple[str, int, pa.Table] | None = None, batch_size: int = 16) -> np.ndarray:
    """Per row [n, 3]: the summed NLL of its response tokens (teacher forcing), their count, and with `targets`
    (sparse kind, k, the rows' sparse columns) the summed KL(teacher ‖ student) over them (NaN without, or when
    the kind gives no KL). Batches of rows of similar length."""
    student.eval()
    device = next(student.parameters()).device
    out = np.full((len(seqs), 3), np.nan)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for i in range(0, len(seqs), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = pad_batch([seqs[j] for j in idx], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        positions = response_mask(mask, torch.tensor([prompt_lens[j] for j in idx], device=device))
        logits, _ = student(ids, mask, positions, with_layers=False)
        rows = positions.nonzero()[:, 0]
        nll = F.cross_entropy(logits.float(), torch.roll(ids, -1, dims=1)[positions], reduction="none")
        out[idx, 0] = per_row(nll, rows, len(idx))
        out[idx, 1] = positions.sum(1).cpu().numpy()
        if targets is not None:
            kind, k, table = targets
            kl = kl_per_token(logits, read_batch(kind, table.take(pa.array(idx)), k))
            if kl is not None:
                out[idx, 2] = per_row(kl, rows, len(idx))
    return out


def per_row(values: torch.Tensor, rows: torch.Tensor, n: int) -> np.ndarray:
    """Per-token values summed into their n rows."""
    return torch.zeros(n, device=values.device).index_add_(0, rows, values.float()).cpu().numpy()


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def answer_line(text: str) -> str:
    """The answer as read: its first non-empty line, folded, without the punctuation around it."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    return normalise(line).strip(PUNCT)


def starts_with(line: str, entry: str) -> bool:
    """`line` begins with the word(s) `entry`: "positive." and "positive review" do, "positively" does not."""
    return bool(entry) and line.startswith(entry) and (len(line) == len(entry) or not line[len(entry)].isalnum())


def label_of(answer: str, words: list[str]) -> int:
    """The index of the label word the answer's first line names first (as a whole word), or -1."""
    line = answer_line(answer)
    found = [(m.start(), -len(w), i) for i, w in enumerate(words)
             if (m := re.search(rf"(?<!\w){re.escape(answer_line(w))}(?!\w)", line))]
    return min(found)[2] if found else -1


def answers(student: LMStudent, prompts: list[list[int]], max_new_tokens: int, tokenizer, pad_id: int  # noqa: ANN001
            ) -> list[str]:
    """The student's greedy answers (batched), decoded without special tokens."""
    student.eval()
    out = greedy(student.lm, prompts, max_new_tokens, tokenizer.eos_token_id, pad_id)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in out]


def rows_of(reader: CacheReader, split: str, max_rows: int | None = None) -> pa.Table:
    rows = reader.read_clean(split).rows
    return rows if max_rows is None else rows.slice(0, max_rows)


def evaluate_generation(student: LMStudent, reader: CacheReader, split: str, pad_id: int, tokenizer,  # noqa: ANN001
                        max_rows: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, per-row arrays) of a split: NLL per response token, perplexity, accuracy and exact match of the
    greedy answers (and over a closed label set, macro-F1 and the predicted rate of each word)."""
    from sklearn.metrics import f1_score

    rows = rows_of(reader, split, max_rows)
    seqs, lens = rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist()
    nll = response_scores(student, seqs, lens, pad_id)
    room = reader.manifest.spec.sparse.max_response_tokens
    longest = int(max(len(s) - n for s, n in zip(seqs, lens, strict=True)))
    said = answers(student, [s[:n] for s, n in zip(seqs, lens, strict=True)], min(room, longest + ANSWER_MARGIN),
                   tokenizer, pad_id)
    refs = rows.column("response").to_pylist()
    correct = np.array([answer_line(a) == answer_line(r) for a, r in zip(said, refs, strict=True)])
    per_token = float(nll[:, 0].sum() / nll[:, 1].sum())
    out = {"n": len(seqs), "tokens": int(nll[:, 1].sum()), "nll_per_token": per_token,
           "perplexity": math.exp(per_token), "accuracy": float(correct.mean()),
           "exact_match": float(np.mean([normalise(a) == normalise(r) for a, r in zip(said, refs, strict=True)])),
           "examples": [{"response": r, "generated": a} for r, a in list(zip(refs, said, strict=True))[:5]]}
    arrays = {f"{split}.correct": correct, f"{split}.nll": nll[:, 0], f"{split}.tokens": nll[:, 1]}
    words = reader.manifest.label_names
    if words:
        pred = np.array([label_of(a, words) for a in said])
        labels = np.asarray(rows.column("label").to_pylist())
        correct = pred == labels
        out["accuracy"] = float(correct.mean())
        out["macro_f1"] = float(f1_score(labels, pred, labels=list(range(len(words))), average="macro",
                                         zero_division=0))
        out["predicted_rate"] = {**{w: float((pred == i).mean()) for i, w in enumerate(words)},
                                 "(other)": float((pred < 0).mean())}
        arrays.update({f"{split}.correct": correct, f"{split}.pred": pred, f"{split}.label": labels})
    return out, arrays


def evaluate_generative_student(student: LMStudent, reader: CacheReader, pad_id: int, tokenizer,  # noqa: ANN001
                                max_rows: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    metrics, arrays = {}, {}
    for split in EVAL_SPLITS:
        if split in reader.manifest.splits:
            metrics[split], a = evaluate_generation(student, reader, split, pad_id, tokenizer, max_rows)
            arrays.update(a)
    return metrics, arrays
