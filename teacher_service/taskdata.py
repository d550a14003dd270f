"""Labelled classification tasks: rows with in-distribution (ID) and out-of-distribution (OOD) splits.

A task has ID splits ``train``/``validation``/``test`` (a seeded 70/15/15 split of the ID rows) and an OOD
split ``ood_test`` given by a natural shift (another corpus, later years, another school sector). It may also
have ``unlabelled`` examples (label -1) that are neither ID test nor OOD test rows: inputs for the teacher to be
distilled on, e.g. the target domain's text without labels; a generative task may add ``general`` examples
(unrelated prompts kept for evaluation, `general_prompts`). Built-in tasks are in `builtin_tasks`, user files
in `user_file`; both assemble their rows here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "validation", "test", "ood_test", "unlabelled", "general")
REQUIRED_SPLITS: tuple[str, ...] = SPLITS[:4]
UNLABELLED = -1  # the label of an unlabelled example: only the distillation and activation terms see it
# Fractions of the shuffled ID rows going to train/validation/test (train takes the remainder).
ID_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


class TaskError(ValueError):
    """Invalid task request or data; the message names the field, column, split or file at fault."""


@dataclass(frozen=True)
class Example:
    """One labelled row of a task."""

    source_id: str
    split: str
    domain: str
    text: str
    label: int
    response: str | None = None  # generative tasks: what the model should answer to `text`


@dataclass(frozen=True)
class TaskData:
    """A loaded task: label space plus examples ordered train, validation, test, ood_test."""

    name: str
    label_names: tuple[str, ...]
    label_descriptions: tuple[str, ...]
    domain_vocab: Mapping[str, str]
    examples: tuple[Example, ...]
    notes: tuple[str, ...] = ()  # what loading changed in the data (e.g. rows dropped), for the user to see
    # Excluded from eq/hash/repr: derived index only.
    _by_split: Mapping[str, tuple[Example, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if len(self.label_descriptions) != len(self.label_names):
            raise TaskError(
                f"label_descriptions has {len(self.label_descriptions)} entries but label_names has "
                f"{len(self.label_names)}"
            )
        by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for ex in self.examples:
            if ex.split not in by_split:
                raise TaskError(f"example {ex.source_id!r} has unknown split {ex.split!r}; expected {SPLITS}")
            by_split[ex.split].append(ex)
        object.__setattr__(self, "_by_split", MappingProxyType({k: tuple(v) for k, v in by_split.items()}))

    def split(self, name: str) -> list[Example]:
        """Examples of one split, in task order."""
        if name not in self._by_split:
            raise TaskError(f"unknown split {name!r}; expected one of {SPLITS}")
        return list(self._by_split[name])


@dataclass(frozen=True)
class Row:
    source_id: str
    domain: str
    text: str
    label: int
    response: str | None = None


def format_value(value: Any) -> str:
    """Render one feature value; floats rounded to 3 decimals, missing values as NA."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "NA"
        return repr(round(float(value), 3) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return str(value)


def serialise_rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Serialise rows as 'col: value. col: value.'."""
    cols = list(columns)
    return [
        " ".join(f"{c}: {format_value(v)}." for c, v in zip(cols, row, strict=True))
        for row in frame[cols].itertuples(index=False, name=None)
    ]


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive integer or None, got {limit!r}")


def shuffle_split(n_id: int, n_ood: int, seed: int) -> dict[str, list[int]]:
    """Seeded assignment of ID row positions to train/validation/test and an OOD order."""
    rng = np.random.default_rng(seed)
    id_perm = [int(i) for i in rng.permutation(n_id)]
    ood_perm = [int(i) for i in rng.permutation(n_ood)]
    n_val = round(n_id * ID_FRACTIONS[1])
    n_test = round(n_id * ID_FRACTIONS[2])
    n_train = n_id - n_val - n_test
    # Split membership is fixed here, before caps and limit, so limit only truncates each split.
    return {
        "train": id_perm[:n_train],
        "validation": id_perm[n_train : n_train + n_val],
        "test": id_perm[n_train + n_val :],
        "ood_test": ood_perm,
    }


def assemble(
    name: str,
    label_names: tuple[str, ...],
    label_descriptions: tuple[str, ...],
    domain_vocab: Mapping[str, str],
    id_rows: Sequence[Row],
    ood_rows: Sequence[Row],
    *,
    caps: Mapping[str, int] | None,
    limit: int | None,
    seed: int,
    unlabelled_rows: Sequence[Row] = (),
) -> TaskData:
    """Shuffle, split, cap and limit rows into a TaskData. Unlabelled rows keep their order and lose their label."""
    parts = shuffle_split(len(id_rows), len(ood_rows), seed)
    parts["unlabelled"] = list(range(len(unlabelled_rows)))
    examples: list[Example] = []
    for split in SPLITS:
        source = {"ood_test": ood_rows, "unlabelled": unlabelled_rows}.get(split, id_rows)
        positions = parts.get(split, [])  # `general` rows are added by general_prompts, not here
        if caps is not None and split in caps:
            positions = positions[: caps[split]]
        if limit is not None:
            positions = positions[:limit]
        if not positions and split in REQUIRED_SPLITS:
            raise TaskError(f"task {name!r}: split {split!r} is empty")
        examples.extend(
            Example(source[p].source_id, split, source[p].domain, source[p].text,
                    UNLABELLED if split == "unlabelled" else source[p].label, source[p].response)
            for p in positions
        )
    return TaskData(
        name=name,
        label_names=label_names,
        label_descriptions=label_descriptions,
        domain_vocab=MappingProxyType(dict(domain_vocab)),
        examples=tuple(examples),
    )


def rows_sha256(task: TaskData) -> str:
    """sha256 over canonical JSON lines of label_names then (split, source_id, domain, text, label[, response])."""
    digest = hashlib.sha256()
    header = json.dumps({"label_names": list(task.label_names)}, ensure_ascii=False, separators=(",", ":"))
    digest.update(header.encode("utf-8") + b"\n")
    for ex in task.examples:
        fields = [ex.split, ex.source_id, ex.domain, ex.text, ex.label]
        if ex.response is not None:
            fields.append(ex.response)
        line = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
