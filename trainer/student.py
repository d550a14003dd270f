"""The student: the cache's foundation model (full or LoRA) + a linear head, pooled as the teacher was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from robustkd.shared.features import pool
from robustkd.shared.files import write_bytes_atomic
from robustkd.shared.layout import Manifest
from robustkd.shared.models import (
    HUB_ID,
    ModelFolderError,
    check_model_folder,
    default_model,
    load_tokenizer,
    pretrained_args,
    quiet_transformers,
    weights_sha256,
)


class StudentError(ValueError):
    pass


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
    spec = manifest.spec
    named = override or spec.teacher.model
    try:  # a service names its default model by hub id: the offline package's folder, where installed
        path = check_model_folder(default_model() if named == HUB_ID else named)
    except ModelFolderError as e:
        raise StudentError(f"{e} (the cache was made with {spec.teacher.model}; pass --model to point at a "
                           "copy of it)") from None
    if weights_sha256(path) != spec.teacher.weights_sha256:
        raise StudentError(f"model: {path} is not the model this cache was made for (weights/tokenizer hash "
                           "differs); use the same model or precompute a cache for this one")
    return path


def build_student(manifest: Manifest, *, head_tensors: dict[str, np.ndarray] | None, adapter: str = "full",
                  lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.1,
                  lora_targets: list[str] | None = None, model: str | None = None,
                  seed: int = 0) -> Student:
    """Load the foundation model as the student; the head starts from `head_tensors` or at random.

    A causal LM's backbone is its base model (no output layer): a verbalizer head is those output rows already.
    LoRA targets default to peft's for the model type (BERT: query, value; Llama: q_proj, v_proj).
    """
    from transformers import AutoModel

    spec = manifest.spec
    if spec.teacher.head == "model":
        raise StudentError("head: caches with the model's own head are not supported by the trainer yet; "
                           "precompute with --head linear-probe or zero-shot")
    path = model_path(manifest, model)
    quiet_transformers()
    torch.manual_seed(seed)
    folder, kwargs = pretrained_args(path)
    backbone = AutoModel.from_pretrained(folder, **kwargs)
    n_layers = int(backbone.config.num_hidden_layers)
    head = nn.Linear(manifest.hidden_size, manifest.num_labels)
    if head_tensors is not None:
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(head_tensors["weight"]))
            head.bias.copy_(torch.from_numpy(head_tensors["bias"]))
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=list(lora_targets) if lora_targets else None, bias="none")
        try:
            backbone = get_peft_model(backbone, cfg)
        except ValueError as e:
            raise StudentError(f"lora-targets: {e}") from None
    elif adapter != "full":
        raise StudentError(f"adapter: {adapter!r} is not 'full' or 'lora'")
    return Student(backbone, head, spec.teacher.layers, spec.teacher.pooling, n_layers)


def tokenizer_for(manifest: Manifest, model: str | None = None):  # noqa: ANN201
    return load_tokenizer(model_path(manifest, model))


def save_student(student: Student, folder: Path, adapter: str) -> None:
    """Full: every weight in one safetensors file. LoRA: peft adapter files + the head."""
    folder.mkdir(parents=True, exist_ok=True)
    if adapter == "lora":
        student.backbone.save_pretrained(str(folder / "adapter"))
        if student.head is not None:
            write_bytes_atomic(folder / "head.safetensors", _tensors_bytes(student.head))
    else:
        write_bytes_atomic(folder / "student.safetensors", _tensors_bytes(student))


def _unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The state dict without second names of one tensor (tied input/output embeddings), and those names."""
    seen, out, tied = set(), {}, set()
    for k, v in module.state_dict().items():
        if v.data_ptr() in seen and v.numel():
            tied.add(k)
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out, tied


def _tensors_bytes(module: nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in _unique_state(module)[0].items()})


def load_student(student: nn.Module, folder: Path, adapter: str) -> None:
    if adapter == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student.backbone, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
        if student.head is not None:
            student.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    else:
        missing, unexpected = student.load_state_dict(load_file(str(folder / "student.safetensors")), strict=False)
        if unexpected or set(missing) - _unique_state(student)[1]:  # only tied names may be absent
            raise StudentError(f"checkpoint of {folder} does not fit the student: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
