"""The causal-LM and generative parts of resolving a request: prompt, verbalizer, pooling, sparse targets.

Everything is checked here, before any row is computed: a head the family cannot give, label words that do not
match the classes or start alike, a generative task without a causal LM, a vocabulary too large to index.
"""

from __future__ import annotations

from pathlib import Path

from robustkd.shared.models import load_tokenizer, vocabulary_sha256
from robustkd.shared.prompts import PromptError, split_template
from robustkd.shared.schemas import CacheRequest
from robustkd.shared.sparse import SparseError, index_dtype
from robustkd.shared.spec import GeneralSpec, SparseSpec
from robustkd.teacher_service.general_prompts import chat_prompt
from robustkd.teacher_service.lm import label_token_ids
from robustkd.teacher_service.model import ModelError
from robustkd.teacher_service.taskdata import TaskData
from robustkd.teacher_service.verbalizer import default_label_words, default_prompt

DEFAULT_K = {"top-k": 32, "sampled": 12}
_tokenizers: dict[str, object] = {}


class LMRequestError(ValueError):
    """A request the model family or the task cannot serve; the message names the field."""


def tokenizer_of(path: Path, weights_sha256: str):  # noqa: ANN201
    if weights_sha256 not in _tokenizers:
        _tokenizers[weights_sha256] = load_tokenizer(path)
    return _tokenizers[weights_sha256]


def teacher_fields(req: CacheRequest, task: TaskData, family: str, path: Path, weights_sha256: str,
                   generative: bool) -> dict:
    """The TeacherSpec fields that depend on the model family: pooling, prompt, label words, calibration."""
    if family == "encoder":
        if generative:
            raise LMRequestError(f"model: task {task.name!r} is generative and needs a causal LM; "
                                 f"{path} is an encoder")
        if req.head == "verbalizer":
            raise LMRequestError("head: 'verbalizer' needs a causal LM (label-word logits); this model is an encoder")
        if req.prompt or req.label_words:
            raise LMRequestError("prompt, label_words: only causal LMs read a prompt")
        return {"pooling": req.pooling or "mean"}
    if req.head in ("zero-shot", "model") and not generative:
        raise LMRequestError(f"head: {req.head!r} is for encoders; a causal LM classifies with 'verbalizer' "
                             "(label-word logits) or 'linear-probe'")
    prompt = req.prompt or default_prompt(task.name, generative)
    try:
        split_template(prompt)
    except PromptError as e:
        raise LMRequestError(str(e)) from None
    tok = tokenizer_of(path, weights_sha256)
    fields = {"family": "causal-lm", "pooling": req.pooling or "last", "prompt": prompt,
              "tokenizer_sha256": vocabulary_sha256(tok)}
    if generative:
        return {**fields, "head": "model"}
    words = tuple(req.label_words) if req.label_words else default_label_words(task.name, task.label_names)
    if len(words) != len(task.label_names):
        raise LMRequestError(f"label_words: {len(words)} words for {len(task.label_names)} classes "
                             f"{list(task.label_names)}")
    if req.head == "verbalizer":
        try:
            label_token_ids(tok, prompt, words)
        except ModelError as e:
            raise LMRequestError(str(e)) from None
        return {**fields, "label_words": words, "calibration": req.calibration}
    return fields


def sparse_spec(req: CacheRequest, vocab_size: int, generative: bool) -> SparseSpec | None:
    """The per-token targets of a generative task (None for classification)."""
    if not generative:
        return None
    try:
        index = index_dtype(vocab_size)
    except SparseError as e:
        raise LMRequestError(str(e)) from None
    kind = req.sparse or "sampled"
    k = req.sparse_k or DEFAULT_K.get(kind, 1)
    if kind == "top-k" and k >= vocab_size:
        raise LMRequestError(f"sparse_k: top-k keeps {k} of a {vocab_size}-token vocabulary; use sparse 'dense'")
    sampled = kind == "sampled"
    return SparseSpec(kind=kind, k=k if kind != "dense" else 1, index_dtype=index,
                      temperature=req.sparse_temperature if sampled else 1.0, seed=req.sparse_seed if sampled else 0,
                      max_response_tokens=req.max_response_tokens)


def general_spec(req: CacheRequest, path: Path, weights_sha256: str) -> GeneralSpec | None:
    """How the teacher answers the unrelated prompts (None unless asked): its chat template when it has one, checked
    to leave room for a prompt and the answer within max_length."""
    if not req.general_prompts:
        return None
    tok = tokenizer_of(path, weights_sha256)
    prompt, chat = chat_prompt(tok)
    prefix, _, suffix = split_template(prompt)
    frame = len(tok(prefix, add_special_tokens=True)["input_ids"]) + len(tok(suffix, add_special_tokens=False)
                                                                         ["input_ids"])
    room = req.max_length - req.general_max_new_tokens - frame
    if room < 8:
        raise LMRequestError(f"max_length: {req.max_length} leaves {room} tokens for an unrelated prompt after its "
                             f"template ({frame} tokens) and general_max_new_tokens ({req.general_max_new_tokens}); "
                             "raise max_length or lower general_max_new_tokens")
    return GeneralSpec(prompt=prompt, chat_template=chat, max_new_tokens=req.general_max_new_tokens)
