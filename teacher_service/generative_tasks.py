"""Generative tasks: prompt/response pairs, with ID and OOD domains as for classification.

| task | ID | OOD (natural shift) |
|---|---|---|
| condition-drugs | Drugs.com reviews written 2008-2015 -> the condition the drug was taken for | reviews of 2016-2017 |
| sentiment-answer | Rotten Tomatoes snippets -> the label word (negative/positive) | Drugs.com reviews |

condition-drugs' shift is in time: later reviews name newer drugs and are written otherwise, while the answer (a
condition name as Drugs.com spells it, e.g. "Birth Control") stays in the same vocabulary. sentiment-answer holds
sentiment-rt-drugs' rows, splits and shift with the label word as the response: an LM fine-tuned on it the plain
way (cross-entropy over the vocabulary) is the setting where format specialisation shows. Its responses form a
closed label set (`label_names`, each row's label the index of its word). User files give a prompt and a response
column (JSONL or Parquet; CSV works too) and a domain column, as classification files do.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robustkd.teacher_service.builtin_tasks import (
    DRUGS_FILE,
    SENTIMENT_DESCRIPTIONS,
    SENTIMENT_LABELS,
    SENTIMENT_VOCAB,
    TaskInfo,
    _clean_review,
    _read_verified,
    _sentiment_rows,
)
from robustkd.teacher_service.taskdata import Row, TaskData, TaskError, assemble, check_limit
from robustkd.teacher_service.user_file import _read_user_frame, domain_rows, file_lines, missing, require_columns

CONDITION_INFO = TaskInfo(name="condition-drugs", domain="healthcare (generative)",
                          description="Name the condition a Drugs.com review's drug was taken for.",
                          id_desc="reviews written 2008-2015", ood_desc="reviews written 2016-2017",
                          kind="generative")
SENTIMENT_INFO = TaskInfo(name="sentiment-answer", domain="healthcare (generative)",
                          description="Answer a review's sentiment with a label word (negative/positive).",
                          id_desc="Rotten Tomatoes critic snippets", ood_desc="Drugs.com patient reviews",
                          kind="generative")
CONDITION_OOD_FROM = 2016
GENERATIVE_TASKS = {CONDITION_INFO.name: CONDITION_INFO, SENTIMENT_INFO.name: SENTIMENT_INFO}
CAPS = {"train": 2000, "validation": 500, "test": 1000, "ood_test": 1000}


def _condition_rows() -> tuple[list[Row], list[Row]]:
    id_rows: list[Row] = []
    ood_rows: list[Row] = []
    with zipfile.ZipFile(io.BytesIO(_read_verified(DRUGS_FILE))) as zf:
        for member, tag in (("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")):
            df = pd.read_csv(io.BytesIO(zf.read(member)), sep="\t", index_col=0)
            years = pd.to_datetime(df["date"], format="%B %d, %Y").dt.year
            for pos, (raw, condition, year) in enumerate(zip(df["review"], df["condition"], years, strict=True)):
                # a few rows carry page residue ("3</span> users found this comment helpful.") as the condition
                if pd.isna(raw) or pd.isna(condition) or "<" in str(condition):
                    continue
                row = Row(f"drugs:{tag}:{pos}", str(year), _clean_review(str(raw)), 0, str(condition).strip())
                (ood_rows if year >= CONDITION_OOD_FROM else id_rows).append(row)
    return id_rows, ood_rows


def load_generative_task(name: str, *, limit: int | None = None, seed: int = 0) -> TaskData:
    """A built-in generative task; `limit` caps rows per split after the seeded split."""
    if name not in GENERATIVE_TASKS:
        raise TaskError(f"unknown generative task {name!r}; known: {sorted(GENERATIVE_TASKS)}")
    check_limit(limit)
    if name == SENTIMENT_INFO.name:
        id_rows, ood_rows = ([dataclasses.replace(r, response=SENTIMENT_LABELS[r.label]) for r in rows]
                             for rows in _sentiment_rows())
        return assemble(name, SENTIMENT_LABELS, SENTIMENT_DESCRIPTIONS, SENTIMENT_VOCAB, id_rows, ood_rows, caps=CAPS,
                        limit=limit, seed=seed)
    id_rows, ood_rows = _condition_rows()
    return assemble(name, (), (), {}, id_rows, ood_rows, caps=CAPS, limit=limit, seed=seed)


def load_generative_file(path: str, *, prompt_column: str, response_column: str, domain_column: str,
                         id_domains: Sequence[str], ood_domains: Sequence[str], limit: int | None = None,
                         seed: int = 0) -> TaskData:
    """A JSONL/Parquet/CSV file of prompt/response pairs; ID domains split 70/15/15, OOD domains -> ood_test."""
    file_path = Path(path)
    check_limit(limit)
    if isinstance(id_domains, str) or isinstance(ood_domains, str) or not id_domains or not ood_domains:
        raise TaskError("id_domains and ood_domains must be non-empty lists of domain values")
    id_set, ood_set = [str(d) for d in id_domains], [str(d) for d in ood_domains]
    if set(id_set) & set(ood_set):
        raise TaskError(f"id_domains and ood_domains overlap: {sorted(set(id_set) & set(ood_set))}")
    frame = _read_user_frame(file_path).reset_index(drop=True)
    require_columns(frame, [prompt_column, response_column, domain_column], file_path)
    domains, id_index, ood_index, _ = domain_rows(frame, domain_column, id_set, ood_set)
    csv = file_path.suffix.lower() == ".csv"
    used = id_index + ood_index
    absent = missing(frame, used, prompt_column)
    if absent:
        raise TaskError(f"prompt column {prompt_column!r} is missing in {len(absent)} rows "
                        f"({file_lines(absent, csv)}); fill or remove them")
    empty = missing(frame, used, response_column, blank=True)
    if empty:
        raise TaskError(f"response_column {response_column!r} has empty responses in {len(empty)} rows "
                        f"({file_lines(empty, csv)}): every prompt needs an answer to learn and to score")
    prompts, responses = frame[prompt_column].astype(str), frame[response_column].astype(str)

    def row(i: int) -> Row:
        return Row(f"{file_path.stem}:{i}", domains[i], prompts.iat[i], 0, responses.iat[i].strip())

    return assemble(file_path.stem, (), (), {}, [row(i) for i in id_index], [row(i) for i in ood_index],
                    caps=None, limit=limit, seed=seed)
