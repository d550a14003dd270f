"""A run's student as a transformers model in float32, its tokenizer and its prediction recipe: what `robustkd export`
writes and what `Predictor` runs for a run folder.

- classifier (any backbone, pooled, linear head): `RobustkdForSequenceClassification` with the student's weights;
- verbalizer: the causal LM with the student's backbone and an untied output layer whose label words' rows are the
  trained head (its bias goes into the recipe: a causal LM's output layer has none);
- generative: the causal LM itself. LoRA adapters are merged into the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustkd.recipe import Recipe
from robustkd.trainer.run import Run
from robustkd.trainer.student import model_path
from robustkd.trainer.wise import merged_state


def _plain_backbone(run: Run) -> torch.nn.Module:
    """The student's backbone with LoRA merged in (a peft wrapper otherwise stays around it)."""
    return run.student.backbone.merge_and_unload() if run.config.adapter == "lora" else run.student.backbone


def _recipe(run: Run, kind: str, **fields: object) -> Recipe:
    spec, cfg = run.reader.manifest.spec, run.config
    source = {"run": str(Path(run.folder).resolve()), "cache_key": run.reader.key, "task": spec.task.name,
              "method": cfg.method, "adapter": cfg.adapter, "teacher_model": Path(spec.teacher.model).name,
              "teacher_head": spec.teacher.head}
    return Recipe(kind=kind, family=spec.teacher.family, label_names=list(run.reader.manifest.label_names),
                  max_length=spec.teacher.max_length, prompt=spec.teacher.prompt, pad_token_id=run.pad_id,
                  source=source, **fields)


def _classifier(run: Run):  # noqa: ANN202
    from robustkd.hf_classifier import RobustkdConfig, RobustkdForSequenceClassification

    names = run.reader.manifest.label_names
    state = merged_state(run.student, run.config.adapter)  # merges LoRA into the student's own modules
    cfg = RobustkdConfig(backbone=run.student.backbone.config.to_dict(),
                         pooling=run.reader.manifest.spec.teacher.pooling,
                         id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = RobustkdForSequenceClassification(cfg)
    model.load_state_dict(state, strict=True)
    return model, _recipe(run, "classifier")


def _verbalizer(run: Run):  # noqa: ANN202
    from transformers import AutoModelForCausalLM

    from robustkd.shared.models import pretrained_args

    m = run.reader.manifest
    folder, kwargs = pretrained_args(model_path(m, run.config.model))
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    lm.base_model.load_state_dict(_plain_backbone(run).state_dict(), strict=True)
    ids = list(m.head_info["label_token_ids"])
    head, out = run.student.head, lm.get_output_embeddings()
    with torch.no_grad():  # untied, so the label words' rows can differ from their input embeddings
        out.weight = torch.nn.Parameter(out.weight.detach().clone())
        lm.config.tie_word_embeddings = False
        out.weight[ids] = head.weight.detach().to(out.weight.dtype)
        bias = head.bias.detach().float()
        if getattr(out, "bias", None) is not None:
            out.bias[ids] = bias.to(out.bias.dtype)
            bias = torch.zeros_like(bias)
    lm.config.id2label = dict(enumerate(m.label_names))
    lm.config.label2id = {n: i for i, n in enumerate(m.label_names)}
    return lm, _recipe(run, "verbalizer", label_words=list(m.spec.teacher.label_words or ()), label_token_ids=ids,
                       label_bias=bias.tolist())


def _generative(run: Run):  # noqa: ANN202
    lm = _plain_backbone(run) if run.config.adapter == "lora" else run.student.lm
    return lm, _recipe(run, "generative", max_response_tokens=run.reader.manifest.spec.sparse.max_response_tokens)


def student_as_hf(run: Run):  # noqa: ANN201 - (transformers model, tokenizer, Recipe)
    """The run's student as a transformers model in float32, with its tokenizer and prediction recipe."""
    from robustkd.shared.models import load_tokenizer

    spec = run.reader.manifest.spec
    if spec.generative:
        model, recipe = _generative(run)
    elif spec.teacher.head == "verbalizer":
        model, recipe = _verbalizer(run)
    else:
        model, recipe = _classifier(run)
    source = getattr(run.student, "source", None)  # a generative student may be another model than the teacher
    tokenizer = load_tokenizer(source or model_path(run.reader.manifest, run.config.model))
    tokenizer.model_max_length = spec.teacher.max_length
    return model.eval(), tokenizer, recipe
