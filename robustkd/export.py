"""`robustkd export RUN OUT`: a trained student as a self-contained folder the ecosystem loads.

- a classifier (pooled backbone + linear head): a transformers folder of `RobustkdForSequenceClassification`
  (loads with the Auto classes after `import robustkd`) and `model.onnx` (tokenised inputs in, class logits out,
  dynamic batch and length), which onnxruntime runs without torch or robustkd;
- a verbalizer or generative causal LM: a plain causal-LM folder (`AutoModelForCausalLM`); a verbalizer's trained
  head becomes its label words' rows of an untied output layer, its bias `label_bias` in `robustkd.json`.

LoRA adapters are merged into the weights; the tokenizer is copied in; `README.md` is the model card.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import torch

from robustkd.hf_student import student_as_hf
from robustkd.predictor import Predictor
from robustkd.recipe import is_run, write_recipe
from robustkd.trainer.run import load_run

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Dtype = Literal["float32", "float16", "bfloat16"]


class ExportError(ValueError):
    pass


def export_onnx(predictor: Predictor, path: Path) -> None:
    """model.onnx: input_ids and attention_mask [batch, sequence] (int64) -> logits [batch, classes]."""
    import warnings

    from robustkd.shared.features import pad_batch

    example = predictor.encode(["an example to trace the graph", "two words"])
    ids, mask = pad_batch(example, predictor.recipe.pad_token_id)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(predictor.model, (ids, mask), dynamo=True, verbose=False,
                                    input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                    dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                    "attention_mask": {0: batch, 1: seq}})
    program.save(str(path))


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"out: {out} is not empty; pass --force to replace it")


def export_run(run_folder: str | Path, out: str | Path, dtype: Dtype = "float32", force: bool = False) -> Path:
    """Write the student of `run_folder` into `out` (see the module doc). The folder is written beside `out` and
    moved into place at the end: a failed export leaves `out` as it was."""
    from robustkd.model_card import write_card

    run_folder, out = Path(run_folder), Path(out)
    if dtype not in DTYPES:
        raise ExportError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if not is_run(run_folder):
        raise ExportError(f"run: {run_folder} is not a finished run folder (config.json and checkpoint/)")
    check_out(out, force)
    model, tokenizer, recipe = student_as_hf(load_run(run_folder, device="cpu"))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if recipe.kind == "classifier":
            export_onnx(Predictor(model, tokenizer, recipe), tmp / "model.onnx")
        model.to(DTYPES[dtype]).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_recipe(tmp, recipe)
        write_card(tmp, run_folder, recipe, dtype, str(out))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
