"""The student: the cache's foundation model (full or LoRA) + a linear head, pooled as the teacher was."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.layout import Manifest
from shared.pooling import pool
from shared.spec import weights_sha256


class StudentError(ValueError):
    pass


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    targets: tuple[str, ...] = field(default=("query", "value"), metadata={"help": "Module names to adapt."})


class Student(nn.Module):
    """Backbone + linear head on the pooled last layer; returns logits and the pooled captured layers."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, layers: tuple[int, ...], pooling: str,
                 n_layers: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.layers, self.pooling, self.n_layers = tuple(layers), pooling, n_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                with_layers: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hs = out.hidden_states
        feats = pool(hs[self.n_layers], attention_mask, self.pooling)
        acts = {i: pool(hs[i], attention_mask, self.pooling) for i in self.layers} if with_layers else {}
        return self.head(feats), acts


def model_path(manifest: Manifest, override: str | None = None) -> Path:
    """The model the cache names (or `override`), checked against the cache's weights hash."""
    spec = manifest.cache_spec()
    path = Path(override or spec.teacher.model)
    if not (path / "config.json").exists():
        raise StudentError(f"model: {path} is not a model folder (the cache was made with {spec.teacher.model}; "
                           "pass --model to point at a copy of it)")
    if weights_sha256(path) != spec.teacher.weights_sha256:
        raise StudentError(f"model: {path} is not the model this cache was made for (weights/tokenizer hash "
                           "differs); use the same model or precompute a cache for this one")
    return path


def build_student(manifest: Manifest, *, head_tensors: dict[str, np.ndarray] | None, adapter: str = "full",
                  lora: LoraOptions | None = None, model: str | None = None, seed: int = 0) -> Student:
    """Load the foundation model as the student; the head starts from `head_tensors` or at random."""
    from transformers import AutoModel

    spec = manifest.cache_spec()
    if spec.teacher.head == "model":
        raise StudentError("head: caches with the model's own head are not supported by the trainer yet; "
                           "precompute with --head linear-probe or zero-shot")
    path = model_path(manifest, model)
    torch.manual_seed(seed)
    backbone = AutoModel.from_pretrained(str(path))
    n_layers = int(backbone.config.num_hidden_layers)
    head = nn.Linear(manifest.hidden_size, manifest.num_labels)
    if head_tensors is not None:
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(head_tensors["weight"]))
            head.bias.copy_(torch.from_numpy(head_tensors["bias"]))
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        lora = lora or LoraOptions()
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.targets), bias="none")
        try:
            backbone = get_peft_model(backbone, cfg)
        except ValueError as e:
            raise StudentError(f"lora targets: {e}") from None
    elif adapter != "full":
        raise StudentError(f"adapter: {adapter!r} is not 'full' or 'lora'")
    return Student(backbone, head, spec.teacher.layers, spec.teacher.pooling, n_layers)


def tokenizer_for(manifest: Manifest, model: str | None = None):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path(manifest, model)))
