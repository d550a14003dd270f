"""Generative caches on a tiny Llama: a JSONL file of prompt/response pairs through precompute -> train -> eval
with both sparse kinds; the cached targets against a fresh forward; reading back from a URL and the row stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.shared.reader import CacheReader, table_to_shard
from robustkd.shared.schemas import CacheRequest
from robustkd.shared.sparse import read_batch
from robustkd.teacher_service.resolve import RequestError, resolve
from robustkd.testing import make_tiny_llama, minilm_path

CITIES = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Japan": "Tokyo", "Peru": "Lima", "Chile": "Santiago",
          "Kenya": "Nairobi", "Egypt": "Cairo", "Norway": "Oslo", "Greece": "Athens", "Cuba": "Havana",
          "Ghana": "Accra", "Nepal": "Kathmandu", "Iran": "Tehran", "Iraq": "Baghdad", "Laos": "Vientiane"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    with open(path, "w") as fh:
        for i, (country, city) in enumerate(CITIES.items()):
            fh.write(json.dumps({"q": f"The capital of {country} is", "a": city, "era": "old" if i < 12 else "new"})
                     + "\n")
    return path


def file_args(pairs: Path) -> list[str]:
    return ["--task", "file", "--path", str(pairs), "--prompt-column", "q", "--response-column", "a",
            "--domain-column", "era", "--id-domains", "old", "--ood-domains", "new", "--variants", "1",
            "--max-length", "32", "--max-response-tokens", "6", "--shard-rows", "6"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gen"), seed=3)


@pytest.fixture(scope="module")
def caches(llama: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen-cache")
    runner = CliRunner(env={"ROBUSTKD_CACHE_ROOT": str(root)})
    out = {}
    for kind, k in (("sampled", "12"), ("top-k", "8")):
        key_file = root / f"{kind}.key"
        res = runner.invoke(app, ["precompute", "--model", str(llama), *file_args(pairs), "--sparse", kind,
                                  "--sparse-k", k, "--key-file", str(key_file)])
        assert res.exit_code == 0, res.output
        out[kind] = root / key_file.read_text().strip()
    return out


def test_cached_targets_match_a_fresh_forward(llama: Path, caches: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama)).eval()
    for kind, folder in caches.items():
        r = CacheReader(str(folder))
        assert r.manifest.spec.sparse.index_dtype == "uint16" and "logits" not in r.manifest.arrays
        rows = r.read_split("train").rows
        t = read_batch(kind, rows.slice(0, 1), r.manifest.spec.sparse.k)
        ids, n = rows.column("input_ids")[0].as_py(), rows.column("prompt_len")[0].as_py()
        assert rows.column("response")[0].as_py() in CITIES.values() and len(ids) - n == t.n_tokens
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, n - 1:len(ids) - 1], -1)
        if kind == "top-k":
            top = torch.topk(logp, 8, -1)
            assert (t.ids == top.indices.numpy()).all()
            np.testing.assert_allclose(t.logp, top.values.numpy(), rtol=2e-3)
            rest = torch.log1p(-top.values.exp().sum(-1))
            np.testing.assert_allclose(t.rest, rest.numpy(), atol=2e-3)
        else:
            assert all(np.bincount(t.token, weights=t.weight * 12).round() == 12)  # k draws per token


def test_generative_file_trains_and_evaluates_with_both_kinds(caches: dict[str, Path], tmp_path: Path) -> None:
    for kind, folder in caches.items():
        run = tmp_path / kind
        res = CliRunner().invoke(app, ["train", "--cache", str(folder), "--out", str(run), "--adapter", "lora",
                                       "--max-steps", "2", "--batch-groups", "2", "--threads", "1", "--lr", "1e-2",
                                       "--lambda-act", "0.1"])  # ours' default λ3 is 0: the activation term kept
        assert res.exit_code == 0, res.output
        assert "nll/token" in res.output
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert all({"task", "distill", "act"} <= set(r) for r in log)
        if kind == "top-k":  # the student starts as the teacher: the top-k KL starts at ~0
            assert abs(log[0]["distill"]) < 1e-3
        res = CliRunner().invoke(app, ["eval", str(run)])
        assert res.exit_code == 0, res.output
        m = json.loads((run / "metrics.json").read_text())["student"]
        assert set(m) == {"test", "ood_test", "test_heldout"} and m["ood_test"]["n"] == 4
        assert m["test"]["perplexity"] > 1 and 0 <= m["ood_test"]["exact_match"] <= 1


def test_generative_cache_reads_from_a_url_and_the_row_stream(llama: Path, caches: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    local = CacheReader(str(caches["sampled"]))
    url = CacheReader("file://" + str(caches["sampled"]))
    assert url.read_shard(1).rows.equals(local.read_shard(1).rows)
    settings = Settings(cache_root=str(caches["sampled"].parent), model=str(llama), threads=1)
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/v1/caches/{local.key}/rows", params={"start": 0, "stop": local.manifest.n_rows})
    assert r.status_code == 200, r.text
    wire = table_to_shard(0, pa.ipc.open_stream(pa.BufferReader(r.content)).read_all())
    assert wire.rows.column("sparse_ids").equals(local.read_rows(0, local.manifest.n_rows).rows.column("sparse_ids"))


def test_bad_generative_inputs_get_errors_naming_the_field(llama: Path, pairs: Path, caches: dict[str, Path],
                                                           tmp_path: Path, tiny_model: Path) -> None:
    base = {"task": "file", "path": str(pairs), "prompt_column": "q", "response_column": "a", "domain_column": "era",
            "id_domains": ["old"], "ood_domains": ["new"]}
    empty = tmp_path / "empty.jsonl"
    empty.write_text(pairs.read_text().replace('"a": "Paris"', '"a": "  "'))
    with pytest.raises(RequestError, match="response_column 'a' has empty responses"):
        resolve(CacheRequest(model=str(llama), **{**base, "path": str(empty)}), "")
    with pytest.raises(RequestError, match="model: .*generative and needs a causal LM"):
        resolve(CacheRequest(model=str(tiny_model), **base), "")
    # a student whose tokenizer differs from the teacher's (MiniLM's WordPiece vocabulary)
    other = make_tiny_llama(tmp_path / "other", tokenizer=minilm_path())
    res = CliRunner().invoke(app, ["train", "--cache", str(caches["sampled"]), "--out", str(tmp_path / "run"),
                                   "--model", str(other), "--max-steps", "1"])
    assert res.exit_code == 2 and "--model: the tokenizer of" in res.output and "differs" in res.output


def test_condition_drugs_is_split_by_review_year() -> None:
    from robustkd.teacher_service.generative_tasks import load_generative_task

    task = load_generative_task("condition-drugs")
    years = {s: {int(e.domain) for e in task.split(s)} for s in ("train", "validation", "test", "ood_test")}
    assert max(years["train"] | years["validation"] | years["test"]) <= 2015 and min(years["ood_test"]) >= 2016
    responses = [e.response for e in task.examples]
    assert all(r and "<" not in r for r in responses) and "Birth Control" in responses
    assert len(task.split("ood_test")) > 300 and task.label_names == ()


def test_dashboard_shows_a_generative_cache_and_run(llama: Path, caches: dict[str, Path]) -> None:
    """The cache page of a generative cache: its sparse targets in the facts, rows with their responses (no class
    balance, no teacher probability); a generative run's page: NLL, perplexity and exact match per split."""
    from fastapi.testclient import TestClient

    from robustkd.shared import registry
    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    folder = caches["top-k"]
    root, key = str(folder.parent), folder.name
    metrics = {"generative": True, "cache_key": key, "label_names": [], "teacher": {},
               "student": {"test": {"n": 2, "tokens": 6, "nll_per_token": 1.25, "perplexity": 3.49,
                                    "exact_match": 0.5}}}
    run = registry.RunRecord(id="0123456789abcdef", cache_key=key, name="ours", method="ours", adapter="lora", seed=0,
                             folder="/runs/gen", host="h", created_at="2026-01-01T00:00:00+00:00",
                             config={"method": "ours"}, metrics=metrics)
    registry.write_run(root, run)
    with TestClient(create_app(Settings(cache_root=root, model=str(llama), threads=1))) as client:
        page = client.get(f"/caches/{key}")
        run_page = client.get(f"/runs/{run.id}")
    assert page.status_code == 200, page.text
    assert "generative: prompt → response" in page.text and "the top 8 tokens and the rest&#39;s mass" in page.text
    assert "causal LM" in page.text and "class balance" not in page.text and "teacher p(label)" not in page.text
    assert "The capital of" in page.text and any(f"<td class=\"text\">{c}</td>" in page.text for c in CITIES.values())
    assert run_page.status_code == 200, run_page.text
    assert "perplexity" in run_page.text and "3.49" in run_page.text and "1.250" in run_page.text
