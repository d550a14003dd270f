"""A finished run folder, loaded back: its config (through `TrainConfig`), cache, and trained student."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustkd.shared.layout import default_root, resolve_location
from robustkd.shared.reader import CacheReader
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.lm_student import LMStudent, build_lm_student, lm_pad_id
from robustkd.trainer.student import Student, build_student, load_student, tokenizer_for


class RunError(ValueError):
    pass


@dataclass
class Run:
    folder: Path
    config: TrainConfig
    reader: CacheReader
    student: Student | LMStudent
    pad_id: int


def read_config(folder: Path) -> TrainConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise RunError(f"{folder} is not a run folder (no config.json)")
    return TrainConfig.model_validate_json(path.read_text())


def load_run(folder: str | Path, *, cache: str | None = None, weights: bool = True, device: str | None = None,
             adapter: str | None = None, head_init: str | None = None) -> Run:
    """The run's student with its final weights (or the pre-trained ones with `weights=False`), on `device`.

    `cache` overrides where the run's cache is read from (e.g. a folder instead of a service URL); `adapter` and
    `head_init` override the run's (e.g. a plain student with the teacher's head: WiSE's θ0).
    """
    folder = Path(folder)
    cfg = read_config(folder)
    if adapter or head_init:
        cfg = cfg.model_copy(update={k: v for k, v in (("adapter", adapter), ("head_init", head_init)) if v})
    reader = CacheReader(resolve_location(cache or cfg.cache, default_root()))
    lora = {"adapter": cfg.adapter, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout, "lora_targets": cfg.lora_targets, "model": cfg.model, "seed": cfg.seed}
    if reader.manifest.spec.generative:
        student = build_lm_student(reader.manifest, **lora)
    else:
        head = reader.read_head() if cfg.head_init == "teacher" else None
        student = build_student(reader.manifest, head_tensors=head, **lora)
    if weights:
        if not (folder / "checkpoint").exists():
            raise RunError(f"{folder} has no checkpoint/ (the run did not finish)")
        load_student(student, folder / "checkpoint", cfg.adapter)
    student.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if reader.manifest.spec.generative:
        return Run(folder, cfg, reader, student, lm_pad_id(reader.manifest, cfg.model))
    tok = tokenizer_for(reader.manifest, cfg.model)
    return Run(folder, cfg, reader, student, tok.pad_token_id if tok.pad_token_id is not None else 0)
