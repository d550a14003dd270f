"""`robustkd.json`: how an exported folder turns text into predictions, and where its student came from; and how a
run folder and an exported folder are told apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

RECIPE = "robustkd.json"


class Recipe(BaseModel):
    """How an exported folder turns text into predictions (`robustkd.json`), and where it came from."""

    format: int = 1
    kind: Literal["classifier", "verbalizer", "generative"]
    family: Literal["encoder", "causal-lm"]
    label_names: list[str] = []
    max_length: int
    prompt: str | None = None
    label_words: list[str] | None = None
    label_token_ids: list[int] | None = None
    label_bias: list[float] | None = None
    max_response_tokens: int | None = None
    pad_token_id: int = 0
    source: dict = {}


def is_run(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "checkpoint").is_dir()


def is_export(folder: Path) -> bool:
    return (folder / RECIPE).is_file() and (folder / "config.json").is_file()


def write_recipe(folder: Path, recipe: Recipe) -> None:
    (folder / RECIPE).write_text(json.dumps(recipe.model_dump(mode="json"), indent=1) + "\n")
