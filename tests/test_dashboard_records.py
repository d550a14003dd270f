"""Records and bench files that must not take the dashboard down: hostile run and bench records written straight
into the registry folder (as a careless writer or another version might), bench files of odd names and kinds, a
report too large to render, and variants of one method that must stay apart on the plot."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from robustkd.shared import registry
from robustkd.teacher_service import markdown_html
from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.settings import Settings
from tests.test_api import BODY, wait

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTHER = "e" * 64  # a cache key with no cache: its runs show on /runs?cache=
REPORT_CAP = 4096
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'


def split(acc: float, f1: float, n: int = 20) -> dict:
    return {"n": n, "accuracy": acc, "balanced_accuracy": acc, "macro_f1": f1, "auroc": 0.7, "ece": 0.1,
            "per_class_f1": {"a": f1, "b": f1}, "confusion": [[5, 5], [5, 5]]}


def metrics(key: str, acc: float, f1: float) -> dict:
    return {"cache_key": key, "student": {"test": split(acc, f1), "ood_test": split(acc - 0.1, f1 - 0.1)},
            "teacher": {"test": split(0.8, 0.75), "ood_test": split(0.7, 0.6)}, "train": {"train_s": 3.0}}


def run_record(folder: Path, key: str, name: str, seed: int, acc: float, f1: float, **config: object
               ) -> registry.RunRecord:
    method = name.split("+")[0]
    return registry.RunRecord(id=registry.record_id(folder), cache_key=key, name=name, method=method, adapter="full",
                              seed=seed, folder=str(folder), host="h", created_at=f"2026-01-0{seed + 1}",
                              config={"method": method, "seed": seed, **config}, metrics=metrics(key, acc, f1))


@pytest.fixture(scope="module")
def site(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A service with one real cache, three valid run records on it and a bench folder with its files."""
    work = tmp_path_factory.mktemp("records")
    root = work / "cache"
    settings = Settings(cache_root=str(root), model=str(tiny_model), threads=1, api_token=TOKEN,
                        max_report_bytes=REPORT_CAP)
    with TestClient(create_app(settings)) as client:
        key = client.post("/v1/caches", json=BODY, headers=AUTH).json()["key"]
        assert wait(client, key)["state"] == "succeeded"
        runs = [run_record(work / "runs" / f"{n}-{s}", key, n, s, a, f)
                for n, s, a, f in (("ft", 0, 0.70, 0.50), ("ours", 0, 0.72, 0.60), ("ours", 1, 0.74, 0.62))]
        for r in runs:
            registry.write_run(str(root), r)
        bench = work / "bench"
        bench.mkdir()
        (bench / "report.md").write_text("# A report\n\n![plot](plot.svg)\n")
        (bench / "plot.svg").write_bytes(SVG)
        (bench / "results.json").write_text(json.dumps({"runs": [], "summary": {}}))
        rec = registry.BenchRecord(id=registry.record_id(bench), kind="bench", cache_key=key, task="t",
                                   folder=str(bench), host="h", created_at="2026-01-05", seeds=2,
                                   methods=["ft", "ours"], runs=[registry.BenchMember(name=r.name, seed=r.seed,
                                                                                      run_id=r.id) for r in runs])
        registry.write_bench(str(root), rec)
        yield {"client": client, "root": root, "key": key, "runs": runs, "bench": rec, "work": work}


def pages(site: dict) -> list[str]:
    key = site["key"]
    return ["/", f"/caches/{key}", "/runs", f"/runs?cache={key}", f"/runs?cache={OTHER}",
            f"/runs/{site['runs'][1].id}", "/benches", f"/benches/{site['bench'].id}"]


def raw_run(site: dict, key: str, rid: str, seed: int, changes: dict) -> Path:
    """A run record written as raw JSON, bypassing validation: a valid one's fields with `changes` applied."""
    data = json.loads(site["runs"][1].model_dump_json())
    data.update(id=rid, cache_key=key, seed=seed)
    for path, value in changes.items():
        d = data
        *parents, last = path.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    target = site["root"] / registry.RUNS_DIR / key / f"{rid}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data))
    return target


HOSTILE_RUNS = {
    "accuracy 1e308": {"metrics.student.test.accuracy": 1e308, "metrics.student.ood_test.macro_f1": 1e308},
    "a run alone at accuracy -0.01": {"metrics.student.test.accuracy": -0.01, "metrics.student.ood_test.macro_f1":
                                      -0.01, "metrics.teacher": {}, "name": "alone"},
    "float n": {"metrics.generative": True, "metrics.student.test.n": 10.5, "metrics.student.test.tokens": 2.5},
    "accuracy as text": {"metrics.student.test.accuracy": "high"},
}


@pytest.mark.parametrize("case", HOSTILE_RUNS)
def test_hostile_run_records_leave_pages_up(site: dict, case: str) -> None:
    """Two seeds of each (a mean and an interval to compute)."""
    client, ids = site["client"], ("a" * 16, "b" * 16)
    key = OTHER if "alone" in case else site["key"]
    written = [raw_run(site, key, rid, seed, HOSTILE_RUNS[case]) for seed, rid in enumerate(ids, 7)]
    try:
        for path in pages(site):
            r = client.get(path)
            assert r.status_code == 200, (case, path, r.status_code)
        for rid in ids:  # skipped: not records the service shows
            assert client.get(f"/runs/{rid}").status_code == 404 and rid not in client.get("/runs").text
    finally:
        for f in written:
            f.unlink()


RESULTS_SHAPES = {
    "a list": [],
    "runs as text": {"runs": "x", "summary": []},
    "a mean of 1e308": {"summary": {"ours": {"id_acc": {"mean": 1e308}, "ood_f1": {"mean": 0.5}}}},
    "curves of text": {"curves": {"curves": {"wise-ft": "abc"}}},
    "runs at -0.01": {"runs": [{"method": "ours", "seed": 0, "metrics": {
        "student": {"test": {"accuracy": -0.01}, "ood_test": {"macro_f1": -0.01}}}}]},
}


@pytest.mark.parametrize("case", RESULTS_SHAPES)
def test_results_of_another_shape_leave_the_bench_page_up(site: dict, case: str) -> None:
    client, bench = site["client"], site["work"] / "odd-bench"
    bench.mkdir(exist_ok=True)
    (bench / "results.json").write_text(json.dumps(RESULTS_SHAPES[case]))
    (bench / "report.md").write_text("# Still shown\n")
    rec = site["bench"].model_copy(update={"id": registry.record_id(bench), "folder": str(bench), "runs": []})
    registry.write_bench(str(site["root"]), rec)
    try:
        r = client.get(f"/benches/{rec.id}")
        assert r.status_code == 200 and "Still shown" in r.text, (case, r.status_code)
        assert client.get("/benches").status_code == 200
    finally:
        (site["root"] / registry.BENCHES_DIR / f"{rec.id}.json").unlink()


def test_records_are_validated_on_write(site: dict) -> None:
    """Metrics are proportions in [0, 1] and counts integers, in records written here and posted by trainers."""
    good = site["runs"][0]
    for change in ({"accuracy": 1.5}, {"accuracy": -0.01}, {"accuracy": 1e308}, {"macro_f1": float("nan")},
                   {"n": 10.5}, {"n": "10"}, {"ece": True}):
        m = json.loads(json.dumps(good.metrics))
        m["student"]["test"].update(change)
        with pytest.raises(ValidationError):
            registry.RunRecord.model_validate({**good.model_dump(), "metrics": m})
        if "macro_f1" not in change:  # NaN is not JSON
            body = json.dumps({**json.loads(good.model_dump_json()), "metrics": m})
            r = site["client"].post("/v1/runs", content=body, headers={**AUTH, "content-type": "application/json"})
            assert r.status_code == 422, (change, r.text)
    for folder in ("", "relative/bench"):
        with pytest.raises(ValidationError, match="folder"):
            registry.BenchRecord.model_validate({**site["bench"].model_dump(), "folder": folder})


def test_a_bench_record_without_a_folder_serves_nothing(site: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`folder: ""` would be the service's working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.md").write_text("a file of the working directory")
    rid = "b" * 16
    data = {**json.loads(site["bench"].model_dump_json()), "id": rid, "folder": ""}
    target = site["root"] / registry.BENCHES_DIR / f"{rid}.json"
    target.write_text(json.dumps(data))
    try:
        r = site["client"].get(f"/benches/{rid}/files/secret.md")
        assert r.status_code == 404 and "working directory" not in r.text
        assert site["client"].get(f"/benches/{rid}").status_code == 404
        assert site["client"].get("/benches").status_code == 200
    finally:
        target.unlink()


def test_bench_file_names_with_a_null_byte_are_refused(site: dict) -> None:
    r = site["client"].get(f"/benches/{site['bench'].id}/files/plot%00.svg")
    assert r.status_code == 404, r.status_code


def test_a_link_loop_in_the_bench_folder_is_not_followed(site: dict) -> None:
    bench = site["bench"]
    loop = [Path(bench.folder) / n for n in ("results.json", "loop.svg")]
    saved = loop[0].read_bytes()
    loop[0].unlink()
    loop[0].symlink_to(loop[1])
    loop[1].symlink_to(loop[0])
    try:
        assert site["client"].get(f"/benches/{bench.id}").status_code == 200
        assert site["client"].get(f"/benches/{bench.id}/files/loop.svg").status_code == 404
    finally:
        for f in loop:
            f.unlink()
        loop[0].write_bytes(saved)


def test_bench_files_are_served_under_a_policy_that_runs_no_script(site: dict) -> None:
    r = site["client"].get(f"/benches/{site['bench'].id}/files/plot.svg")
    assert r.status_code == 200 and r.content == SVG
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_fifos_in_the_registry_and_bench_folder_do_not_hang_requests(site: dict) -> None:
    root = site["root"]
    fifos = [root / registry.RUNS_DIR / site["key"] / f"{'c' * 16}.json", root / registry.BENCHES_DIR / "fifo.json",
             root / registry.RUNS_DIR / "fifo.json"]
    for f in fifos:
        os.mkfifo(f)
    answers: dict[str, int] = {}

    def visit() -> None:
        for path in pages(site):
            answers[path] = site["client"].get(path).status_code

    visitor = threading.Thread(target=visit, daemon=True)
    try:
        visitor.start()
        visitor.join(120)
        assert not visitor.is_alive(), f"a request hangs on a FIFO; answered so far: {answers}"
        assert set(answers.values()) == {200}, answers
    finally:
        for f in fifos:  # a reader blocked in open() gets end-of-file once a writer comes and goes
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            f.unlink()


def test_a_large_report_is_not_rendered_and_a_small_one_once(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    client, bench = site["client"], site["bench"]
    report = Path(bench.folder) / "report.md"
    calls = []
    real = markdown_html.render
    monkeypatch.setattr(markdown_html, "render", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    try:
        report.write_text("# Big\n\n" + "| a | b |\n|---|---|\n" + "| 1 | 2 |\n" * REPORT_CAP)
        r = client.get(f"/benches/{bench.id}")
        assert r.status_code == 200 and "too large" in r.text and not calls
        assert f'href="/benches/{bench.id}/files/report.md"' in r.text
        report.write_text("# Small report\n")
        for _ in range(3):
            assert "Small report" in client.get(f"/benches/{bench.id}").text
        assert len(calls) == 1, "rendered once, then served from memory"
        report.write_text("# Changed report, another size\n")
        assert "Changed report" in client.get(f"/benches/{bench.id}").text and len(calls) == 2
    finally:
        report.write_text("# A report\n\n![plot](plot.svg)\n")



def run_folder(folder: Path, key: str, acc: float, **config: object) -> Path:
    """A run folder as the trainer leaves it: its config.json and metrics.json."""
    from robustkd.trainer.config import TrainConfig

    folder.mkdir(parents=True)
    cfg = TrainConfig(cache=str(folder.parent / "cache" / key), out=str(folder), **config)
    (folder / "config.json").write_text(cfg.model_dump_json(indent=1))
    (folder / "metrics.json").write_text(json.dumps(metrics(key, acc, acc - 0.1)))
    return folder


def test_variants_of_a_method_are_named_apart(tmp_path: Path) -> None:
    """Runs differing in λs, distance or unlabelled groups get different names, so the plane does not merge
    them into one mean; seeds of one recipe share a name."""
    from robustkd.teacher_service import svgplot
    from robustkd.trainer.record import record_of

    key = "d" * 64
    variants = {"ours": {}, "ours-lora": {"adapter": "lora"}, "ft": {"method": "ft"},
                "ours-hybrid[act-distance=ldifs]": {"lambda_act": 0.1, "act_distance": "ldifs"},
                "ours-act-only": {"lambda_distill": 0.0, "lambda_act": 0.1},
                "ours-unlabelled": {"unlabelled_groups": 8}}
    records = []
    for i, (expected, config) in enumerate(variants.items()):
        for seed in (0, 1):
            rec = record_of(run_folder(tmp_path / f"{i}-{seed}", key, 0.6 + 0.01 * i, seed=seed,
                                       **{"method": "ours", **config}))
            assert rec.name == expected, (config, rec.name)
            records.append(rec)
    means = svgplot.from_records(records)["means"]
    assert {n: m["n"] for n, m in means.items() if n != "teacher"} == {n: 2 for n in variants}


def test_bench_runs_are_recorded_under_the_bench_name(tmp_path: Path) -> None:
    """A bench names its runs and their WiSE points as its report does; the dashboard shows those names."""
    from robustkd.analysis import ALPHAS
    from robustkd.bench import wise_or_reuse
    from robustkd.trainer.record import register

    key = "d" * 64
    run = run_folder(tmp_path / "ours-unlabelled" / "seed0", key, 0.7, method="ours", unlabelled_groups=8)
    assert register(run, name="ours-unlabelled").name == "ours-unlabelled"
    for a in ALPHAS:  # evaluated before: the bench reuses them
        point = run / "wise" / f"alpha-{a:g}"
        point.mkdir(parents=True)
        wise = {"alpha": a, "of": str(run)}
        (point / "metrics.json").write_text(json.dumps({**metrics(key, 0.7, 0.6), "wise": wise}))
    wise_or_reuse(run, False, "ours-unlabelled")
    recorded = {(r.name, r.alpha, r.curve_of) for r in registry.read_runs(str(tmp_path / "ours-unlabelled" / "cache"))}
    assert recorded == {("ours-unlabelled", None, None),
                        *((f"ours-unlabelled-wise-{a:g}", a, "ours-unlabelled") for a in ALPHAS)}


def test_evaluating_a_bench_run_again_keeps_its_bench_name(tmp_path: Path) -> None:
    """`robustkd eval` on a bench's run records it without a name: the record it replaces keeps the name the bench
    gave it (the forgetting bench's `ours-general` is `ours-unlabelled` by its config)."""
    from robustkd.trainer.record import register

    key = "e" * 64
    run = run_folder(tmp_path / "ours-general" / "seed0", key, 0.7, method="ours", unlabelled_groups=8)
    register(run, name="ours-general")
    assert register(run).name == "ours-general"
    root = str(tmp_path / "ours-general" / "cache")
    assert [r.name for r in registry.read_runs(root)] == ["ours-general"]
    fresh = run_folder(tmp_path / "other" / "seed0", key, 0.7, method="ours", unlabelled_groups=8)
    assert register(fresh).name == "ours-unlabelled"  # never named by a bench: its config's name


def test_a_bench_run_evaluated_again_keeps_its_name_on_a_service(make_server, tiny_model: Path,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    """A run trained on a service's cache posts its record there; `robustkd eval` posts it again without a name and
    the service keeps the bench's name (a real server)."""
    from robustkd.trainer.record import register

    root, key = tmp_path / "root", "e" * 64
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(root)).start()

    def trained_on_the_service(folder: Path) -> Path:
        run = run_folder(folder, key, 0.7, method="ours", unlabelled_groups=8)
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "cache": f"{srv.url}/v1/caches/{key}"}))
        return run

    run = trained_on_the_service(tmp_path / "ours-general" / "seed0")
    assert register(run, name="ours-general").name == "ours-general"
    assert register(run).name == "ours-general"
    assert [(r.name, r.id) for r in registry.read_runs(str(root))] == [("ours-general", registry.record_id(run))]
    fresh = trained_on_the_service(tmp_path / "other" / "seed0")
    assert register(fresh).name == "ours-unlabelled"  # never named by a bench: its config's name
