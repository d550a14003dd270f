"""The student of a generative cache: a causal LM (full or LoRA) scored at its response positions.

The student may be another model than the teacher (a smaller one, say), as long as it tokenises exactly alike:
the cache's sparse targets index the teacher's vocabulary. The activation term needs the same hidden size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustkd.shared.features import pool
from robustkd.shared.layout import Manifest
from robustkd.shared.models import (
    ModelFolderError,
    check_model_folder,
    load_tokenizer,
    model_family,
    pretrained_args,
    quiet_transformers,
    vocabulary_sha256,
)
from robustkd.trainer.student import StudentError, model_path


def response_mask(mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the positions whose next token is a response token: prompt_len-1 .. length-2."""
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    length = mask.sum(1, keepdim=True)
    return (pos >= prompt_len.unsqueeze(1).to(mask.device) - 1) & (pos < length - 1)


class LMStudent(nn.Module):
    """A causal LM; `forward` gives its logits at the response positions (row by row) and its pooled layers."""

    head = None  # its output layer is part of the backbone

    def __init__(self, backbone: nn.Module, lm: nn.Module, layers: tuple[int, ...], pooling: str) -> None:
        super().__init__()
        self.backbone = backbone  # the causal LM, or its peft wrapper (whose LoRA layers live inside `lm`)
        object.__setattr__(self, "lm", lm)  # not a second registration of the same weights
        self.layers, self.pooling = tuple(layers), pooling
        self.n_layers = int(lm.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                with_layers: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """([N, V] logits at the N True `positions`, row-major; pooled captured layers)."""
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hs = out.hidden_states
        logits = self.lm.get_output_embeddings()(hs[self.n_layers][positions])
        acts = {i: pool(hs[i], attention_mask, self.pooling) for i in self.layers} if with_layers else {}
        return logits, acts


def student_model(manifest: Manifest, override: str | None) -> Path:
    """The student's model: the cache's, or another causal LM with the same vocabulary (checked)."""
    spec = manifest.spec
    if override is None:
        return model_path(manifest)
    try:
        path = check_model_folder(override)
    except ModelFolderError as e:
        raise StudentError(str(e)) from None
    if model_family(path) != "causal-lm":
        raise StudentError(f"model: {override} is not a causal LM; a generative cache trains causal LMs")
    if vocabulary_sha256(load_tokenizer(path)) != spec.teacher.tokenizer_sha256:
        raise StudentError(f"model: the tokenizer of {override} differs from the cache's teacher tokenizer "
                           f"(tokenizer_sha256 {spec.teacher.tokenizer_sha256[:12]}): its sparse targets index "
                           "the teacher's vocabulary, so the student must tokenise exactly alike")
    return path


def lm_pad_id(manifest: Manifest, model: str | None = None) -> int:
    """The pad id rows are padded with (masked out: any id the student knows would do)."""
    tok = load_tokenizer(student_model(manifest, model))
    return next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)


def build_lm_student(manifest: Manifest, *, adapter: str = "full", lora_r: int = 8, lora_alpha: int = 16,
                     lora_dropout: float = 0.1, lora_targets: list[str] | None = None, model: str | None = None,
                     seed: int = 0) -> LMStudent:
    from transformers import AutoModelForCausalLM

    path = student_model(manifest, model)
    quiet_transformers()
    torch.manual_seed(seed)
    folder, kwargs = pretrained_args(path)
    lm = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if manifest.vocab_size and lm.get_output_embeddings().weight.shape[0] != manifest.vocab_size:
        raise StudentError(f"model: {path} predicts {lm.get_output_embeddings().weight.shape[0]} tokens, the "
                           f"cache's teacher {manifest.vocab_size}")
    backbone = lm
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=lora_targets,
                         bias="none")
        try:
            backbone = get_peft_model(lm, cfg)
        except ValueError as e:
            raise StudentError(f"lora-targets: {e}") from None
    student = LMStudent(backbone, lm, manifest.spec.teacher.layers, manifest.spec.teacher.pooling)
    student.source = path  # where its tokenizer is read from (evaluation decodes answers)
    return student
