"""The whole benchmark on a tiny model and a tiny slice: the pipeline cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustkd.bench import METHODS, WISE_ALPHAS
from robustkd.report import COLUMNS
from robustkd.stats import paired_bootstrap


def test_paired_bootstrap_interval_contains_known_difference() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, labels, 1 - labels)
    bad = np.where(rng.random(400) < 0.6, labels, 1 - labels)
    res = paired_bootstrap([good, good], [bad, bad], labels, 2, "accuracy", n_boot=500)
    assert res["lo"] > 0.2 and res["hi"] < 0.4 and res["lo"] < res["diff"] < res["hi"]
    same = paired_bootstrap([good], [good], labels, 2, "macro_f1", n_boot=200)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}


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
    for png in ("id_vs_ood.png", "cost.png", "drift.png"):
        assert (folder / png).stat().st_size > 1000
