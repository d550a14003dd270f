"""Forgetting metrics of causal-LM students, on a tiny Llama with SmolLM2's tokenizer: the sentiment-answer task, the
unrelated prompts the teacher answers itself at precompute, format specialisation after plain fine-tuning on label
words, the teacher's KL to itself, zero-shot transfer, and ours distilling on the unrelated prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.shared.reader import CacheReader
from robustkd.testing import make_tiny_llama

ARGS = ["--limit", "8", "--variants", "1", "--max-length", "96", "--general-max-new-tokens", "12", "--shard-rows", "16",
        "--sparse", "top-k", "--sparse-k", "8"]
OFF_TOPIC = re.compile(r"\b(review|sentiment|positive|negative|drugs?|medic\w*|conditions?|disease|symptoms?|patients?|"
                       r"doctors?|pills?|prescriptions?|health\w*|films?|movies?)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama; its sentiment-answer cache with the unrelated prompts, and a condition-drugs cache (transfer)."""
    root = tmp_path_factory.mktemp("forget-cache")
    llama = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-forget"), seed=3)
    runner = CliRunner(env={"ROBUSTKD_CACHE_ROOT": str(root)})
    out = {"llama": llama, "root": root, "runner": runner}
    for name, task, extra in (("main", "sentiment-answer", ["--general-prompts"]), ("transfer", "condition-drugs", [])):
        key = root / f"{name}.key"
        res = runner.invoke(app, ["precompute", "--model", str(llama), "--task", task, *ARGS, *extra,
                                  "--key-file", str(key)])
        assert res.exit_code == 0, res.output
        out[name] = root / key.read_text().strip()
    return out


def test_sentiment_answer_holds_the_sentiment_rows_with_their_label_words() -> None:
    from robustkd.teacher_service.builtin_tasks import load_task
    from robustkd.teacher_service.generative_tasks import load_generative_task
    from robustkd.teacher_service.verbalizer import TASK_PROMPTS, default_prompt

    gen, base = load_generative_task("sentiment-answer", limit=40), load_task("sentiment-rt-drugs", limit=40)
    for split in ("train", "validation", "test", "ood_test"):
        assert [(e.source_id, e.text, e.label) for e in gen.split(split)] == \
               [(e.source_id, e.text, e.label) for e in base.split(split)]
    assert gen.label_names == ("negative", "positive")
    assert all(e.response == gen.label_names[e.label] for e in gen.examples)
    assert {e.domain for e in gen.split("ood_test")} == {"drugs_com"}
    assert default_prompt("sentiment-answer", True) == TASK_PROMPTS["sentiment-rt-drugs"][0]


def test_general_prompts_file_is_licensed_varied_off_topic_and_split_in_disjoint_halves() -> None:
    from robustkd.teacher_service.general_prompts import DISTILL, EVALUATE, PROMPTS_FILE, halves, load_prompts

    assert json.loads(PROMPTS_FILE.read_text())["license"] == "CC0-1.0"
    prompts = load_prompts()
    assert 300 <= len(prompts) <= 400 and len({p.category for p in prompts}) >= 10
    assert [p.text for p in prompts if OFF_TOPIC.search(p.text)] == []
    h = halves(prompts)
    ids = {k: {p.id for p in v} for k, v in h.items()}
    assert not ids[DISTILL] & ids[EVALUATE] and ids[DISTILL] | ids[EVALUATE] == {p.id for p in prompts}
    assert abs(len(ids[DISTILL]) - len(ids[EVALUATE])) <= len({p.category for p in prompts})
    assert halves(prompts) == h  # deterministic


def test_unrelated_prompts_hold_the_teachers_own_greedy_answers(world: dict) -> None:
    from transformers import AutoModelForCausalLM

    from robustkd.shared.models import load_tokenizer
    from robustkd.shared.schemas import CacheRequest
    from robustkd.teacher_service.resolve import RequestError, resolve

    r = CacheReader(str(world["main"]))
    m = r.manifest
    assert m.splits["unlabelled"].group_size == 1 and m.splits["general"].stop - m.splits["general"].start == 8
    g = m.spec.general
    assert g.chat_template and "<|im_start|>user\n{text}<|im_end|>" in g.prompt and g.max_new_tokens == 12
    assert m.timings["generated_rows"] == 16
    tok = load_tokenizer(world["llama"])
    model = AutoModelForCausalLM.from_pretrained(str(world["llama"])).eval()
    rows = r.read_clean("general").rows
    for ids, n, text, response in zip(*(rows.column(c).to_pylist() for c in ("input_ids", "prompt_len", "text",
                                                                               "response")), strict=True):
        assert tok.decode(ids[:n]) == g.prompt.replace("{text}", text)
        with torch.no_grad():  # one prompt alone, not in a batch
            alone = model.generate(torch.tensor([ids[:n]]), max_new_tokens=12, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, n:].tolist()
        assert ids[n:] == (alone[:alone.index(tok.eos_token_id) + 1] if tok.eos_token_id in alone else alone)
        assert response == tok.decode(ids[n:], skip_special_tokens=True).strip()
    with pytest.raises(RequestError, match="general_prompts: only for generative tasks"):
        resolve(CacheRequest(model=str(world["llama"]), limit=4, head="verbalizer", general_prompts=True), "")


def test_batched_greedy_decoding_matches_one_prompt_at_a_time() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from robustkd.shared.generation import greedy

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, initializer_range=1.0)  # peaked, varied answers
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 64, (int(n),), generator=g).tolist() for n in torch.randint(2, 12, (10,), generator=g)]
    batched = greedy(model, prompts, 6, eos_id=2, pad_id=0, batch_size=4)
    assert batched == [greedy(model, [p], 6, eos_id=2, pad_id=0)[0] for p in prompts]
    assert len({tuple(b) for b in batched}) > 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_greedy_decoding_on_a_gpu_takes_larger_batches_and_answers_as_one_at_a_time() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from robustkd.shared.generation import BATCH_ACCELERATOR, greedy

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, initializer_range=1.0)
    model = LlamaForCausalLM(cfg).eval().cuda()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 64, (int(n),), generator=g).tolist()
               for n in torch.randint(2, 12, (BATCH_ACCELERATOR + 6,), generator=g)]
    calls, generate = [], model.generate
    model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or generate(**kw)
    batched = greedy(model, prompts, 6, eos_id=2, pad_id=0)
    assert calls == [BATCH_ACCELERATOR, 6]
    assert batched == [greedy(model, [p], 6, eos_id=2, pad_id=0)[0] for p in prompts]


def test_a_student_trained_only_on_label_words_answers_unrelated_prompts_with_them(world: dict, tmp_path: Path
                                                                                   ) -> None:
    """Plain fine-tuning on the label words: the student's answers to the held-out unrelated prompts start with them
    (format specialisation), the teacher's (WiSE α = 0) do not, and the teacher's KL to itself is 0."""
    from transformers import AutoModelForCausalLM

    from robustkd.trainer.run import load_run

    runner, run = world["runner"], tmp_path / "ft"
    res = runner.invoke(app, ["train", "--cache", str(world["main"]), "--out", str(run), "--method", "ft",
                              "--max-steps", "40", "--batch-groups", "4", "--lr", "1e-2", "--threads", "1",
                              "--transfer", str(world["transfer"])])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    general, transfer = m["forgetting"]["general"], m["forgetting"]["transfer"]
    assert general["vocabulary"] == ["negative", "positive"] and general["n"] == 8
    assert general["format_share"] >= 0.8, general["examples"]
    assert transfer["task"] == "condition-drugs" and transfer["n"] == 8 and 0 <= transfer["accuracy"] <= 1
    test = m["student"]["test"]
    assert {"accuracy", "exact_match", "macro_f1"} <= set(test) and set(test["predicted_rate"]) == \
           {"negative", "positive", "(other)"}
    res = runner.invoke(app, ["wise", str(run), "--alpha", "0"])
    assert res.exit_code == 0, res.output
    teacher = json.loads((run / "wise" / "alpha-0" / "metrics.json").read_text())["forgetting"]["general"]
    assert teacher["format_share"] <= 0.1 and abs(teacher["kl_per_token"]) < 1e-3
    # the KL and NLL are what a fresh forward of teacher and student gives (top-8 tokens and the rest)
    student = load_run(run).student.lm.eval()
    lm = AutoModelForCausalLM.from_pretrained(str(world["llama"])).eval()
    rows = CacheReader(str(world["main"])).read_clean("general").rows
    kl, nll, n = 0.0, 0.0, 0
    with torch.no_grad():
        for ids, p in zip(rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist(), strict=True):
            x = torch.tensor([ids])
            t, s = (torch.log_softmax(mod(x).logits[0, p - 1:-1], -1) for mod in (lm, student))
            top = t.topk(8, -1)
            s_k = s.gather(-1, top.indices)
            t_rest, s_rest = torch.log1p(-top.values.exp().sum(-1)), torch.log1p(-s_k.exp().sum(-1))
            kl += float(((top.values.exp() * (top.values - s_k)).sum(-1) + t_rest.exp() * (t_rest - s_rest)).sum())
            nll -= float(s.gather(-1, x[0, p:, None]).sum())
            n += len(ids) - p
    assert general["kl_per_token"] == pytest.approx(kl / n, rel=0.05, abs=2e-4)
    assert general["nll_per_token"] == pytest.approx(nll / n, rel=1e-3)


def test_ours_distils_a_lora_student_on_the_unrelated_prompts(world: dict, tmp_path: Path) -> None:
    """The distillation half of the unrelated prompts joins each batch as distillation-only rows (KL ~0 while the
    student is the teacher); the LoRA run's WiSE points are evaluated with their forgetting metrics."""
    runner, run = world["runner"], tmp_path / "ours"
    res = runner.invoke(app, ["train", "--cache", str(world["main"]), "--out", str(run), "--method", "ours",
                              "--adapter", "lora", "--unlabelled-groups", "4", "--max-steps", "2",
                              "--batch-groups", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["rows"] == 2 * 2 + 4 and abs(log[0]["distill"]) < 1e-3
    res = runner.invoke(app, ["wise", str(run), "--alpha", "0.5"])
    assert res.exit_code == 0, res.output
    point = json.loads((run / "wise" / "alpha-0.5" / "metrics.json").read_text())
    assert point["forgetting"]["general"]["n"] == 8 and "format share" in res.output


def synthetic_runs(root: Path, ft_forgets: bool = True) -> list[dict]:
    """Runs whose per-row figures are known: the teacher right on half the ID rows, never answering with a label word,
    at KL 0; ft (α = 1) right on 90%, always answering with a label word, at KL 2 per token, worse at transfer; its
    WiSE points in between by α; ours and lora reaching the same ID accuracy while keeping more (half the loss)."""
    import numpy as np

    n_id, n_gen, n_tr, tokens = 40, 30, 20, 10
    labels = np.arange(n_id) % 2

    def arrays(acc: float, fmt: float, kl: float, transfer: float, seed: int) -> dict:
        correct = np.arange(n_id) < round(acc * n_id)
        hits = np.arange(n_gen) < round(fmt * n_gen)
        return {"test.correct": correct, "test.pred": np.where(correct, labels, 1 - labels), "test.label": labels,
                "general.format": hits, "general.tokens": np.full(n_gen, tokens),
                "general.kl": np.full(n_gen, (kl + 0.01 * seed) * tokens),
                "general.nll": np.full(n_gen, (5 + kl) * tokens),
                "transfer.correct": np.arange(n_tr) < round(transfer * n_tr)}

    def add(method: str, seed: int, a: dict) -> dict:
        folder = root / method / str(seed)
        folder.mkdir(parents=True)
        np.savez(folder / "predictions.npz", **a)
        ex = [{"prompt": "What is 2 + 2?", "generated": "positive" if method == "ft" else "4"}]
        return {"method": method, "seed": seed, "run": str(folder),
                "metrics": {"train": {"s_per_step": 1.0}, "forgetting": {"general": {"examples": ex}}}}

    runs = [add("teacher", 0, arrays(0.5, 0.0, 0.0, 0.6, 0))]
    for seed in (0, 1):
        for name, keep in (("ft", 1.0), ("lora", 0.5), ("ours", 0.5)):
            keep = keep if ft_forgets else 0.0
            for alpha, method in ((0.25, f"{name}-wise-0.25"), (0.5, f"{name}-wise-0.5"), (0.75, f"{name}-wise-0.75"),
                                  (1.0, name)):
                lost = alpha * keep
                runs.append(add(method, seed, arrays(0.5 + 0.4 * alpha * (ft_forgets or 0), lost, 2 * lost,
                                                     0.6 - 0.4 * lost, seed)))
    return runs


def test_forgetting_report_says_what_known_runs_show(tmp_path: Path) -> None:
    from robustkd.forgetting_analysis import compare
    from robustkd.forgetting_report import write_report

    def report(runs: list[dict], out: Path) -> tuple[dict, str]:
        res = compare(runs, 2)
        res.update({"task": "sentiment-answer", "teacher": {"model": "tiny"}, "budget": "small", "seeds": 2,
                    "cache_key": "0" * 64, "cache_rows": 1, "train_config": {}, "transfer_task": "condition-drugs",
                    "general": {"n": 30, "spec": {"max_new_tokens": 48, "chat_template": True},
                                "vocabulary": ["negative", "positive"]}})
        out.mkdir()
        return res, write_report(res, out)

    res, text = report(synthetic_runs(tmp_path / "a"), tmp_path / "ra")
    d = res["diagnosis"]
    assert d["forgets"] == ["format_share", "kl", "nll", "transfer_acc"] and d["learned"]
    assert d["metrics"]["format_share"]["diff"] == pytest.approx(1.0) and d["id_acc"]["diff"] == pytest.approx(0.4)
    gaps = res["curves"]["gaps"]
    assert gaps["kl"]["ours − ft"]["lo"] > 0 and gaps["format_share"]["ours − ft"]["lo"] > 0
    assert gaps["kl"]["ours − lora"]["lo"] <= 0 <= gaps["kl"]["ours − lora"]["hi"]  # the same curve
    assert res["summary"]["teacher"]["format_share"]["mean"] == 0 and res["summary"]["ft"]["format_share"]["mean"] == 1
    for line in ("## Does fine-tuning forget?", "**Plain fine-tuning (ft) forgets**", "ft learned the task beyond",
                 "## Task accuracy vs retention", "the ours curve **lies above** the ft curve",
                 "the ours curve **is not distinguishable from** the lora curve", "## All runs", "| ft | 2 | 0.900 |",
                 "| teacher | 1 | 0.500 |"):
        assert line in text
    assert (tmp_path / "ra" / "task_vs_retention.png").stat().st_size > 0
    res, text = report(synthetic_runs(tmp_path / "b", ft_forgets=False), tmp_path / "rb")
    assert res["diagnosis"]["forgets"] == [] and not res["diagnosis"]["learned"]
    assert "**Plain fine-tuning (ft) does not forget detectably**" in text
    assert "**ft did not learn the task beyond the teacher**" in text


def test_forgetting_comparisons_pair_only_the_seeds_both_sides_have(tmp_path: Path) -> None:
    """A third seed of ft alone (one that forgets nothing) cannot move ours − ft: the gap is taken over the seeds both
    curves have, and it says which; lora at a seed no other method has is not compared. Before, each method's seeds
    were resampled on their own, so ft's extra seed moved the gap and lora's seed 5 was set against ours' seed 0."""
    import numpy as np

    from robustkd.forgetting_analysis import compare
    from robustkd.forgetting_report import gaps_text

    runs = synthetic_runs(tmp_path / "a")
    teacher = next(r for r in runs if r["method"] == "teacher")
    two = compare(runs, 2)
    extra = []
    for r in runs:
        if r["method"].startswith("ft") and r["seed"] == 0:
            folder = tmp_path / "ft2" / r["method"]
            folder.mkdir(parents=True)
            np.savez(folder / "predictions.npz", **np.load(Path(teacher["run"]) / "predictions.npz"))
            extra.append({**r, "seed": 2, "run": str(folder)})
    lora = [{**r, "seed": 5} for r in runs if r["method"].startswith("lora") and r["seed"] == 0]
    runs3 = [r for r in runs if not r["method"].startswith("lora")] + extra + lora
    three = compare(runs3, 2)
    for retention in ("kl", "format_share"):
        before, after = two["curves"]["gaps"][retention]["ours − ft"], three["curves"]["gaps"][retention]["ours − ft"]
        assert after["seeds"] == [0, 1] and after["lo"] > 0
        assert (after["diff"], after["lo"], after["hi"]) == pytest.approx((before["diff"], before["lo"], before["hi"]))
        assert three["curves"]["gaps"][retention]["ours − lora"]["seeds"] == []
    assert three["diagnosis"]["seeds"] == [0, 1, 2] and three["summary"]["ft"]["n_seeds"] == 3
    assert three["diagnosis"]["metrics"]["kl"]["seeds"] == [0, 1, 2]
    text = "\n".join(gaps_text(three))
    assert "the ours curve **lies above** the ft curve" in text and "seeds 0, 1)." in text
    assert "the ours and lora curves share no seed: not compared." in text


def test_forgetting_suite_refuses_methods_it_does_not_run() -> None:
    res = CliRunner().invoke(app, ["bench", "--suite", "forgetting", "--methods", "ft,lp-ft"])
    assert res.exit_code == 2 and "unknown ['lp-ft'] for suite forgetting" in res.output


@pytest.mark.slow
def test_forgetting_bench_end_to_end_and_reused(tmp_path: Path) -> None:
    """The whole forgetting bench on a tiny Llama and 8 rows per split, 2 seeds, the second seed run first on its own
    (--first-seed): its report's sections, every run and WiSE point in results.json, and a last invocation reusing
    every run."""
    llama = make_tiny_llama(tmp_path / "llama", seed=3)
    runner = CliRunner(env={"ROBUSTKD_CACHE_ROOT": str(tmp_path / "cache")})
    common = ["bench", "--suite", "forgetting", "--task", "sentiment-answer", "--model", str(llama), *ARGS,
              "--max-steps", "12", "--batch-groups", "4", "--lr", "1e-2", "--lora-lr", "3e-2", "--threads", "1",
              "--out", str(tmp_path / "bench")]
    folder = tmp_path / "bench" / "sentiment-answer"
    res = runner.invoke(app, [*common, "--first-seed", "1", "--seeds", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.parent.name for p in folder.glob("*/seed*/metrics.json")) == ["seed1"] * 4
    args = [*common, "--seeds", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(re.findall(r"seed (\d): [\w-]+ (trained|reused)", res.output)) == \
        [("0", "trained")] * 4 + [("1", "reused")] * 4
    report = (folder / "report.md").read_text()
    for section in ("## Does fine-tuning forget?", "| format share |", "| KL(teacher ‖ student) per token |",
                    "| zero-shot transfer accuracy |", "## Task accuracy vs retention",
                    "at matched ID accuracy the ours", "## All runs", "![task vs retention](task_vs_retention.png)"):
        assert section in report
    results = json.loads((folder / "results.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert len(results["runs"]) == 1 + 2 * 4 * 4 and {"teacher", "ours-general", "lora-wise-0.5"} <= methods
    assert results["transfer_task"] == "condition-drugs" and results["general"]["n"] == 8 and results["seeds"] == 2
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/seed*/metrics.json")}
    assert len(stamps) == 8
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(re.findall(r"(teacher|seed \d: [\w-]+) reused", res.output)) == 9  # 8 runs and the teacher
    assert re.findall(r"seed \d: [\w-]+ trained", res.output) == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (folder / "report.md").unlink()
    res = runner.invoke(app, ["report", str(folder)])  # analysed again from the recorded runs
    assert res.exit_code == 0, res.output
    assert (folder / "report.md").read_text() == report


def test_a_run_planned_before_a_config_field_existed_is_reused(tmp_path: Path) -> None:
    """planned.json written before `transfer` existed: the same plan (the field at its default), so the run is reused
    rather than trained again."""
    from robustkd.bench import run_or_reuse
    from robustkd.trainer.config import TrainConfig

    cfg = TrainConfig(cache="0" * 64, out=str(tmp_path), method="ft")
    old = json.loads(cfg.model_dump_json())
    del old["transfer"]
    (tmp_path / "planned.json").write_text(json.dumps(old))
    (tmp_path / "metrics.json").write_text(json.dumps({"student": {}}))
    assert run_or_reuse(cfg, print) == ({"student": {}}, False)


def test_a_resumed_bench_reuses_runs_whatever_the_spelling_of_the_cache_or_the_thread_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench resumed with the cache's absolute path instead of a relative one, or with another thread count, plans
    the same training: the finished run is reused, not deleted and trained again. Another learning rate is another
    plan."""
    from robustkd.bench import run_or_reuse, same_plan
    from robustkd.trainer.config import TrainConfig

    (tmp_path / "cache" / "k").mkdir(parents=True)
    run = tmp_path / "runs" / "ft" / "seed0"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    first = TrainConfig(cache="cache/k", out="runs/ft/seed0", method="ft", threads=1)
    (run / "planned.json").write_text(first.model_dump_json())
    (run / "metrics.json").write_text(json.dumps({"student": {}}))
    resumed = first.model_copy(update={"cache": str(tmp_path / "cache" / "k"), "out": str(run), "threads": 2})
    assert run_or_reuse(resumed, print) == ({"student": {}}, False)
    assert (run / "metrics.json").exists()
    assert not same_plan(run, first.model_copy(update={"lr": first.lr * 2}))


def test_a_resumed_bench_reuses_the_teachers_evaluation_whatever_the_spelling_of_the_transfer_cache(
        world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The teacher evaluated with the transfer cache spelled relative, resumed with it absolute: reused, as runs are.
    Other evaluation rows are another plan."""
    from robustkd.forgetting import teacher_or_reuse

    monkeypatch.chdir(world["root"])
    out = tmp_path / "teacher"
    out.mkdir()
    key = CacheReader(str(world["main"])).key
    (out / "planned.json").write_text(json.dumps({"cache": key, "transfer": world["transfer"].name, "eval_rows": 4}))
    (out / "metrics.json").write_text(json.dumps({"student": {}}))
    logged: list[str] = []
    assert teacher_or_reuse(str(world["main"]), str(world["transfer"]), 4, out, logged.append) == {"student": {}}
    assert logged == ["sentiment-answer: teacher reused"]
    teacher_or_reuse(str(world["main"]), str(world["transfer"]), 3, out, logged.append)
    assert "teacher evaluated" in logged[-1]


def test_answers_are_read_by_their_first_line() -> None:
    from robustkd.trainer.generation import answer_line, label_of, starts_with

    words = ["negative", "positive"]
    assert [label_of(a, words) for a in ("Positive.", "\nThe review is negative.\n", " positive review",
                                         "Positively great", "The answer is:\npositive", "")] == [1, 0, 1, -1, -1, -1]
    assert answer_line("\n  Birth  Control.\nmore") == "birth control"
    assert starts_with("negative. the end", "negative") and not starts_with("negatively", "negative")
