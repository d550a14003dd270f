"""Causal-LM teachers for classification: a tiny Llama (SmolLM2's real tokenizer) through precompute, train, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.shared.features import pool
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.lm import CausalLM, load_teacher
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import RequestError, resolve
from robustkd.teacher_service.verbalizer import fit_bias
from robustkd.testing import make_tiny_llama, smollm2_path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def lm_cache(model: Path, root: Path, **kw) -> Path:  # noqa: ANN003
    req = CacheRequest(**{"model": str(model), "limit": 8, "shard_rows": 12, "variants": 1, **kw})
    spec, task = resolve(req, str(model))
    m = precompute(spec, task, load_teacher(spec.teacher.model), root)
    return root / m.key


@pytest.fixture(scope="module")
def verbalizer_cache(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lm_cache(tiny_llama, tmp_path_factory.mktemp("lm-cache"), head="verbalizer")


def test_cached_logits_are_the_label_words_next_token_logits(tiny_llama: Path, verbalizer_cache: Path) -> None:
    """A fresh forward of the whole causal LM: the label tokens' logits at the last prompt token, plus the
    calibration bias, are exactly what the cache holds."""
    from transformers import AutoModelForCausalLM

    r = CacheReader(str(verbalizer_cache))
    info = r.manifest.head_info
    assert r.manifest.spec.teacher.family == "causal-lm" and r.manifest.spec.teacher.pooling == "last"
    assert info["kind"] == "verbalizer" and info["label_tokens"] == [" negative", " positive"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    shard = r.read_clean("ood_test")
    with torch.no_grad():
        for ids, cached in zip(shard.rows.column("input_ids").to_pylist(), shard.targets["logits"], strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1, info["label_token_ids"]]
            np.testing.assert_allclose(cached, logits.numpy() + np.asarray(info["calibration_bias"]), atol=1e-5)


def test_dashboard_shows_a_verbalizer_cache(tiny_llama: Path, verbalizer_cache: Path) -> None:
    """A causal LM's classification cache on the dashboard: prompt and label words beside the usual class balance
    and teacher probabilities."""
    from fastapi.testclient import TestClient

    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    settings = Settings(cache_root=str(verbalizer_cache.parent), model=str(tiny_llama), threads=1)
    with TestClient(create_app(settings)) as client:
        page = client.get(f"/caches/{verbalizer_cache.name}")
    assert page.status_code == 200, page.text
    assert "verbalizer head" in page.text and "causal LM, prompt template" in page.text
    assert "label words negative, positive (calibration: bias)" in page.text and "teacher p(label)" in page.text


def test_prompt_cue_survives_truncation(tiny_llama: Path) -> None:
    lm = CausalLM(str(tiny_llama))
    template = "Review: {text}\nAnswer:"
    cue = lm.tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    short, long_ = lm.encode_prompts(template, ["great", "word " * 500], 24)
    assert len(long_) == 24 and long_[-len(cue):] == cue
    assert lm.tokenizer.decode(short) == "Review: great\nAnswer:"  # one piece: " great", no lone space token


def test_last_pooling_takes_the_last_real_token_of_right_padded_rows() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]


def test_calibration_bias_undoes_a_shifted_threshold() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    signal = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1, 400)
    logits = np.stack([np.zeros(400), signal - 3.0], 1)  # the raw verbalizer almost never says positive
    b = fit_bias(logits, y)
    assert (logits.argmax(1) == 1).mean() < 0.1
    assert abs(((logits + b).argmax(1) == 1).mean() - y.mean()) < 0.1
    assert ((logits + b).argmax(1) == y).mean() > 0.8 and abs(b.sum()) < 1e-6


def test_unusable_model_and_heads_fail_at_resolve(tiny_llama: Path, tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    missing_data = {"task": "file", "path": str(tmp_path / "absent.csv"), "text_column": "t", "label_column": "y",
                    "domain_column": "d", "id_domains": ["a"], "ood_domains": ["b"]}
    with pytest.raises(RequestError, match="model: .*neither config.json nor a .gguf"):
        resolve(CacheRequest(model=str(empty), **missing_data), str(empty))  # the model fails, not the file
    fake = tmp_path / "fake.gguf"  # a .gguf name is not enough: the header is read before anything else
    fake.write_bytes(b"GGUF" + bytes(4))
    with pytest.raises(RequestError, match="model: .*fake.gguf is not a GGUF model"):
        resolve(CacheRequest(model=str(fake), **missing_data), str(empty))
    with pytest.raises(ValueError, match="label_words"):
        CacheRequest(head="verbalizer", label_words=["w"] * 257)  # request sizes are bounded
    with pytest.raises(RequestError, match="label_words: .*distinct tokens"):
        resolve(CacheRequest(model=str(tiny_llama), limit=4, head="verbalizer", label_words=["good", "good"]), "")
    with pytest.raises(RequestError, match="label_words: 3 words for 2 classes"):
        resolve(CacheRequest(model=str(tiny_llama), limit=4, head="verbalizer", label_words=["a", "b", "c"]), "")
    with pytest.raises(RequestError, match="head: 'verbalizer' needs a causal LM"):
        resolve(CacheRequest(model=str(tiny_model), limit=4, head="verbalizer"), "")
    with pytest.raises(RequestError, match="head: 'zero-shot' is for encoders"):
        resolve(CacheRequest(model=str(tiny_llama), limit=4, head="zero-shot"), "")
    with pytest.raises(RequestError, match=r"prompt: .*\{text\} exactly once"):
        resolve(CacheRequest(model=str(tiny_llama), limit=4, prompt="no placeholder"), "")


def test_lora_student_of_a_causal_lm_trains_and_evaluates_from_the_cli(verbalizer_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--cache", str(verbalizer_cache), "--out", str(run), "--adapter", "lora",
                                   "--max-steps", "2", "--batch-groups", "4", "--threads", "1", "--lr", "1e-2"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lora_targets"] is None  # peft's default for Llama: q_proj, v_proj
    adapter = json.loads((run / "checkpoint" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["distill"] < 1e-6  # the student starts as the teacher: backbone and verbalizer head
    res = CliRunner().invoke(app, ["eval", str(run)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test", "ood_test", "test_heldout"} <= set(metrics["student"])


def test_linear_probe_on_the_last_token_and_online_kd(tiny_llama: Path, tmp_path: Path) -> None:
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.train import Trainer

    cache = lm_cache(tiny_llama, tmp_path / "cache", head="linear-probe")
    assert CacheReader(str(cache)).manifest.head_info["C"] > 0
    tr = Trainer(TrainConfig(cache=str(cache), out=str(tmp_path / "run"), method="online-kd", max_steps=1,
                             batch_groups=4, threads=1, lambda_act=0.1))  # λ3 > 0: online activations checked too
    tr.fit()
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert log["distill"] < 1e-6 and log["act"] < 1e-4  # the online teacher sees the cached (prompted) ids


@pytest.mark.slow
def test_smollm2_gguf_end_to_end(tmp_path: Path) -> None:
    """The real SmolLM2-135M-Instruct GGUF: precompute (calibrated verbalizer), a LoRA step, eval."""
    env = {"ROBUSTKD_CACHE_ROOT": str(tmp_path / "cache")}
    runner = CliRunner(env=env)
    res = runner.invoke(app, ["precompute", "--model", str(smollm2_path().parent), "--head", "verbalizer",
                              "--limit", "4", "--variants", "1", "--layers", "30", "--max-length", "64",
                              "--transforms", "keyboard_typo",  # no embedding-neighbour table: keeps it tiny
                              "--key-file", str(tmp_path / "key")])
    assert res.exit_code == 0, res.output
    key = (tmp_path / "key").read_text().strip()
    m = CacheReader(str(tmp_path / "cache" / key)).manifest
    assert m.spec.teacher.model.endswith(".gguf") and m.head_info["label_tokens"] == [" negative", " positive"]
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--cache", key, "--out", str(run), "--adapter", "lora", "--max-steps", "1",
                              "--batch-groups", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["student"]["ood_test"]["n"] == 4
