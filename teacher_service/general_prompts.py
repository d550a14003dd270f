"""Unrelated prompts: what a causal LM should still answer in its own way after fine-tuning on a narrow task.

`data/general_prompts.json` (package data, CC0-1.0, written for robustkd) holds a few hundred varied instructions
(how-to questions, arithmetic, definitions, writing, advice, trivia, code, translations, ...), none about sentiment,
reviews, drugs or medical conditions. They are split once, deterministically, into a *distillation* half (a
generative cache's `unlabelled` split: distillation-only rows) and an *evaluation* half (its `general` split), so
retention is never measured on a prompt any method trained on. The teacher answers both halves itself at
precompute (greedy, `GeneralSpec`); those answers and its next-token targets on them are what forgetting is
measured against.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from robustkd.teacher_service.taskdata import UNLABELLED, Example, TaskData, TaskError

PROMPTS_FILE = Path(__file__).parent / "data" / "general_prompts.json"
LICENSE = "CC0-1.0"
DISTILL, EVALUATE = "unlabelled", "general"  # the two halves' splits
TEXT = "{text}"


@dataclass(frozen=True)
class GeneralPrompt:
    id: str
    category: str
    text: str


@cache
def load_prompts(path: Path = PROMPTS_FILE) -> tuple[GeneralPrompt, ...]:
    """The prompts of the file, checked: its licence line, unique ids and texts, no empty text."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TaskError(f"general prompts: cannot read {path} ({e})") from None
    if data.get("license") != LICENSE:
        raise TaskError(f"general prompts: {path} must carry license {LICENSE!r}, has {data.get('license')!r}")
    prompts = tuple(GeneralPrompt(p["id"], p["category"], p["text"].strip()) for p in data["prompts"])
    if any(not p.text for p in prompts):
        raise TaskError(f"general prompts: {path} has an empty prompt")
    for field in ("id", "text"):
        values = [getattr(p, field) for p in prompts]
        if len(set(values)) != len(values):
            raise TaskError(f"general prompts: {path} repeats a prompt {field}")
    return prompts


def _rank(p: GeneralPrompt) -> str:
    return hashlib.sha256(f"general-prompts:{p.id}".encode()).hexdigest()


def halves(prompts: tuple[GeneralPrompt, ...]) -> dict[str, list[GeneralPrompt]]:
    """{DISTILL: [...], EVALUATE: [...]}: within each category the prompts in hash order alternate between the
    halves (so both hold every category alike); each half is then in hash order (so a `limit` takes a mix)."""
    out: dict[str, list[GeneralPrompt]] = {DISTILL: [], EVALUATE: []}
    for category in sorted({p.category for p in prompts}):
        ranked = sorted((p for p in prompts if p.category == category), key=_rank)
        for i, p in enumerate(ranked):
            out[(DISTILL, EVALUATE)[i % 2]].append(p)
    return {k: sorted(v, key=_rank) for k, v in out.items()}


def with_general_prompts(task: TaskData, limit: int | None = None) -> TaskData:
    """The task plus the prompts' two halves as its `unlabelled` and `general` examples (no label, no response:
    the teacher answers them at precompute); `limit` caps each half."""
    if task.split(DISTILL) or task.split(EVALUATE):
        raise TaskError(f"general prompts: task {task.name!r} already has unlabelled or general rows")
    extra = [Example(f"general:{p.id}", split, p.category, p.text, UNLABELLED)
             for split, half in halves(load_prompts()).items() for p in half[:limit]]
    return dataclasses.replace(task, examples=task.examples + tuple(extra))


def chat_prompt(tokenizer) -> tuple[str, bool]:  # noqa: ANN001
    """(template around a prompt, whether it is the chat template): the tokenizer's chat template with one user
    turn holding {text} and the assistant's cue after it; {text} alone for a tokenizer without one (or whose
    template does not keep the placeholder as given)."""
    if getattr(tokenizer, "chat_template", None):
        try:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], tokenize=False,
                                                     add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that cannot render one user turn: use none
            rendered = ""
        if isinstance(rendered, str) and rendered.count(TEXT) == 1:
            return rendered, True
    return TEXT, False
