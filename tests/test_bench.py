"""The whole benchmark on a tiny model and a tiny slice: the pipeline cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustkd.analysis import ALPHAS
from robustkd.report import COLUMNS
from robustkd.shared import registry
from robustkd.shared.methods import LR_DEFAULT


def user_csv(path: Path) -> Path:
    """A tiny three-domain CSV: ID clinic A, OOD clinic B, unlabelled clinic C."""
    lines = ["note,outcome,clinic"]
    for i in range(72):
        word = "good" if i % 2 else "bad"
        lines.append(f"patient {i} felt {word} after visit {i % 7},{word},{'ABC'[i % 3]}")
    path.write_text("\n".join(lines) + "\n")
    return path


FILE_ARGS = ["--task", "file", "--text-column", "note", "--label-column", "outcome", "--domain-column", "clinic",
             "--id-domains", "A", "--ood-domains", "B", "--layers", "1,2"]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bench_on_a_user_file_resumes_and_adds_methods(tiny_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    csv = user_csv(tmp_path / "visits.csv")
    out = tmp_path / "bench"
    args = ["bench", *FILE_ARGS, "--path", str(csv), "--unlabelled-domains", "C", "--seeds", "2", "--budget", "small",
            "--model", str(tiny_model), "--out", str(out), "--threads", "1"]
    first = CliRunner().invoke(app, [*args, "--methods", "ft,lp-ft,ours,ours-unlabelled"])
    assert first.exit_code == 0, first.output
    folder = out / "visits"
    results = json.loads((folder / "results.json").read_text())
    curve = [f"{c}-{a}" for c in ("wise-ft", "ours-wise") for a in ALPHAS]
    expected = {"teacher", "ft", "lp-ft", "ours", *curve}
    separate = {"ours-unlabelled", *(f"ours-unlabelled-wise-{a}" for a in ALPHAS)}
    # the unlabelled setting is beside the main comparison, not in it
    assert set(results["summary"]) == expected and set(results["separate"]["summary"]) == separate
    assert len(results["runs"]) == 2 * len(expected | separate)
    assert {"id_acc", "id_bal_acc", "ood_f1", "ood_bal_acc", "heldout_acc", "single_class"} <= set(
        results["summary"]["ours"])
    assert set(results["curves"]["curves"]) == {"wise-ft", "ours"} and results["separate"]["curve_gap"]
    assert "ours_minus_wise_ft" in results["curves"] and "ood_macro_f1" in results["diagnosis"]
    assert results["proxy"]["runs"] == 1 + 2 * (len(expected) - 1)
    report = (folder / "report.md").read_text()
    for section in ("## Is there robustness to preserve?", "## Curves: ours against WiSE-FT",
                    "## Can the validation proxy be trusted?", "## A separate setting: unlabelled"):
        assert section in report
    for _, title in COLUMNS:
        assert title in report
    log = (folder / "ours" / "seed0" / "stdout.log").read_text()
    assert "train ours: step" in log and "Loading weights" not in log and "Warning" not in log, log
    for png in ("id_vs_ood.png", "cost.png", "drift.png"):
        assert (folder / png).stat().st_size > 1000
    # the same bench again trains nothing; --methods adds its rows to the report
    again = CliRunner().invoke(app, [*args, "--methods", "ft,lp-ft,ours,ours-unlabelled"])
    assert again.exit_code == 0 and " trained" not in again.output and again.output.count("reused") == 8
    more = CliRunner().invoke(app, [*args, "--methods", "lora"])
    assert more.exit_code == 0 and more.output.count(" trained") == 2
    results = json.loads((folder / "results.json").read_text())
    assert set(results["summary"]) == expected | {"lora"} and set(results["separate"]["summary"]) == separate
    assert {"ours-unlabelled", "lora"} <= set(results["methods"]) and "8 per batch" in results["unlabelled_note"]
    report = (folder / "report.md").read_text()
    assert "| lora |" in report and "## A separate setting: unlabelled" in report
    # `robustkd report` analyses the recorded runs again without training: the same report
    (folder / "report.md").unlink()
    again = CliRunner().invoke(app, ["report", str(folder)])
    assert again.exit_code == 0 and (folder / "report.md").read_text() == report, again.output
    missing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "no results.json" in missing.output


def test_bench_checks_its_task_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    out = tmp_path / "bench"
    missing = CliRunner().invoke(app, ["bench", "--task", "file", "--out", str(out)])
    assert missing.exit_code == 2 and "needs --path, --label-column" in missing.output, missing.output
    wrong = CliRunner().invoke(app, ["bench", "--task", str(tmp_path / "data.csv"), "--out", str(out)])
    assert wrong.exit_code == 2 and "unknown task" in wrong.output and "Traceback" not in wrong.output, wrong.output
    both = CliRunner().invoke(app, ["bench", "--path", str(tmp_path / "data.csv"), "--out", str(out)])
    assert both.exit_code == 2 and "--task file with --path" in both.output, both.output
    assert not out.exists()


def test_bench_checks_for_unlabelled_rows_before_training(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app
    from robustkd.shared.schemas import CacheRequest
    from robustkd.teacher_service.model import Encoder
    from robustkd.teacher_service.precompute import precompute
    from robustkd.teacher_service.resolve import resolve

    spec, task = resolve(CacheRequest(model=str(tiny_model), limit=8, layers=[1, 2]), str(tiny_model))
    m = precompute(spec, task, Encoder(str(tiny_model)), tmp_path / "cache")
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "--cache", str(tmp_path / "cache" / m.key), "--methods",
                                   "ft,ours-unlabelled", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 2 and "ours-unlabelled: cache" in res.output and "no unlabelled rows" in res.output, \
        res.output
    assert not list(out.rglob("metrics.json"))  # nothing trained first


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_model(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTKD_MODEL", str(tiny_model))
    res = CliRunner().invoke(app, ["demo", "--limit", "12", "--train-groups", "8", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "demo").glob("*/config.json"))
               if p.parent.name != "export"]  # the exported model's config.json is transformers'
    assert [c["lr"] for c in configs if c["adapter"] == "lora"] == [LR_DEFAULT["lora"]]  # the documented rate
    for method in ("teacher", "ft", "lora", "ours"):
        assert f"| {method} |" in (tmp_path / "demo" / "report.md").read_text()
    assert (tmp_path / "demo" / "id_vs_ood.png").stat().st_size > 1000
    assert "ood_true_<class>:" in res.output and "report: " in res.output
    demo = registry.read_benches(str(tmp_path / "cache"))  # what `robustkd serve` on that root shows
    assert [(b.kind, len(b.runs)) for b in demo] == [("demo", 3)]
    assert f"http://127.0.0.1:8000/caches/{demo[0].cache_key}" in res.output
    runs = registry.read_runs(str(tmp_path / "cache"), demo[0].cache_key)
    assert sorted(r.name for r in runs) == ["ft", "lora", "ours"]  # the demo's names, as in its report
    # it ends by exporting the student best on validation and printing two lines that load it, which run
    assert "best student on validation" in res.output and (tmp_path / "demo" / "export" / "model.onnx").exists()
    lines = [x.split(":", 1)[1].strip() for x in res.output.splitlines() if x.startswith(("transformers:",
                                                                                           "onnxruntime:"))]
    assert len(lines) == 2
    for line in lines:
        done = subprocess.run(sys.executable + line.removeprefix("python"), shell=True, capture_output=True, text=True)
        assert done.returncode == 0 and "[" in done.stdout, done.stderr[-2000:]
