"""HTTP bodies of the teacher service: what clients send (`CacheRequest`) and what they get back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from robustkd.shared.layout import Manifest


class CacheRequest(BaseModel):
    """What a user asks for; the service resolves it (model and row hashes) into a `CacheSpec`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model folder, .gguf file or hub id; default: the service's model.")
    task: str = Field("sentiment-rt-drugs", description="Built-in task id, or 'file' for a user file.")
    limit: int | None = Field(None, ge=1, description="Cap rows per split (quick tries).")
    split_seed: int = Field(0, ge=0, description="Seed of the ID train/validation/test split.")
    # user files
    path: str | None = Field(None, description="User file (CSV, Parquet or JSONL) when task='file'.")
    text_column: str | None = None
    feature_columns: list[str] | None = None
    label_column: str | None = None
    domain_column: str | None = None
    id_domains: list[str] | None = None
    ood_domains: list[str] | None = None
    prompt_column: str | None = Field(None, description="Generative user files: the prompt column.")
    response_column: str | None = Field(None, description="Generative user files: the response column.")
    # teacher
    head: Literal["linear-probe", "zero-shot", "model", "verbalizer"] = Field(
        "linear-probe", description="Class logits: a linear probe, zero-shot prototypes (encoders), the model's "
                                    "own head, or a causal LM's label-word logits (verbalizer).")
    layers: list[int] | None = Field(None, description="hidden_states indices; default: every 2nd + last.")
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="Pooling; default: mean for encoders, the last real token for causal LMs.")
    max_length: int = Field(128, ge=8, le=8192)
    # causal-LM teachers
    prompt: str | None = Field(None, description="Causal LMs: prompt template with {text} (default: the task's).")
    label_words: list[str] | None = Field(None, description="Verbalizer: one word per class, in class order "
                                                            "(default: the task's label names).")
    calibration: Literal["bias", "none"] = Field(
        "bias", description="Verbalizer: a bias per class fitted on ID validation (none: raw label-word logits).")
    sparse: Literal["top-k", "sampled", "dense"] = Field(
        "sampled", description="Generative tasks: per-token targets stored (dense: small subsets only).")
    sparse_k: int | None = Field(None, ge=1, le=255, description="Tokens kept (top-k, default 32) or draws "
                                                                 "(sampled, default 12) per response token.")
    sparse_temperature: float = Field(1.0, gt=0, description="Sampled: τ of the teacher distribution drawn from.")
    sparse_seed: int = Field(0, ge=0, description="Sampled: seed of the draws.")
    max_response_tokens: int = Field(64, ge=1, le=4096, description="Generative tasks: responses cut to this.")
    # perturbations
    transforms: list[str] | None = Field(None, description="Default: typos, word dropout, embedding "
                                                           "neighbours and the task's domain transform.")
    severities: list[int] = Field([2, 3, 4])
    variants: int = Field(2, ge=0, le=32)
    perturb_seed: int = Field(0, ge=0)
    shard_rows: int = Field(1024, ge=1, le=1_000_000)


class Progress(BaseModel):
    rows_done: int = 0
    rows_total: int = 0
    rows_per_s: float = 0.0
    eta_s: float | None = None
    stage: str = "queued"


class JobStatus(BaseModel):
    key: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress = Progress()
    error: str | None = None
    position: int | None = Field(None, description="Place in the queue while queued (0 = next).")
    request: CacheRequest | None = None
    manifest: Manifest | None = None
    submitted_at: str | None = None


class CacheSummary(BaseModel):
    key: str
    task: str
    model: str
    n_rows: int
    created_at: str
