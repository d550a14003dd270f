"""HTTP bodies of the teacher service: what clients send (`CacheRequest`) and what they get back."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from robustkd.shared.layout import Manifest

SEED_MAX = 2**32 - 1  # numpy's seed range
Name = Annotated[str, Field(max_length=256)]


class CacheRequest(BaseModel):
    """What a user asks for; the service resolves it (model and row hashes) into a `CacheSpec`.

    Every size a client chooses is bounded here, so one request cannot keep the single worker busy for hours
    or make the service allocate without limit."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=4096, description="Model folder, .gguf file or hub id; default: the "
                                                                 "service's model.")
    task: str = Field("sentiment-rt-drugs", max_length=4096, description="Built-in task id, or 'file' for a user file.")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="Cap rows per split (quick tries).")
    split_seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the ID train/validation/test split.")
    # user files
    path: str | None = Field(None, max_length=4096, description="User file (CSV, Parquet or JSONL) when "
                                                                "task='file'; relative: under a data root.")
    text_column: str | None = Field(None, max_length=256)
    feature_columns: list[Name] | None = Field(None, max_length=256)
    label_column: str | None = Field(None, max_length=256)
    domain_column: str | None = Field(None, max_length=256)
    id_domains: list[Name] | None = Field(None, max_length=1000)
    ood_domains: list[Name] | None = Field(None, max_length=1000)
    unlabelled_domains: list[Name] | None = Field(
        None, max_length=1000, description="User file: domains whose rows are unlabelled inputs for distillation only.")
    drop_missing_labels: bool = Field(False, description="User file: drop rows without a label (the count is "
                                                         "printed) instead of refusing the file.")
    unlabelled: bool = Field(False, description="Built-in task: add its unlabelled target-domain text (e.g. the "
                                                "neutral Drugs.com reviews) as distillation-only inputs.")
    prompt_column: str | None = Field(None, max_length=256, description="Generative user files: the prompt column.")
    response_column: str | None = Field(None, max_length=256, description="Generative user files: the response "
                                                                          "column.")
    # teacher
    head: Literal["auto", "linear-probe", "zero-shot", "model", "verbalizer"] = Field(
        "auto", description="Class logits: a linear probe fitted on ID train (C chosen on validation), "
                            "zero-shot label-description prototypes (encoders), the model's own head, or a "
                            "causal LM's label-word logits (verbalizer). auto: zero-shot for an encoder on a "
                            "built-in text task, the linear probe elsewhere (docs/training.md).")
    class_weights: Literal["auto", "none", "balanced"] = Field(
        "auto", description="Class weights of the linear probe; auto: balanced when a class has under 60% of "
                            "an equal share of the ID train rows (30% with two classes).")
    layers: list[Annotated[int, Field(ge=0, le=1024)]] | None = Field(
        None, max_length=64, description="hidden_states indices; default: every 2nd + last.")
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="Pooling; default: mean for encoders, the last real token for causal LMs.")
    max_length: int = Field(128, ge=8, le=8192)
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The teacher's forward precision; auto: bfloat16 autocast on a GPU, float32 on a CPU (a "
                            "CPU with bfloat16 instructions runs bfloat16 about twice as fast).")
    # causal-LM teachers
    prompt: str | None = Field(None, max_length=8192, description="Causal LMs: prompt template with {text} "
                                                                  "(default: the task's).")
    label_words: list[Name] | None = Field(None, max_length=256, description="Verbalizer: one word per class, in "
                                                                             "class order (default: the task's "
                                                                             "label names).")
    calibration: Literal["bias", "none"] = Field(
        "bias", description="Verbalizer: a bias per class fitted on ID validation (none: raw label-word logits).")
    sparse: Literal["top-k", "sampled", "dense"] | None = Field(
        None, description="Generative tasks: per-token targets stored (default sampled; the forgetting bench: top-k, "
                          "whose KL to a student is computable; dense: small subsets only).")
    sparse_k: int | None = Field(None, ge=1, le=255, description="Tokens kept (top-k, default 32) or draws "
                                                                 "(sampled, default 12) per response token.")
    sparse_temperature: float = Field(1.0, gt=0, le=100, description="Sampled: τ of the teacher distribution drawn "
                                                                     "from.")
    sparse_seed: int = Field(0, ge=0, le=SEED_MAX, description="Sampled: seed of the draws.")
    max_response_tokens: int = Field(64, ge=1, le=4096, description="Generative tasks: responses cut to this.")
    general_prompts: bool = Field(False, description="Generative tasks: add the unrelated prompts (package data), "
                                                     "answered by the teacher itself: their distillation half as the "
                                                     "unlabelled split, their evaluation half as the general split "
                                                     "(forgetting metrics).")
    general_max_new_tokens: int = Field(48, ge=1, le=512, description="Unrelated prompts: the teacher's greedy "
                                                                      "answers stop here or at EOS.")
    # perturbations
    transforms: list[Name] | None = Field(None, max_length=32, description="Default: typos, word dropout, "
                                                                            "embedding neighbours and the task's "
                                                                            "domain transform.")
    severities: list[int] = Field([2, 3, 4], min_length=1, max_length=5)
    variants: int = Field(2, ge=0, le=32)
    perturb_seed: int = Field(0, ge=0, le=SEED_MAX)
    shard_rows: int = Field(1024, ge=1, le=16384, description="Rows per shard: the unit of resumption and of "
                                                              "the row stream's memory.")


class Progress(BaseModel):
    rows_done: int = 0
    rows_total: int = 0
    rows_per_s: float = 0.0
    eta_s: float | None = None
    stage: str = "queued"


class JobStatus(BaseModel):
    key: str
    state: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"] = Field(
        description="cancelling: a cancel was asked while running; the job stops at its next forward batch.")
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
