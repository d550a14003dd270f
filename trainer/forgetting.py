"""What a generative student kept of its teacher's general behaviour, measured on rows no method trained on.

On the cache's `general` split (the evaluation half of the unrelated prompts, answered by the teacher itself):

- **format share**: the share of the student's greedy answers (FORMAT_TOKENS new tokens) whose first line starts
  with one of the task's answers (its label words, or every response of its train split): format specialisation
  (ProMoT, arXiv 2211.00635). The teacher's is near 0.
- **KL**: KL(teacher ‖ student) per response token over the cached sparse targets, teacher forcing on the teacher's
  own answers (top-k: over the k tokens and the rest, a lower bound; dense: exact; sampled caches give none);
  0 for the teacher up to the targets' float16 rounding.
- **NLL**: the student's NLL per token of the teacher's answers.

With a transfer cache (another generative task of the same teacher, e.g. condition-drugs after sentiment-answer),
the student's zero-shot accuracy on its ID test rows (`generation.evaluate_generation`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from robustkd.shared.layout import GENERAL, SPARSE_PREFIX, CacheError, default_root, resolve_location
from robustkd.shared.reader import CacheReader
from robustkd.trainer.generation import (
    answer_line,
    answers,
    evaluate_generation,
    evaluate_generative_student,
    response_scores,
    rows_of,
    starts_with,
)
from robustkd.trainer.lm_student import LMStudent

FORMAT_TOKENS = 8  # enough for a label word, or the first words of a condition's name


@functools.lru_cache(maxsize=4)
def tokenizer(path: str):  # noqa: ANN201 - read once per process: a GGUF's takes seconds (a bench's WiSE points)
    from robustkd.shared.models import load_tokenizer

    return load_tokenizer(path)


def response_vocabulary(reader: CacheReader) -> list[str]:
    """The task's answers as read (`answer_line`): its label words, or the distinct responses of its train rows."""
    if reader.manifest.label_names:
        return sorted({answer_line(w) for w in reader.manifest.label_names})
    return sorted({x for r in rows_of(reader, "train").column("response").to_pylist() if (x := answer_line(r))})


def general_metrics(student: LMStudent, reader: CacheReader, pad_id: int, tokenizer,  # noqa: ANN001
                    max_rows: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, per-row arrays) on the `general` split: format share, KL and NLL per token against the teacher."""
    rows = rows_of(reader, GENERAL, max_rows)
    seqs, lens = rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist()
    sp = reader.manifest.spec.sparse
    sparse = rows.select([c for c in rows.column_names if c.startswith(SPARSE_PREFIX)])
    scores = response_scores(student, seqs, lens, pad_id, (sp.kind, sp.k, sparse))
    vocab = response_vocabulary(reader)
    said = answers(student, [s[:n] for s, n in zip(seqs, lens, strict=True)], FORMAT_TOKENS, tokenizer, pad_id)
    hits = np.array([any(starts_with(answer_line(a), v) for v in vocab) for a in said])
    tokens = scores[:, 1].sum()
    kl = float(scores[:, 2].sum() / tokens) if not np.isnan(scores[:, 2]).any() else None
    nll = float(scores[:, 0].sum() / tokens)
    texts = rows.column("text").to_pylist()
    return ({"n": len(seqs), "tokens": int(tokens), "format_share": float(hits.mean()), "kl_per_token": kl,
             "nll_per_token": nll, "perplexity": math.exp(nll), "vocabulary": vocab[:20],
             "examples": [{"prompt": t, "generated": a} for t, a in list(zip(texts, said, strict=True))[:5]]},
            {"general.format": hits, "general.kl": scores[:, 2], "general.nll": scores[:, 0],
             "general.tokens": scores[:, 1]})


def transfer_reader(transfer: str, reader: CacheReader) -> CacheReader:
    """The transfer cache, checked: generative, and from a teacher that tokenises as the run's does."""
    other = CacheReader(resolve_location(transfer, default_root()), verify=False)
    spec = other.manifest.spec
    if not spec.generative:
        raise CacheError(f"transfer: cache {other.key[:12]} ({spec.task.name}) is not generative; zero-shot "
                         "transfer is measured on another generative task's test rows")
    if spec.teacher.tokenizer_sha256 != reader.manifest.spec.teacher.tokenizer_sha256:
        raise CacheError(f"transfer: cache {other.key[:12]} was made with another tokenizer than the run's cache")
    return other


def transfer_metrics(student: LMStudent, transfer: str, reader: CacheReader, pad_id: int, tokenizer,  # noqa: ANN001
                     max_rows: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, per-row arrays) of zero-shot transfer: the student on the transfer cache's ID test rows."""
    other = transfer_reader(transfer, reader)
    m, arrays = evaluate_generation(student, other, "test", pad_id, tokenizer, max_rows)
    return ({"task": other.manifest.spec.task.name, "cache_key": other.key, **m},
            {f"transfer.{k.split('.', 1)[1]}": v for k, v in arrays.items()})


def generative_metrics(student: LMStudent, reader: CacheReader, pad_id: int, transfer: str | None = None,
                       max_rows: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """metrics.json and predictions.npz of a generative student: the task's evaluation splits, then what it kept
    (the `general` split, when the cache has one; zero-shot transfer, with a transfer cache)."""
    tok = tokenizer(str(student.source))
    splits, arrays = evaluate_generative_student(student, reader, pad_id, tok, max_rows)
    metrics = {"student": splits, "teacher": {}, "cache_key": reader.key,
               "label_names": reader.manifest.label_names, "generative": True}
    forgetting = {}
    if GENERAL in reader.manifest.splits:
        forgetting["general"], a = general_metrics(student, reader, pad_id, tok, max_rows)
        arrays.update(a)
    if transfer:
        forgetting["transfer"], a = transfer_metrics(student, transfer, reader, pad_id, tok, max_rows)
        arrays.update(a)
    if forgetting:
        metrics["forgetting"] = forgetting
    return metrics, arrays
