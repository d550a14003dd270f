"""`robustkd export`: students leave robustkd. Exports are loaded by plain transformers (causal LMs in a process that
never imports robustkd), by the registered Auto classes after `import robustkd`, and by onnxruntime with neither torch
nor robustkd, and give the logits `robustkd eval` computed for the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.predictor import Predictor
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.lm import load_teacher
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.testing import make_tiny_llama
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.train import train_and_evaluate

# a process that must not import these: any attempt fails loudly
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""


def cache_of(model: Path, root: Path, **kw) -> Path:  # noqa: ANN003
    req = CacheRequest(**{"model": str(model), "limit": 12, "shard_rows": 12, "variants": 1, **kw})
    spec, task = resolve(req, str(model))
    return root / precompute(spec, task, load_teacher(spec.teacher.model), root).key


def trained(cache: Path, out: Path, **kw) -> Path:  # noqa: ANN003
    train_and_evaluate(TrainConfig(**{"cache": str(cache), "out": str(out), "batch_groups": 4, "threads": 1,
                                      "max_steps": 2, "lr": 1e-2, "head_lr": 1e-2, **kw}))
    return out


@pytest.fixture(scope="module")
def bert_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("bert-export")
    cache = cache_of(tiny_model, work / "cache", layers=[1, 2])
    return {"cache": cache, "full": trained(cache, work / "full", method="ours"),
            "lora": trained(cache, work / "lora", method="ft", adapter="lora", lora_targets=["query", "value"])}


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("llama-export")
    llama = make_tiny_llama(work / "llama", seed=5)
    verbal = cache_of(llama, work / "cache", head="verbalizer")
    gen = cache_of(llama, work / "cache", task="condition-drugs", limit=6, max_length=48, max_response_tokens=6,
                   sparse="top-k", sparse_k=4)
    return {"verbalizer": trained(verbal, work / "verbal", method="ours", adapter="lora"),
            "generative": trained(gen, work / "gen", method="ours")}


def export(run: Path, out: Path, *args: str) -> Path:
    res = CliRunner().invoke(app, ["export", str(run), str(out), *args])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def exports(bert_runs: dict, llama_runs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run exported once, when a test first needs it (an ONNX export takes a while)."""
    work = tmp_path_factory.mktemp("exports")
    runs = {**{k: bert_runs[k] for k in ("full", "lora")}, **llama_runs}

    class Exports(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = export(runs[name], work / name)
            return self[name]

    return Exports()


def cache_ids(run: Path, split: str = "test") -> list[list[int]]:
    cfg = json.loads((run / "config.json").read_text())
    return CacheReader(cfg["cache"]).read_clean(split).rows.column("input_ids").to_pylist()


def eval_logits(run: Path, split: str = "test") -> np.ndarray:
    """What `robustkd eval` computed for the run (its predictions.npz)."""
    return np.load(run / "predictions.npz")[split]


def run_python(code: str, blocked: tuple[str, ...] = ()) -> str:
    res = subprocess.run([sys.executable, "-c", BLOCK.format(blocked=set(blocked)) + code], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("adapter", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_classifier_export_gives_evals_logits_through_the_auto_classes(bert_runs: dict, exports: dict,
                                                                       adapter: str) -> None:
    run, out = bert_runs[adapter], exports[adapter]
    assert {"config.json", "model.safetensors", "model.onnx", "tokenizer.json", "robustkd.json", "README.md"} <= \
        {p.name for p in out.iterdir()}
    ids, want = cache_ids(run), eval_logits(run)
    # the Auto classes after `import robustkd`, in a fresh process (no trust_remote_code), on the cache's own ids
    got = np.array(json.loads(run_python(f"""
import json, robustkd, torch
from transformers import AutoModelForSequenceClassification
from robustkd.shared.features import pad_batch
m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
ids, mask = pad_batch({ids!r}, 0)
print(json.dumps(m(input_ids=ids, attention_mask=mask).logits.tolist()))
""")))
    assert np.abs(got - want).max() <= 1e-5
    # the text pipeline, the exported folder and the run folder agree on raw text, tokenised as the cache was
    texts = CacheReader(str(bert_runs["cache"])).read_clean("test").rows.column("text").to_pylist()
    exported, direct = Predictor.load(out), Predictor.load(run)
    assert exported.encode(texts) == ids
    assert np.abs(exported.predict_proba(texts) - direct.predict_proba(texts)).max() <= 1e-5
    scores = json.loads(run_python(f"""
import json
from transformers import pipeline  # transformers first: `import robustkd` afterwards still registers the classes
import robustkd
clf = pipeline("text-classification", model={str(out)!r}, top_k=None)
print(json.dumps([{{d["label"]: d["score"] for d in row}} for row in clf({texts!r}, truncation=True)]))
"""))
    want_p = exported.predict_proba(texts)
    assert np.abs(np.array([[s[n] for n in exported.label_names] for s in scores]) - want_p).max() <= 1e-5


def test_onnx_runs_without_torch_or_robustkd(bert_runs: dict, exports: dict) -> None:
    run, out = bert_runs["full"], exports["full"]
    texts = CacheReader(str(bert_runs["cache"])).read_clean("test").rows.column("text").to_pylist()
    res = json.loads(run_python(f"""
import json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(out / "tokenizer.json")!r})
tok.enable_truncation(json.load(open({str(out / "robustkd.json")!r}))["max_length"])
sess = ort.InferenceSession({str(out / "model.onnx")!r})
ids, logits = [], []
for text in {texts!r}:  # one row at a time and then all at once, padded: dynamic batch and length
    e = tok.encode(text)
    ids.append(e.ids)
    feed = {{"input_ids": np.array([e.ids]), "attention_mask": np.array([e.attention_mask])}}
    logits.append(sess.run(None, feed)[0][0])
width = max(map(len, ids))
padded = np.array([i + [0] * (width - len(i)) for i in ids])
mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids])
batch = sess.run(None, {{"input_ids": padded, "attention_mask": mask}})[0]
print(json.dumps({{"ids": ids, "one": np.array(logits).tolist(), "batch": batch.tolist()}}))
""", blocked=("torch", "robustkd", "transformers")))
    assert res["ids"] == cache_ids(run)
    want = eval_logits(run)
    assert np.abs(np.array(res["one"]) - want).max() <= 1e-4
    assert np.abs(np.array(res["batch"]) - want).max() <= 1e-4


def test_verbalizer_export_is_a_plain_causal_lm(llama_runs: dict, exports: dict) -> None:
    run, out = llama_runs["verbalizer"], exports["verbalizer"]
    ids, want = cache_ids(run), eval_logits(run)
    got = np.array(json.loads(run_python(f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoTokenizer.from_pretrained({str(out)!r})
m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
r = json.load(open({str(out / "robustkd.json")!r}))
rows = []
for seq in {ids!r}:
    logits = m(input_ids=torch.tensor([seq])).logits[0, -1, r["label_token_ids"]]
    rows.append((logits + torch.tensor(r["label_bias"])).tolist())
print(json.dumps(rows))
""", blocked=("robustkd",))))
    assert np.abs(got - want).max() <= 1e-5
    recipe = json.loads((out / "robustkd.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert recipe["kind"] == "verbalizer" and recipe["prompt"] and config["id2label"]
    assert not config.get("tie_word_embeddings", True)
    texts = CacheReader(json.loads((run / "config.json").read_text())["cache"]).read_clean("test").rows \
        .column("text").to_pylist()
    assert Predictor.load(out).encode(texts) == ids  # the prompt template and truncation as in the cache


@pytest.mark.slow
def test_generative_export_gives_the_students_logits(llama_runs: dict, exports: dict) -> None:
    import torch

    from robustkd.trainer.lm_student import response_mask
    from robustkd.trainer.run import load_run

    run, out = llama_runs["generative"], exports["generative"]
    r = load_run(run, device="cpu")
    rows = r.reader.read_clean("test").rows
    seqs, lens = rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist()
    r.student.eval()
    want = []
    with torch.no_grad():
        for s, n in zip(seqs, lens, strict=True):
            ids = torch.tensor([s])
            logits, _ = r.student(ids, torch.ones_like(ids), response_mask(torch.ones_like(ids), torch.tensor([n])),
                                  with_layers=False)
            want.append(logits.numpy())
    got = json.loads(run_python(f"""
import json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
print(json.dumps([m(input_ids=torch.tensor([s])).logits[0, n - 1:len(s) - 1].tolist()
                  for s, n in zip({seqs!r}, {lens!r})]))
""", blocked=("robustkd",)))
    assert max(np.abs(np.array(g) - w).max() for g, w in zip(got, want, strict=True)) <= 1e-5
    assert json.loads((out / "robustkd.json").read_text())["kind"] == "generative"
    answers = Predictor.load(out).predict(rows.column("text").to_pylist()[:2])
    assert answers == Predictor.load(run).predict(rows.column("text").to_pylist()[:2])


def test_model_card_says_what_the_student_is(bert_runs: dict, exports: dict) -> None:
    out = exports["full"]
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: \"transformers\"" in header and "pipeline_tag: \"text-classification\"" in header
    assert "- \"ours\"" in header and "- \"accuracy\"" in header
    metrics = json.loads((bert_runs["full"] / "metrics.json").read_text())
    key = json.loads((out / "robustkd.json").read_text())["source"]["cache_key"]
    for text in ("λ_distill 1.0", key, "keyboard_typo", "OOD test", f"{metrics['student']['ood_test']['accuracy']:.3f}",
                 "pipeline(\"text-classification\"", "model.onnx"):
        assert text in card


def test_export_checks_its_arguments_before_any_work(bert_runs: dict, llama_runs: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["export", str(bert_runs["full"]), str(busy)])
    assert res.exit_code == 2 and "not empty" in res.output and "--force" in res.output
    assert (busy / "keep.txt").read_text() == "mine"
    res = runner.invoke(app, ["export", str(tmp_path), str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a finished run folder" in res.output
    res = runner.invoke(app, ["export", str(bert_runs["full"]), str(tmp_path / "x"), "--dtype", "int8"])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()
    export(llama_runs["verbalizer"], busy, "--force", "--dtype", "float16")
    assert not (busy / "keep.txt").exists() and json.loads((busy / "config.json").read_text())["dtype"] == "float16"
    from safetensors import safe_open

    with safe_open(str(busy / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}


@pytest.mark.slow
def test_minilm_export_gives_evals_logits(minilm: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification

    from robustkd.shared.features import pad_batch

    run = trained(cache_of(minilm, tmp_path / "cache", limit=24, layers=[6]), tmp_path / "run", method="ours",
                  adapter="lora", lr=1e-3)
    out = export(run, tmp_path / "export")
    ids, want = cache_ids(run), eval_logits(run)
    padded, mask = pad_batch(ids, 0)
    with torch.no_grad():
        got = AutoModelForSequenceClassification.from_pretrained(str(out))(input_ids=padded, attention_mask=mask)
    assert np.abs(got.logits.numpy() - want).max() <= 1e-5
    onnx = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input_ids": padded.numpy(),
                                                                    "attention_mask": mask.numpy()})[0]
    assert np.abs(onnx - want).max() <= 1e-4
    card = (out / "README.md").read_text()
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in card and 'license: "apache-2.0"' in card
