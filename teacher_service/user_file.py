"""User files as tasks: CSV, Parquet or JSONL rows split into ID and OOD by a domain column."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustkd.teacher_service.taskdata import (
    Row,
    TaskData,
    TaskError,
    assemble,
    check_limit,
    format_value,
    serialise_rows,
    shuffle_split,
)

USER_FILE_EXTENSIONS: tuple[str, ...] = (".csv", ".parquet", ".jsonl")


def _read_user_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in USER_FILE_EXTENSIONS:
        raise TaskError(
            f"unsupported file extension {path.suffix!r} for {path}; expected one of {USER_FILE_EXTENSIONS}"
        )
    if not path.is_file():
        raise TaskError(f"file not found: {path}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except Exception as exc:  # any parser failure means a bad user file
        raise TaskError(f"could not read {path}: {exc}") from exc


def _domain_str(value: Any) -> str:
    """Domain value as a string; integral floats (e.g. years read next to NaNs) lose their '.0'."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return format_value(value)


def _label_names(values: pd.Series) -> list[Any]:
    """Unique labels sorted by value (numerically for numeric columns)."""
    uniques = list(pd.unique(values))
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return sorted(uniques)
    return sorted(uniques, key=str)


def check_arguments(label_column: str, id_domains: Sequence[str], ood_domains: Sequence[str],
                    text_column: str | None, feature_columns: Sequence[str] | None,
                    unlabelled_domains: Sequence[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """The ID, OOD and unlabelled domain values as strings; TaskError for contradictory arguments, before any file
    is read."""
    if (text_column is None) == (feature_columns is None):
        raise TaskError("give exactly one of text_column or feature_columns")
    if feature_columns is not None:
        if isinstance(feature_columns, str) or len(feature_columns) == 0:
            raise TaskError("feature_columns must be a non-empty sequence of column names")
        if label_column in feature_columns:
            raise TaskError(f"feature_columns must not include the label column {label_column!r}")
    if any(isinstance(d, str) for d in (id_domains, ood_domains, unlabelled_domains)):
        raise TaskError("id_domains, ood_domains and unlabelled_domains must be sequences of domain values, "
                        "not strings")
    id_set, ood_set = [str(d) for d in id_domains], [str(d) for d in ood_domains]
    un_set = [str(d) for d in unlabelled_domains]
    if not id_set:
        raise TaskError("id_domains is empty")
    if not ood_set:
        raise TaskError("ood_domains is empty")
    for a, b, x, y in (("id_domains", "ood_domains", id_set, ood_set), ("unlabelled_domains", "id_domains", un_set,
                       id_set), ("unlabelled_domains", "ood_domains", un_set, ood_set)):
        overlap = sorted(set(x) & set(y))
        if overlap:
            raise TaskError(f"{a} and {b} overlap: {overlap}")
    return id_set, ood_set, un_set


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for col in dict.fromkeys(columns):
        if col not in frame.columns:
            raise TaskError(f"column {col!r} not found in {path}; available columns: {list(frame.columns)}")


def domain_rows(frame: pd.DataFrame, domain_column: str, id_set: list[str], ood_set: list[str],
                un_set: list[str] = ()) -> tuple[list[str], list[int], list[int], list[int]]:
    """(each row's domain, positions of ID rows, of OOD rows, of unlabelled rows)."""
    domains = [_domain_str(v) for v in frame[domain_column]]
    present = set(domains)
    for arg, wanted in (("id_domains", id_set), ("ood_domains", ood_set), ("unlabelled_domains", un_set)):
        absent = [d for d in wanted if d not in present]
        if absent:
            raise TaskError(f"{arg} value(s) {absent} not present in column {domain_column!r}; "
                            f"found {sorted(d for d in present if d)[:20]}")
    wanted = [set(w) for w in (id_set, ood_set, un_set)]
    return domains, *([i for i, d in enumerate(domains) if d in w] for w in wanted)


def file_lines(positions: Sequence[int], csv: bool) -> str:
    """Where rows are in the file, the first few: CSV line numbers (1-based, after the header), else 1-based rows."""
    where = [int(p) + 1 + int(csv) for p in positions]
    shown = ", ".join(map(str, where[:5])) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
    return f"{'file lines' if csv else 'rows'} {shown}"


def missing(frame: pd.DataFrame, index: list[int], column: str, blank: bool = False) -> list[int]:
    """Positions among `index` whose `column` is null (or, with `blank`, empty or whitespace only)."""
    col = frame[column].iloc[index]
    bad = col.isna() | (col.astype(str).str.strip().eq("") if blank else False)
    return [i for i, b in zip(index, bad, strict=True) if b]


def refuse_blank_texts(frame: pd.DataFrame, index: list[int], text_column: str, csv: bool) -> None:
    blank = missing(frame, index, text_column, blank=True)
    if blank:
        raise TaskError(f"text column {text_column!r} is empty, blank or missing in {len(blank)} rows "
                        f"({file_lines(blank, csv)}); fill or remove them")


def rows_without_label(frame: pd.DataFrame, index: list[int], label_column: str, drop: bool, csv: bool
                       ) -> tuple[set[int], list[str]]:
    """(positions to drop, notes): rows without a label are refused, naming where they are and how many, unless
    `drop`, which drops them and says so."""
    gone = missing(frame, index, label_column)
    if gone and not drop:
        raise TaskError(f"label column {label_column!r} is missing in {len(gone)} rows ({file_lines(gone, csv)}); "
                        "fill them, or pass drop_missing_labels to drop them")
    return set(gone), [f"dropped {len(gone)} rows with no {label_column!r} ({file_lines(gone, csv)})"] if gone else []


def label_index(raw: pd.Series, id_index: list[int], ood_index: list[int], parts: dict[str, list[int]],
                label_column: str) -> tuple[list, dict[str, int]]:
    """(label values in class order, rendered value -> class index). Classes come from the full train split, so
    they never depend on `limit`; a label outside them in another split is an error."""
    names = _label_names(raw.iloc[[id_index[p] for p in parts["train"]]])
    label_of = {str(v): k for k, v in enumerate(names)}  # keyed by the rendered name: 1 and "1" agree
    for split in ("validation", "test", "ood_test"):
        source = ood_index if split == "ood_test" else id_index
        unseen = sorted({str(raw.iat[source[p]]) for p in parts[split]} - label_of.keys())
        if unseen:
            raise TaskError(f"label(s) {unseen} of column {label_column!r} in split {split!r} not seen in the train "
                            f"split (train labels: {[str(v) for v in names]})")
    return names, label_of


def load_user_file(
    path: str,
    *,
    label_column: str,
    domain_column: str,
    id_domains: Sequence[str],
    ood_domains: Sequence[str],
    text_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    name: str | None = None,
    unlabelled_domains: Sequence[str] = (),
    drop_missing_labels: bool = False,
) -> TaskData:
    """Load a CSV/Parquet/JSONL file as a task: ID domains split 70/15/15, OOD domains -> ood_test, and the rows of
    `unlabelled_domains` (their labels ignored) -> unlabelled."""
    file_path = Path(path)
    check_limit(limit)
    id_set, ood_set, un_set = check_arguments(label_column, id_domains, ood_domains, text_column, feature_columns,
                                              unlabelled_domains)
    frame = _read_user_frame(file_path).reset_index(drop=True)
    task_name = name if name is not None else file_path.stem
    require_columns(frame, [label_column, domain_column, *([text_column] if text_column else feature_columns)],
                    file_path)
    domains, id_index, ood_index, un_index = domain_rows(frame, domain_column, id_set, ood_set, un_set)
    csv = file_path.suffix.lower() == ".csv"
    dropped, notes = rows_without_label(frame, id_index + ood_index, label_column, drop_missing_labels, csv)
    id_index, ood_index = [i for i in id_index if i not in dropped], [i for i in ood_index if i not in dropped]
    if text_column is not None:
        refuse_blank_texts(frame, id_index + ood_index + un_index, text_column, csv)
        texts = [str(t) for t in frame[text_column]]
    else:
        texts = serialise_rows(frame, list(feature_columns))
    parts = shuffle_split(len(id_index), len(ood_index), seed)
    if not parts["train"]:
        raise TaskError(f"task {task_name!r}: split 'train' is empty")
    raw = frame[label_column]
    names, label_of = label_index(raw, id_index, ood_index, parts, label_column)

    def make_row(i: int, labelled: bool = True) -> Row:
        return Row(f"{task_name}:{i}", domains[i], texts[i], label_of[str(raw.iat[i])] if labelled else -1)

    label_names = tuple(str(v) for v in names)
    task = assemble(task_name, label_names, tuple(f"{label_column}: {v}" for v in label_names), {},
                    [make_row(i) for i in id_index], [make_row(i) for i in ood_index], caps=None, limit=limit,
                    seed=seed, unlabelled_rows=[make_row(i, labelled=False) for i in un_index])
    return dataclasses.replace(task, notes=tuple(notes))
