"""The whole benchmark on a tiny model and a tiny slice: the pipeline cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustkd.bench import METHODS, WISE_ALPHAS
from robustkd.report import COLUMNS


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bench_end_to_end_on_tiny_model(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTKD_THREADS", "1")
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "--task", "sentiment-rt-drugs", "--seeds", "2", "--limit", "12",
                                   "--model", str(tiny_model), "--out", str(out), "--sweep"])
    assert res.exit_code == 0, res.output
    folder = out / "sentiment-rt-drugs"
    results = json.loads((folder / "results.json").read_text())
    expected = {"teacher", *METHODS, *(f"wise-ft-{a}" for a in WISE_ALPHAS)}
    assert set(results["summary"]) == expected
    assert {r["method"] for r in results["runs"]} == expected
    for method, row in results["summary"].items():
        assert {"id_acc", "id_f1", "ood_acc", "ood_f1", "heldout_acc", "ood_pred_pos"} <= set(row), method
    assert set(results["bootstrap"]) == expected - {"ours"}
    assert results["sweep"]["chosen"].keys() == {"lambda_distill", "lambda_act"}
    report = (folder / "report.md").read_text()
    for method in expected:
        assert f"| {method} |" in report, method
    for _, title in COLUMNS:
        assert title in report
    log = (folder / "ours" / "seed0" / "stdout.log").read_text()
    assert "train ours: step" in log and "Loading weights" not in log and "Warning" not in log, log
    for png in ("id_vs_ood.png", "cost.png", "drift.png"):
        assert (folder / png).stat().st_size > 1000


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_model(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTKD_MODEL", str(tiny_model))
    res = CliRunner().invoke(app, ["demo", "--limit", "12", "--train-groups", "8", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    for method in ("teacher", "ft", "ft-lora", "ours"):
        assert f"| {method} |" in (tmp_path / "demo" / "report.md").read_text()
    assert (tmp_path / "demo" / "id_vs_ood.png").stat().st_size > 1000
    assert "ood_true_<class>:" in res.output and "report: " in res.output
