"""The dashboard's handlers through TestClient, on a real cache from a tiny model and runs that recorded themselves
(the trainer, a WiSE point, a bench record); the browser tests are in test_dashboard_browser.py (slow)."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from robustkd.shared import files, registry
from robustkd.shared.methods import METHODS
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest, JobStatus
from robustkd.teacher_service import svgplot
from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.jobs import JOBS_DIR, JobManager
from robustkd.teacher_service.settings import Settings
from robustkd.teacher_service.store import Store
from tests.conftest import REPO
from tests.test_api import wait

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"task": "sentiment-rt-drugs", "limit": 6, "shard_rows": 9, "layers": [1, 2]}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c636000"
                    "0000020001e221bc330000000049454e44ae426082")  # a 1×1 PNG
REPORT = """# Bench <b>report</b>

A paragraph with **bold**, `code` and <script>alert(1)</script>.

| method | OOD F1 |
|---|---|
| ours | 0.700 |

![ID vs OOD](id_vs_ood.png)
![remote](http://example.com/x.png)
![outside](../outside.png)
"""


class Tables(HTMLParser):
    """Cell texts of each table with an id: {id: [[cell, ...], ...]} (header rows included)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self.current = a["id"]
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.tables[self.current].append([])
        elif tag in ("td", "th") and self.current:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.current and self.cell is not None:
            self.tables[self.current][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


@pytest.fixture(scope="module")
def dash(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A service with one cache, three trained runs and a WiSE point recorded by the trainer, and a bench record."""
    from robustkd.analysis import summarise
    from robustkd.bench import record_bench
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.train import train_and_evaluate
    from robustkd.trainer.wise import write_wise

    work = tmp_path_factory.mktemp("dash")
    root = work / "cache"
    settings = Settings(cache_root=str(root), model=str(tiny_model), threads=1, api_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        key = client.post("/v1/caches", json=BODY, headers=AUTH).json()["key"]
        assert wait(client, key)["state"] == "succeeded"
        runs = {}
        for method, seed in (("ft", 0), ("ours", 0), ("ours", 1)):
            out = work / "runs" / f"{method}-{seed}"
            train_and_evaluate(TrainConfig(cache=str(root / key), out=str(out), method=method, seed=seed, max_steps=2,
                                           batch_groups=4, threads=1))
            runs[(method, seed)] = out
        write_wise(runs[("ours", 0)], [0.5])
        bench = work / "bench"
        bench.mkdir()
        members = [{"method": m, "seed": s, "run": str(f),
                    "metrics": json.loads((f / "metrics.json").read_text())} for (m, s), f in runs.items()]
        (bench / "results.json").write_text(json.dumps({"summary": summarise(members), "runs": members}))
        (bench / "report.md").write_text(REPORT)
        (bench / "id_vs_ood.png").write_bytes(PNG)
        (bench / "notes.txt").write_text("not served")
        (bench / ".hidden.png").write_bytes(PNG)
        (work / "outside.png").write_bytes(PNG)
        (bench / "link.png").symlink_to(work / "outside.png")
        record_bench("bench", str(root / key), key, bench, "sentiment-rt-drugs", members, 2, ["ft", "ours"], "small")
        yield {"client": client, "root": root, "key": key, "runs": runs, "bench": bench, "work": work}


def test_runs_record_themselves_beside_their_cache(dash: dict) -> None:
    root, key = dash["root"], dash["key"]
    folder = dash["runs"][("ours", 1)]
    rec = registry.RunRecord.model_validate_json((root / "_runs" / key / f"{registry.record_id(folder)}.json")
                                                 .read_bytes())
    assert (rec.name, rec.seed, rec.alpha, rec.cache_key) == ("ours", 1, None, key)
    assert rec.metrics == json.loads((folder / "metrics.json").read_text()) and rec.config["method"] == "ours"
    wise = {r.name: r for r in registry.read_runs(str(root), key)}["ours-wise-0.5"]
    assert (wise.alpha, wise.curve_of, wise.config["seed"]) == (0.5, "ours", 0)
    assert not any(p.name.startswith("_") for p in (root / key).iterdir())  # nothing written inside the cache
    assert [b.kind for b in registry.read_benches(str(root))] == ["bench"]


def test_caches_page(dash: dict) -> None:
    r = dash["client"].get("/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    rows = Tables(r.text).tables["caches"]
    m = CacheReader(str(dash["root"] / dash["key"])).manifest
    size = Store(str(dash["root"])).child(dash["key"]).size_bytes()
    cells = rows[1]
    assert cells[0] == dash["key"][:12] and cells[2] == "sentiment-rt-drugs" and "keyboard_typo" in cells[3]
    assert all(f"{s} {r.stop - r.start}" in cells[4] for s, r in m.splits.items())
    assert cells[6] == f"{size / m.n_rows:,.0f}" and cells[7] == "complete" and cells[9] == "3"


def test_cache_page_shows_balance_sample_and_students(dash: dict) -> None:
    key = dash["key"]
    r = dash["client"].get(f"/caches/{key}")
    assert r.status_code == 200
    m = CacheReader(str(dash["root"] / key)).manifest
    for row in Tables(r.text).tables["splits"][1:]:
        counts = m.label_counts[row[0]]
        assert [int(c.split()[1]) for c in row[3:]] == counts  # "50% 3 (50%)": meter text, count, share
    train = m.splits["train"]
    group = CacheReader(str(dash["root"] / key)).read_rows(train.start, train.start + train.group_size).rows
    for text in group.column("text").to_pylist():
        assert html.escape(text, quote=False) in r.text
    assert group.column("perturbation").to_pylist()[0] == "clean" and ">clean<" in r.text
    svg = r.text[r.text.index("<svg viewBox"):r.text.index("</svg>")]
    assert svg.count('r="3.5"') == 4  # one dot per recorded run (ft, ours × 2, the WiSE point)
    ours = re.search(r'data-tip="ours: mean of 2 — ID acc [0-9.]+, OOD macro-F1 [0-9.]+ \(ID ', svg)
    assert ours, "the mean of two seeds has its interval"
    assert svg.count("<polyline") == 1  # teacher → ours-wise-0.5 → ours


def _column(text: str, key: str) -> list[float | None]:
    cells = re.findall(rf'<td class="num" data-key="{key}">([^<]*)</td>', text)
    return [None if c == "–" else float(c) for c in cells]


def test_run_table_sorts_filters_and_refuses_bad_input(dash: dict) -> None:
    client = dash["client"]
    for order in ("asc", "desc"):
        r = client.get("/runs", params={"sort": "ood_f1", "order": order})
        values = [v for v in _column(r.text, "ood_f1") if v is not None]
        assert len(re.findall(r'<tr data-run="', r.text)) == 4 and len(values) == 4
        assert values == sorted(values, reverse=order == "desc")
        assert 'aria-sort="ascending"' in r.text if order == "asc" else 'aria-sort="descending"' in r.text
    ours = client.get("/runs", params={"method": "ours"}).text
    names = re.findall(r'<td><a href="/runs/[0-9a-f]{16}">([^<]*)</a></td>', ours)
    assert names == ["ours", "ours"]
    for params, message in (({"sort": "nope"}, "sort: unknown column"), ({"order": "up"}, "order: "),
                            ({"cache": "../etc"}, "cache: a cache key")):
        bad = client.get("/runs", params=params)
        assert bad.status_code == 400 and message in bad.text and "Traceback" not in bad.text
    odd = client.get("/runs", params={"method": "<script>x</script>"})
    assert odd.status_code == 200 and "&lt;script&gt;x&lt;/script&gt;" in odd.text and "<script>x" not in odd.text


def test_run_page(dash: dict) -> None:
    client = dash["client"]
    wise = registry.record_id(dash["runs"][("ours", 0)] / "wise" / "alpha-0.5")
    r = client.get(f"/runs/{wise}")
    assert r.status_code == 200 and "WiSE-FT α = 0.5 of ours" in r.text and ">ood_test<" in r.text
    # what the method is, from the method table
    assert f"WiSE-FT point of ours: its weights interpolated toward the teacher's. ours: {METHODS['ours'].summary}" \
        in html.unescape(r.text)
    ft = client.get(f"/runs/{registry.record_id(dash['runs'][('ft', 0)])}").text
    assert METHODS["ft"].summary in html.unescape(ft)
    assert client.get("/runs/" + "0" * 16).status_code == 404
    assert client.get("/runs/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert client.get(f"/caches/{'z' * 64}").status_code == 400 and client.get(f"/caches/{'0' * 64}").status_code == 404


def test_bench_page_renders_its_report_and_serves_only_its_files(dash: dict) -> None:
    client, bench = dash["client"], registry.read_benches(str(dash["root"]))[0]
    listing = client.get("/benches").text
    assert f'href="/benches/{bench.id}"' in listing
    r = client.get(f"/benches/{bench.id}")
    assert r.status_code == 200
    for tag in ("<h2>Bench &lt;b&gt;report&lt;/b&gt;</h2>", "<strong>bold</strong>", "<code>code</code>",
                "&lt;script&gt;alert(1)&lt;/script&gt;", "<td>0.700</td>", "[image: remote]", "[image: outside]",
                f'<img src="/benches/{bench.id}/files/id_vs_ood.png" alt="ID vs OOD"'):
        assert tag in r.text, tag
    assert "example.com" not in r.text and '<svg viewBox' in r.text  # the plot from results.json
    png = client.get(f"/benches/{bench.id}/files/id_vs_ood.png")
    assert png.status_code == 200 and png.content == PNG and png.headers["content-type"] == "image/png"
    for name in ("notes.txt", ".hidden.png", "link.png", "..%2Foutside.png", "..%2F..%2F..%2Fetc%2Fpasswd",
                 "missing.png"):
        refused = client.get(f"/benches/{bench.id}/files/{name}")
        assert refused.status_code == 404 and refused.content != PNG and "root:" not in refused.text, name
    assert client.get("/benches/" + "0" * 16).status_code == 404
    assert client.get("/benches/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/..%2Fapp.py").status_code == 404 and client.get("/static/app.py").status_code == 404


def test_posted_records_need_the_token_and_are_escaped(dash: dict) -> None:
    from robustkd.trainer.record import record_of

    client, root, key = dash["client"], dash["root"], dash["key"]
    rec = record_of(dash["runs"][("ft", 0)]).model_copy(update={"id": "f" * 16, "name": "<script>alert(1)</script>"})
    body, as_json = rec.model_dump_json(), {"content-type": "application/json"}
    assert client.post("/v1/runs", content=body, headers=as_json).status_code == 401
    assert client.post("/v1/runs", content=body, headers={**AUTH, **as_json}).status_code == 200
    try:
        page = client.get("/runs").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
        bad = client.post("/v1/runs", json={**json.loads(body), "id": "../../x"}, headers=AUTH)
        assert bad.status_code == 422
    finally:
        (root / "_runs" / key / f"{'f' * 16}.json").unlink()


def test_pages_do_not_show_the_cache_root(dash: dict, tiny_model: Path) -> None:
    """The API answers with `<cache root>` for the host's path; so do the pages (run config, folders, errors).
    The model is named by its folder's name, never by its host path (the cache page shows the spec)."""
    client, key, root = dash["client"], dash["key"], dash["root"]
    runs = registry.read_runs(str(root), key)
    bench = registry.read_benches(str(root))[0]
    for path in ("/", f"/caches/{key}", "/jobs", "/runs", "/benches", f"/benches/{bench.id}",
                 *(f"/runs/{r.id}" for r in runs)):
        text = client.get(path).text
        assert str(root) not in text and str(root.resolve()) not in text, path
        assert str(tiny_model) not in text and str(tiny_model.resolve()) not in text, path
    assert f"&lt;cache root&gt;/{key}" in client.get(f"/runs/{runs[0].id}").text


def test_pages_fetch_nothing_from_elsewhere_and_label_their_controls(dash: dict) -> None:
    client, key = dash["client"], dash["key"]
    for path in ("/", f"/caches/{key}", "/jobs", "/runs", f"/runs?cache={key}", "/benches", "/docs", "/redoc"):
        text = client.get(path).text
        assert not re.search(r'(src|href)=["\'](https?:)?//', text), path
        for control in re.findall(r'<(?:select|input)[^>]*\bid="([^"]+)"', text):
            assert f'<label for="{control}"' in text, (path, control)


def test_jobs_page_shows_queue_positions_failures_and_cancels(tiny_model: Path, tmp_path: Path) -> None:
    """The worker is never started, so queued jobs stay queued; a failed job is restored from its record."""
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1, api_token=TOKEN)
    failed = JobStatus(key="ab" * 32, state="failed", error="OSError: disk <full>", request=CacheRequest(limit=6),
                       submitted_at="2026-01-01T00:00:00.000+00:00")
    Store(str(tmp_path)).write_json(f"{JOBS_DIR}/{failed.key}.json", failed.model_dump(mode="json"))
    app = create_app(settings)
    app.state.jobs = JobManager(settings)  # TestClient without `with`: no lifespan, so no worker
    client = TestClient(app)
    try:
        keys = [client.post("/v1/caches", json={**BODY, "perturb_seed": s}, headers=AUTH).json()["key"] for s in (1, 2)]
        page = client.get("/jobs").text
        rows = {row[0]: row for row in Tables(page).tables["jobs"][1:]}
        assert [rows[k[:12]][2] for k in keys] == ["queued", "queued"]
        assert [rows[k[:12]][6] for k in keys] == ["0", "1"]
        assert rows[failed.key[:12]][2] == "failed" and rows[failed.key[:12]][8] == "OSError: disk <full>"
        assert "disk &lt;full&gt;" in page and page.count('class="cancel"') == 2
        assert '<label for="token">' in page
        assert client.delete(f"/v1/jobs/{keys[1]}").status_code == 401
        assert client.delete(f"/v1/jobs/{keys[1]}", headers=AUTH).json()["state"] == "cancelled"
        fragment = client.get("/jobs/rows").text
        assert f'id="job-{keys[1]}" data-state="cancelled"' in fragment
        assert f'id="job-{keys[0]}" data-state="queued"' in fragment
        jobs = app.state.jobs  # as if the worker had taken it and a cancel had come: `cancelling`, no button
        jobs.jobs[keys[0]] = jobs.jobs[keys[0]].model_copy(update={"state": "cancelling"})
        rows_html = client.get("/jobs/rows").text
        row = re.search(rf'<tr id="job-{keys[0]}" data-state="cancelling">.*?</tr>', rows_html, re.S)
        assert row and 'class="cancel"' not in row[0] and "state-cancelling" in row[0]
        assert "1 job queued, running or cancelling" in client.get("/").text
    finally:
        app.state.jobs.close()


def test_registry_on_an_fsspec_root_skips_unreadable_records(tmp_path: Path) -> None:
    import fsspec

    root = "memory://robustkd-registry-test/caches"
    rec = registry.RunRecord(id=registry.record_id(tmp_path / "run"), cache_key="c" * 64, name="ft", method="ft",
                             adapter="full", seed=0, folder=str(tmp_path / "run"), host="h", created_at="2026",
                             config={}, metrics={"student": {"test": {"accuracy": 0.5}}})
    registry.write_run(root, rec)
    fsspec.filesystem("memory").pipe_file(f"/robustkd-registry-test/caches/_runs/{'c' * 64}/broken.json", b"{")
    assert registry.read_runs(root) == [rec] and registry.read_runs(root, "d" * 64) == []
    assert registry.find_run(root, rec.id) == rec and registry.find_run(root, "e" * 16) is None
    assert rec.headline()["id_acc"] == 0.5 and rec.headline()["ood_f1"] is None
    assert registry.root_of(f"{root}/{'c' * 64}") == root
    assert registry.root_of(str(tmp_path / "c")) == str(tmp_path)
    assert registry.record_id(tmp_path / "run") == registry.record_id(str(tmp_path / "x" / ".." / "run"))
    with pytest.raises(ValueError, match="service URL"):
        registry.root_of("http://127.0.0.1:8000/v1/caches/" + "c" * 64)


def test_plane_from_a_bench_results_and_its_axes() -> None:
    results = {"summary": {"teacher": {"id_acc": {"mean": 0.7}, "ood_f1": {"mean": 0.6}, "n_seeds": 1},
                           "lp-ft": {"id_acc": {"mean": 0.8}, "ood_f1": {"mean": 0.5}, "n_seeds": 2,
                                     "ci": {"id_lo": 0.78, "id_hi": 0.82, "ood_lo": 0.45, "ood_hi": 0.55}},
                           "wise-ft-0.5": {"id_acc": {"mean": 0.76}, "ood_f1": {"mean": 0.58}, "n_seeds": 2}},
               "curves": {"curves": {"wise-ft": [{"method": "teacher"}, {"method": "wise-ft-0.5"},
                                                 {"method": "lp-ft"}]}},
               "runs": [{"method": "lp-ft", "seed": 0, "metrics": {"student": {"test": {"accuracy": 0.79},
                                                                               "ood_test": {"macro_f1": 0.52}}}}]}
    p = svgplot.layout(svgplot.from_results(results, {("lp-ft", 0): "a" * 16}))
    assert [d["href"] for d in p["dots"]] == ["/runs/" + "a" * 16]
    assert len(p["lines"]) == 1 and p["lines"][0]["points"].count(",") == 3
    marks = {m["name"]: m for m in p["marks"]}
    assert marks["lp-ft"]["xci"][0] < marks["lp-ft"]["cx"] < marks["lp-ft"]["xci"][1]
    assert marks["teacher"]["teacher"] and marks["wise-ft-0.5"]["wise"] and marks["teacher"]["xci"] is None
    assert svgplot.colours(["lp-ft", "wise-ft-0.5"])["wise-ft-0.5"] == svgplot.colours(["lp-ft"])["lp-ft"]
    assert svgplot.ticks(0.42, 0.81) == [0.5, 0.6, 0.7, 0.8] and svgplot.ticks(0.7, 0.76) == [0.7, 0.72, 0.74, 0.76]
    assert svgplot.t_interval([0.5]) is None and svgplot.t_interval([0.4, 0.6])[0] < 0.4
    assert svgplot.layout({"means": {}, "runs": [], "curves": {}, "ci": ""}) is None
    for res in sorted(REPO.glob("docs/bench-*/**/results.json")):  # the shapes benches write are still drawn
        p = svgplot.layout(svgplot.from_results(json.loads(res.read_text()), {}))
        assert p is not None and p["marks"] and p["dots"], res


def test_a_forgetting_bench_is_drawn_on_the_retention_plane() -> None:
    """A causal-LM bench has no OOD macro-F1: its plane is ID accuracy against −KL to the teacher on unrelated
    prompts, from the committed condition-drugs bench (ft forgets: its KL is far above the teacher's)."""
    results = json.loads((REPO / "docs/bench-lm-forgetting/condition-drugs-gpu/results.json").read_text())
    data = svgplot.from_results(results, {("ft", 0): "f" * 16})
    assert data["axes"] is svgplot.RETENTION
    ft, teacher = data["means"]["ft"], data["means"]["teacher"]
    assert ft["y"] == -results["summary"]["ft"]["kl"]["mean"] and ft["yci"][0] < ft["y"] < ft["yci"][1]
    assert ft["x"] > teacher["x"] and ft["y"] < teacher["y"] <= 0
    p = svgplot.layout(data)
    assert p["y_label"].startswith("−KL per token") and p["x_label"] == "ID test accuracy"
    assert {ln["name"] for ln in p["lines"]} == {"ft", "lora", "ours", "ours-general"}
    assert all(ln["points"].count(",") == 5 for ln in p["lines"])  # teacher, three WiSE points, the run
    marks = {m["name"]: m for m in p["marks"]}
    assert marks["ft"]["cy"] > marks["teacher"]["cy"]  # lower on the page: less retained
    hrefs = [d["href"] for d in p["dots"] if d["href"]]
    assert hrefs == ["/runs/" + "f" * 16] and len(p["dots"]) == len(results["runs"]) - 1  # every run but the teacher
    assert "−KL/token" in marks["ft"]["tip"] and p["yticks"] and all(float(t) <= 0 for _, t in p["yticks"])


def test_a_forgetting_bench_page_and_its_students_draw_the_retention_plane(tmp_path: Path, tiny_model: Path) -> None:
    """The bench page of the committed condition-drugs bench, and a generative cache's records (no OOD macro-F1),
    are drawn as ID accuracy against −KL to the teacher."""
    results = json.loads((REPO / "docs/bench-lm-forgetting/condition-drugs-gpu/results.json").read_text())
    root, bench = tmp_path / "cache", tmp_path / "bench"
    bench.mkdir(parents=True)
    (bench / "results.json").write_text(json.dumps(results))
    (bench / "report.md").write_text("# Forgetting")
    rec = registry.BenchRecord(id="b" * 16, kind="bench", cache_key="c" * 64, task="condition-drugs",
                               folder=str(bench), host="h", created_at="2026", seeds=3, methods=["ft"])
    registry.write_bench(str(root), rec)
    with TestClient(create_app(Settings(cache_root=str(root), model=str(tiny_model), threads=1))) as client:
        page = client.get(f"/benches/{rec.id}").text
    assert "−KL per token to the teacher (unrelated prompts)</text>" in page and page.count("<polyline") == 4
    students = [r for r in results["runs"] if r["method"] != "teacher"]
    records = [registry.RunRecord(id=f"{i:016x}", cache_key="c" * 64, name=r["method"], method="ft", adapter="full",
                                  seed=r["seed"], folder=f"/runs/{i}", host="h", created_at="2026", config={},
                                  metrics=r["metrics"]) for i, r in enumerate(students)]
    data = svgplot.from_records(records)
    assert data["axes"] is svgplot.RETENTION and len(data["runs"]) == len(records)
    means = data["means"]
    assert means["ft"]["n"] == results["seeds"] == 3 and means["ft"]["y"] < means["ours-general"]["y"] < 0


def test_the_runs_page_of_one_cache_reads_that_cache_s_records_only(tmp_path: Path, tiny_model: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """/runs?cache=KEY opens the records of KEY only; its cache selector still offers every cache with runs."""
    root = tmp_path / "cache"
    for i, key in enumerate("cd"):
        registry.write_run(str(root), registry.RunRecord(
            id=f"{i:016x}", cache_key=key * 64, name="ft", method="ft", adapter="full", seed=i, folder=f"/runs/{i}",
            host="h", created_at="2026", config={}, metrics={"student": {"test": {"accuracy": 0.5}}}))
    read = []
    real = files.read_regular
    monkeypatch.setattr(files, "read_regular", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    with TestClient(create_app(Settings(cache_root=str(root), model=str(tiny_model), threads=1))) as client:
        read.clear()
        page = client.get(f"/runs?cache={'d' * 64}")
        assert page.status_code == 200
    opened = [p for p in read if f"/{registry.RUNS_DIR}/" in p]
    assert opened == [f"{root}/{registry.RUNS_DIR}/{'d' * 64}/{1:016x}.json"]
    assert "c" * 64 in page.text  # the selector


def test_a_run_page_reads_its_own_record_only(tmp_path: Path, tiny_model: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's page finds its record by its file name under each cache, not by reading every record of the root."""
    root = tmp_path / "cache"
    recs = [registry.RunRecord(id=f"{i:016x}", cache_key=key * 64, name="ft", method="ft", adapter="full", seed=i,
                               folder=f"/runs/{i}", host="h", created_at="2026", config={},
                               metrics={"student": {"test": {"accuracy": 0.5}}})
            for i, key in enumerate("cccd")]
    for rec in recs:
        registry.write_run(str(root), rec)
    read = []
    real = files.read_regular
    monkeypatch.setattr(files, "read_regular", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    with TestClient(create_app(Settings(cache_root=str(root), model=str(tiny_model), threads=1))) as client:
        read.clear()
        assert client.get(f"/runs/{recs[3].id}").status_code == 200
        opened = [p for p in read if f"/{registry.RUNS_DIR}/" in p and Path(p).exists()]  # a miss is a failed open
        assert opened == [f"{root}/{registry.RUNS_DIR}/{'d' * 64}/{recs[3].id}.json"]
        assert client.get("/runs/" + "e" * 16).status_code == 404
