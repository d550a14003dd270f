"""`robustkd predict` and `robustkd.load`: a student on new files (CSV, Parquet, JSONL), streamed in batches, with and
without labels; every bad argument is refused before any prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from typer.testing import CliRunner

import robustkd
from robustkd.cli import app
from robustkd.teacher_service.taskdata import serialise_rows
from tests.test_export import cache_of, trained

TEXTS = ["a fine film", "dull and far too long", "I loved every minute", "the worst drug I ever took", "meh",
         "great acting, weak plot", "it works and has no side effects", "boring", "wonderful", "awful awful awful"]
WRITE = {".csv": lambda df, p: df.to_csv(p, index=False), ".parquet": lambda df, p: df.to_parquet(p),
         ".jsonl": lambda df, p: df.to_json(p, orient="records", lines=True)}
READ = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("predict")
    return trained(cache_of(tiny_model, work / "cache", layers=[2]), work / "run", method="ft")


def frame() -> pd.DataFrame:
    labels = ["positive", "negative", "positive", "negative", "negative", "positive", "positive", "negative",
              "positive", "surprised"]  # the last is no class of the model's: left out of the metrics, said so
    return pd.DataFrame({"review": TEXTS, "sentiment": labels, "uid": [f"r{i}" for i in range(len(TEXTS))],
                         "age": [21, 35, None, 40, 18, 22, 60, 33, 41, 29], "city": list("ABCDEABCDE")})


def predict(run: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["predict", str(run), *args])
    return res.exit_code, res.output


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("out_ext", [".csv", ".jsonl", ".parquet"])
def test_predict_writes_one_row_per_input_in_every_format(run: Path, tmp_path: Path, ext: str, out_ext: str) -> None:
    src, out = tmp_path / f"in{ext}", tmp_path / f"preds{out_ext}"
    WRITE[ext](frame(), src)
    code, output = predict(run, "--path", str(src), "--text-column", "review", "--out", str(out), "--batch-rows", "3")
    assert code == 0, output
    preds, model = READ[out_ext](out), robustkd.load(str(run))
    proba = model.predict_proba(TEXTS)
    assert list(preds.columns) == ["row", "label", *(f"p_{n}" for n in model.label_names)]
    assert preds["row"].tolist() == list(range(len(TEXTS)))  # batches of 3 keep the file's order
    assert preds["label"].tolist() == model.predict(TEXTS)
    assert np.abs(preds[[f"p_{n}" for n in model.label_names]].to_numpy() - proba).max() <= 1e-6
    assert "accuracy" not in output


def test_labels_give_accuracy_macro_f1_and_balanced_accuracy(run: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "preds.jsonl"
    frame().to_csv(src, index=False)
    code, output = predict(run, "--path", str(src), "--text-column", "review", "--label-column", "sentiment",
                           "--id-column", "uid", "--out", str(out), "--batch-rows", "4")
    assert code == 0, output
    preds = pd.read_json(out, lines=True)
    assert preds["id"].tolist() == frame()["uid"].tolist()
    y, p = frame()["sentiment"][:-1], preds["label"][:-1]
    assert f"accuracy {accuracy_score(y, p):.4f}" in output
    assert f"macro-F1 {f1_score(y, p, average='macro', labels=sorted(set(y) | set(p))):.4f}" in output
    assert f"balanced accuracy {balanced_accuracy_score(y, p):.4f}" in output and "(n = 9)" in output
    assert "1 rows have labels that are not among the model's classes" in output and "surprised" in output


def test_tabular_rows_are_serialised_as_in_training(run: Path, tmp_path: Path) -> None:
    # `age` has its missing value in the second batch: the first batch reads it as integers, a whole-file read
    # (how training rows were serialised) as floats everywhere
    src, out = tmp_path / "in.jsonl", tmp_path / "preds.csv"
    frame().to_json(src, orient="records", lines=True)
    code, output = predict(run, "--path", str(src), "--feature-columns", "age,city", "--out", str(out),
                           "--batch-rows", "2")
    assert code == 0, output
    texts = serialise_rows(pd.read_json(src, lines=True), ["age", "city"])
    assert texts[0] == "age: 21.0. city: A."
    model = robustkd.load(str(run))
    got = pd.read_csv(out)[[f"p_{n}" for n in model.label_names]].to_numpy()
    assert np.abs(got - model.predict_proba(texts)).max() <= 1e-6


def test_missing_text_gets_no_prediction(run: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "preds.csv"
    df = frame()
    df.loc[3, "review"] = None
    df.to_json(src, orient="records", lines=True)
    code, output = predict(run, "--path", str(src), "--text-column", "review", "--out", str(out))
    assert code == 0 and "1 without text" in output
    preds = pd.read_csv(out)
    assert preds["label"].isna().tolist() == [i == 3 for i in range(len(TEXTS))]


def test_python_load_is_the_cli_path(run: Path, tmp_path: Path) -> None:
    model = robustkd.load(str(run))
    proba = model.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 2) and np.allclose(proba.sum(1), 1)
    assert model.predict(TEXTS) == [model.label_names[i] for i in proba.argmax(1)]


def test_bad_arguments_fail_before_any_prediction(run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    frame().to_csv(src, index=False)
    out = tmp_path / "preds.csv"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("review,sentiment\n")
    not_a_model = tmp_path / "nothing"
    not_a_model.mkdir()
    cases = [
        ((run, "--path", src, "--text-column", "text", "--out", out), "column 'text' not found"),
        ((run, "--path", src, "--text-column", "review", "--label-column", "gold", "--out", out), "column 'gold'"),
        ((run, "--path", src, "--out", out), "exactly one of --text-column or --feature-columns"),
        ((run, "--path", src, "--text-column", "review", "--feature-columns", "age", "--out", out), "exactly one"),
        ((run, "--path", empty, "--text-column", "review", "--out", out), "empty"),
        ((run, "--path", header_only, "--text-column", "review", "--out", out), "has no rows"),
        ((run, "--path", tmp_path / "absent.csv", "--text-column", "review", "--out", out), "does not exist"),
        ((run, "--path", tmp_path / "in.txt", "--text-column", "review", "--out", out), "is not .csv"),
        ((run, "--path", src, "--text-column", "review", "--out", tmp_path / "p.xlsx"), "must end in"),
        ((not_a_model, "--path", src, "--text-column", "review", "--out", out), "neither a run folder"),
    ]
    for args, message in cases:
        code, output = predict(*map(str, args))
        assert code == 2 and message in output, (args, output)
        assert not out.exists()
    out.write_text("precious")
    code, output = predict(str(run), "--path", str(src), "--text-column", "review", "--out", str(out))
    assert code == 2 and "--force" in output and out.read_text() == "precious"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_files_are_read_in_batches(tmp_path: Path, ext: str) -> None:
    from robustkd.predict_file import batches

    src = tmp_path / f"in{ext}"
    WRITE[ext](frame(), src)
    assert [len(b) for b in batches(src, 3)] == [3, 3, 3, 1]
