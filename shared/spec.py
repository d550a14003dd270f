"""`CacheSpec`: everything that determines a teacher cache's bytes, and the key derived from it."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMAT_VERSION = 3  # 2: held-out-perturbed evaluation splits; compute device and dtype in the key
#                    3: causal-LM teachers (family, prompt, verbalizer); sparse per-token targets of generative tasks
RECIPE_VERSION = 1  # bump when a transform's behaviour changes: old caches then get new keys


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TeacherSpec(_Frozen):
    model: str = Field(description="Model path: a folder or a .gguf file (or hub id where a hub is reachable).")
    weights_sha256: str = Field(description="sha256 over the model's weight and tokenizer files (or its GGUF).")
    family: Literal["encoder", "causal-lm"] = Field("encoder", description="Encoder, or a causal LM.")
    tokenizer_sha256: str | None = Field(
        None, description="sha256 of a causal LM's vocabulary: students must tokenise alike (sparse targets index it).")
    head: Literal["linear-probe", "zero-shot", "model", "verbalizer"] = Field(
        "linear-probe", description="Where the teacher's class logits come from (verbalizer: the label words' "
                                    "next-token logits of a causal LM; model: its own head, for a causal LM its "
                                    "vocabulary distribution).")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="The linear probe's class weights (balanced: C chosen on balanced accuracy too).")
    layers: tuple[int, ...] = Field(description="hidden_states indices captured (0 = embeddings, L = last).")
    pooling: Literal["mean", "cls", "last"] = Field("mean", description="Pooling of each captured layer (last: "
                                                                         "the last real token).")
    prompt: str | None = Field(None, description="Causal LMs: the template around each row's text ({text}).")
    label_words: tuple[str, ...] | None = Field(None, description="Verbalizer: one word per class.")
    calibration: Literal["none", "bias"] = Field(
        "none", description="Verbalizer: a bias per class fitted on the clean ID validation rows.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokenizer truncation length.")
    device_type: Literal["cpu", "cuda"] = Field("cpu", description="Where the teacher ran: the bytes differ.")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="The forward's compute dtype (bfloat16 autocast on CUDA).")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("layers: at least one layer must be captured")
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"layers: indices must be distinct and >= 0, got {list(v)}")
        return tuple(sorted(v))


class TaskSpec(_Frozen):
    name: str = Field(description="Built-in task id, or the user file's name.")
    rows_sha256: str = Field(description="sha256 of the task's rows (split, id, domain, text, label).")
    label_names: tuple[str, ...]
    source: str | None = Field(None, description="User file path; None for built-in tasks.")
    limit: int | None = Field(None, description="Rows per split cap (already reflected in rows_sha256).")
    seed: int = Field(0, description="Seed of the ID train/validation/test split.")


class PerturbationSpec(_Frozen):
    transforms: tuple[str, ...] = Field(description="Registered transform names drawn from, per variant.")
    severities: tuple[int, ...] = Field((2, 3, 4), description="Severities drawn from, 1..5.")
    variants: int = Field(2, ge=0, le=32, description="Perturbed variants per train/validation example.")
    splits: tuple[str, ...] = Field(("train", "validation", "unlabelled"), description="Splits that get variants.")
    seed: int = 0
    version: int = RECIPE_VERSION
    heldout_transforms: tuple[str, ...] = Field(
        (), description="Transforms the recipe never uses, for the evaluation-only held-out-perturbed splits.")
    heldout_severity: int = Field(3, ge=1, le=5, description="Severity of the held-out perturbations.")

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s < 1 or s > 5 for s in v):
            raise ValueError(f"severities: each must be in 1..5, got {list(v)}")
        return v


class SparseSpec(_Frozen):
    """Per-response-token teacher targets of a generative task (a dense [T, V] cache is 2·V bytes per token)."""

    kind: Literal["top-k", "sampled", "dense"] = Field(
        description="top-k: the k most likely tokens and the rest's mass; sampled: k draws from the teacher at "
                    "temperature τ, unique ids with counts (RS-KD); dense: every log-prob (small subsets only).")
    k: int = Field(ge=1, le=255, description="Tokens kept (top-k) or draws (sampled) per position (dense: 1).")
    temperature: float = Field(1.0, gt=0, description="τ of the sampling proposal (sampled only).")
    seed: int = Field(0, ge=0, description="Seed of the draws (sampled only).")
    index_dtype: Literal["uint8", "uint16", "uint32"] = Field(
        description="The smallest unsigned integer type that holds the vocabulary.")
    value_dtype: Literal["float16"] = "float16"
    max_response_tokens: int = Field(64, ge=1, description="Responses are cut to this many tokens (EOS included).")


class GeneralSpec(_Frozen):
    """Unrelated prompts in a generative cache (package data), answered by the teacher itself at precompute: their
    distillation half is the `unlabelled` split, their evaluation half the `general` split (forgetting metrics)."""

    prompt: str = Field(description="Template around each prompt ({text}): the tokenizer's chat template with one "
                                    "user turn and the assistant's cue, or {text} alone when it has none.")
    chat_template: bool = Field(description="Whether `prompt` is the tokenizer's chat template.")
    max_new_tokens: int = Field(48, ge=1, le=512, description="The teacher's answers stop here or at EOS.")
    decoding: Literal["greedy"] = "greedy"


class StorageSpec(_Frozen):
    logits_dtype: Literal["float32"] = "float32"
    activations_dtype: Literal["float16", "float32"] = "float16"
    shard_rows: int = Field(1024, ge=1, description="Rows per shard (rounded to a multiple of 1+variants).")


_LOCATORS = {"teacher": {"model"}, "task": {"source"}}


class CacheSpec(_Frozen):
    """Everything that determines a cache's contents; `cache_key()` hashes it."""

    format_version: int = FORMAT_VERSION
    teacher: TeacherSpec
    task: TaskSpec
    perturbations: PerturbationSpec
    storage: StorageSpec = StorageSpec()
    sparse: SparseSpec | None = Field(None, description="Generative tasks: per-token targets; None: classification.")
    general: GeneralSpec | None = Field(None, description="Generative tasks: unrelated prompts the teacher answered.")

    def canonical_json(self) -> str:
        """The keyed content: where the model or user file lives is left out (their hashes are in); so is `general`
        when unset, so caches without unrelated prompts keep their keys."""
        exclude = {**_LOCATORS, **({"general": True} if self.general is None else {})}
        return json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"))

    def cache_key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def generative(self) -> bool:
        return self.sparse is not None

    @property
    def group_size(self) -> int:
        """Rows per clean example in the splits that get variants: the clean row plus its variants."""
        return 1 + self.perturbations.variants

    @property
    def shard_rows(self) -> int:
        g = self.group_size
        return max(g, (self.storage.shard_rows // g) * g)
