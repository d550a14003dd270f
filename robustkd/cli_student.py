"""`robustkd export` and `robustkd predict`: a trained student leaves robustkd. Registered on the app by
`robustkd.cli`; imports no torch until a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from robustkd.cli_common import console, fail, user_errors
from robustkd.cli_output import stdout


def export(run: Annotated[str, typer.Argument(help="Run folder written by `robustkd train` (or a bench's run).")],
           out: Annotated[str, typer.Argument(help="Folder to write (must be empty or absent, unless --force).")],
           dtype: Annotated[Literal["float32", "float16", "bfloat16"], typer.Option(
               help="dtype of model.safetensors (model.onnx is always float32).")] = "float32",
           force: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False) -> None:
    """Export a student for transformers (and onnxruntime): weights with LoRA merged, tokenizer, model card."""
    from robustkd.export import check_out, export_run

    try:
        check_out(Path(out), force)  # before loading anything
        folder = export_run(run, out, dtype=dtype, force=force)
    except user_errors() as e:
        fail(str(e))
    files = sorted(p.name for p in folder.iterdir())
    console.print(f"exported {run} -> {folder} ({', '.join(files)})")
    for line in load_lines(folder):
        typer.echo(line)


def load_lines(folder: Path) -> list[str]:
    """One line per way of loading an exported folder (printed by export and by make demo)."""
    from robustkd.recipe import RECIPE, Recipe

    kind = Recipe.model_validate_json((folder / RECIPE).read_text()).kind
    if kind == "classifier":
        return [f'transformers: python -c \'import robustkd; from transformers import pipeline; '
                f'print(pipeline("text-classification", model="{folder}")(["a fine film"], truncation=True))\'',
                f'onnxruntime:  python -c \'import numpy as np, onnxruntime as ort; from tokenizers import Tokenizer; '
                f'e = Tokenizer.from_file("{folder}/tokenizer.json").encode("a fine film"); '
                f'print(ort.InferenceSession("{folder}/model.onnx").run(None, {{"input_ids": np.array([e.ids]), '
                f'"attention_mask": np.array([e.attention_mask])}})[0])\'']
    return [f'transformers: python -c \'from transformers import AutoModelForCausalLM, AutoTokenizer; '
            f'm = AutoModelForCausalLM.from_pretrained("{folder}"); t = AutoTokenizer.from_pretrained("{folder}")\'']


def predict(model: Annotated[str, typer.Argument(help="Run folder or exported folder.")],
            path: Annotated[str, typer.Option(help="CSV, Parquet or JSONL file to predict on.")],
            out: Annotated[str, typer.Option(help="Predictions file: .csv, .jsonl or .parquet.")],
            text_column: Annotated[str | None, typer.Option(help="Column holding the text.")] = None,
            feature_columns: Annotated[str | None, typer.Option(
                help="Tabular columns, comma-separated (serialised as 'col: value.', as in training).")] = None,
            label_column: Annotated[str | None, typer.Option(
                help="Column of true labels: also print accuracy, macro-F1 and balanced accuracy.")] = None,
            id_column: Annotated[str | None, typer.Option(help="Column to copy as each row's id (default: row "
                                                               "number).")] = None,
            batch_rows: Annotated[int, typer.Option(min=1, help="Rows read and predicted at a time.")] = 256,
            force: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False) -> None:
    """Predict labels (and one probability column per class) for every row of a file."""
    from robustkd.predict_file import Inputs, check_inputs, predict_file
    from robustkd.predictor import Predictor
    from robustkd.progress import Progress

    inputs = Inputs(Path(path), text_column, [c.strip() for c in feature_columns.split(",") if c.strip()]
                    if feature_columns else None, label_column, id_column)
    try:
        if Path(out).exists() and not force:
            fail(f"out: {out} exists; pass --force to replace it")
        predictor = Predictor.load(model)
        check_inputs(inputs, predictor)
        with Progress(console, "predict") as progress:
            res = predict_file(predictor, inputs, Path(out), batch_rows=batch_rows, force=force,
                               progress=lambda done: progress("predict", done, None))
    except user_errors() as e:
        fail(str(e))
    console.print(f"predicted {res['rows']} rows -> {out}" + (f" ({res['skipped']} without text, left empty)"
                                                            if res["skipped"] else ""))
    s = res["scores"]
    if s is not None:
        stdout().print(f"accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  balanced accuracy "
                       f"{s['balanced_accuracy']:.4f}  (n = {s['n']})")
        if s["unknown_labels"]:
            console.print(f"note: {sum(s['unknown_labels'].values())} rows have labels that are not among the "
                          f"model's classes and are left out of the metrics: {sorted(s['unknown_labels'])[:5]}")
