"""`robustkd predict`: a student over a CSV, Parquet or JSONL file, streamed in batches, into a predictions file.

Rows are read as user-file tasks read them (`teacher_service.user_file`: the same formats, text column or tabular
rows serialised as "col: value."), a batch at a time, so memory does not grow with the file. Each output row holds
the input's id (or row number), the predicted label and one probability column per class (a generative student:
its answer). With a label column, accuracy, macro-F1 and balanced accuracy are accumulated from a confusion matrix.
The output is written beside its destination and moved into place when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from robustkd.predictor import PredictError, Predictor
from robustkd.teacher_service.taskdata import serialise_rows
from robustkd.teacher_service.user_file import USER_FILE_EXTENSIONS

OUTPUT_EXTENSIONS = (".csv", ".jsonl", ".parquet")


@dataclass
class Inputs:
    path: Path
    text_column: str | None = None
    feature_columns: list[str] | None = None
    label_column: str | None = None
    id_column: str | None = None


@dataclass
class Scores:
    """Streaming classification metrics: a confusion matrix over rows whose label is one of the classes."""

    names: list[str]
    confusion: np.ndarray = None  # type: ignore[assignment]
    unknown: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((len(self.names), len(self.names)), np.int64)

    def add(self, labels: list, predicted: np.ndarray) -> None:
        index = {n: i for i, n in enumerate(self.names)}
        for y, p in zip(labels, predicted, strict=True):
            key = "" if y is None or (isinstance(y, float) and np.isnan(y)) else str(y)
            if key in index:
                self.confusion[index[key], p] += 1
            else:
                self.unknown[key] = self.unknown.get(key, 0) + 1

    def summary(self) -> dict:
        c = self.confusion
        n, tp = int(c.sum()), np.diag(c).astype(float)
        true, pred = c.sum(1).astype(float), c.sum(0).astype(float)
        f1 = np.divide(2 * tp, true + pred, out=np.zeros_like(tp), where=(true + pred) > 0)
        recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
        present = true > 0
        return {"n": n, "accuracy": float(tp.sum() / n) if n else float("nan"),
                "macro_f1": float(f1[present | (pred > 0)].mean()) if n else float("nan"),
                "balanced_accuracy": float(recall[present].mean()) if n else float("nan"),
                "unknown_labels": self.unknown}


def columns_of(path: Path) -> list[str]:
    """The file's columns, read from its head only."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if suffix == ".csv":
        return list(pd.read_csv(path, nrows=0).columns)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return list(json.loads(line))
    return []


def batches(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for b in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield b.to_pandas()
    elif suffix == ".csv":
        yield from pd.read_csv(path, chunksize=rows)
    else:
        yield from pd.read_json(path, lines=True, chunksize=rows)


def column_types(path: Path, columns: list[str], rows: int) -> dict[str, str]:
    """Columns to read as float: those a whole-file read gives as float (a missing value anywhere makes an integer
    column float, and training rows were serialised from a whole-file read). A first pass over the file."""
    floats: set[str] = set()
    for frame in batches(path, rows):
        floats |= {c for c in columns if pd.api.types.is_float_dtype(frame[c])}
    return dict.fromkeys(floats, "float64")


def check_inputs(inp: Inputs, predictor: Predictor) -> list[str]:
    """The file's columns, after every check that can fail before any prediction."""
    path = inp.path
    if path.suffix.lower() not in USER_FILE_EXTENSIONS:
        raise PredictError(f"path: {path} is not {', '.join(USER_FILE_EXTENSIONS)}")
    if not path.is_file():
        raise PredictError(f"path: {path} does not exist")
    if (inp.text_column is None) == (inp.feature_columns is None):
        raise PredictError("give exactly one of --text-column or --feature-columns")
    try:
        cols = columns_of(path)
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as e:
        raise PredictError(f"path: cannot read {path} ({type(e).__name__}: {e})") from None
    if not cols:
        raise PredictError(f"path: {path} is empty")
    wanted = [c for c in [inp.text_column, *(inp.feature_columns or []), inp.label_column, inp.id_column] if c]
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise PredictError(f"column {missing[0]!r} not found in {path}; available columns: {cols}")
    if inp.label_column and predictor.recipe.kind == "generative":
        raise PredictError("label-column: a generative student answers in text; no class metrics to compute")
    return cols


def texts_of(frame: pd.DataFrame, inp: Inputs, types: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """(texts, which rows have one): a missing text gets no prediction."""
    if inp.text_column:
        col = frame[inp.text_column]
        ok = col.notna().to_numpy()
        return col.astype(str).where(ok, "").tolist(), ok
    return serialise_rows(frame.astype(types) if types else frame, inp.feature_columns), np.ones(len(frame), bool)


class Writer:
    """Predictions into a temporary file beside `out`, moved into place by `close()`."""

    def __init__(self, out: Path) -> None:
        self.out, self.tmp = out, out.parent / f".{out.name}.tmp-{os.getpid()}"
        self.kind, self.parquet, self.first = out.suffix.lower(), None, True

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == ".parquet":
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        elif self.kind == ".csv":
            frame.to_csv(self.tmp, mode="w" if self.first else "a", header=self.first, index=False)
        else:
            with open(self.tmp, "w" if self.first else "a", encoding="utf-8") as f:
                f.write(frame.to_json(orient="records", lines=True, force_ascii=False))
        self.first = False

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.replace(self.out)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.unlink(missing_ok=True)


def predict_file(predictor: Predictor, inp: Inputs, out: Path, *, batch_rows: int = 256, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Predict every row of `inp.path` into `out`; returns {"rows", "skipped", "scores" (with a label column)}."""
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise PredictError(f"out: {out} must end in {', '.join(OUTPUT_EXTENSIONS)}")
    if out.exists() and not force:
        raise PredictError(f"out: {out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise PredictError(f"out: the folder of {out} does not exist")
    check_inputs(inp, predictor)
    types = column_types(inp.path, inp.feature_columns, batch_rows) if inp.feature_columns else {}
    names, generative = predictor.label_names, predictor.recipe.kind == "generative"
    scores = Scores(names) if inp.label_column else None
    writer, done, skipped = Writer(out), 0, 0
    try:
        for frame in batches(inp.path, batch_rows):
            texts, ok = texts_of(frame, inp, types)
            ids = frame[inp.id_column].tolist() if inp.id_column else list(range(done, done + len(frame)))
            rows = pd.DataFrame({"id" if inp.id_column else "row": ids})
            chosen = [t for t, k in zip(texts, ok, strict=True) if k]
            if generative:
                answers = np.full(len(frame), None, object)
                answers[ok] = predictor.predict(chosen)
                rows["answer"] = answers
            else:
                proba = np.full((len(frame), len(names)), np.nan, np.float32)
                proba[ok] = predictor.predict_proba(chosen) if chosen else proba[ok]
                label = np.full(len(frame), None, object)
                label[ok] = [names[i] for i in proba[ok].argmax(1)]
                rows["label"] = label
                for j, n in enumerate(names):
                    rows[f"p_{n}"] = proba[:, j]
                if scores is not None:
                    scores.add(frame[inp.label_column][ok].tolist(), proba[ok].argmax(1))
            writer.write(rows)
            done += len(frame)
            skipped += int((~ok).sum())
            if progress:
                progress(done)
        if done == 0:
            raise PredictError(f"path: {inp.path} has no rows")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"rows": done, "skipped": skipped, "scores": scores.summary() if scores else None}
