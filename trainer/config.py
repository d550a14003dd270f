"""`TrainConfig`: one training run, validated. It is the `robustkd train` CLI and the run's `config.json`.

Importing this module imports no torch: the CLI builds its options from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robustkd.shared.methods import LR_DEFAULT, METHODS, Adapter, Base, display_name


class TrainConfig(BaseModel):
    """Options left at None are filled from the method's defaults (`robustkd.shared.methods`) when the config is
    validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    cache: str = Field(description="Cache key, folder, fsspec URL or service URL of the cache.")
    out: str = Field("runs/x", description="Run folder (checkpoint/, log.jsonl, metrics.json).")
    method: Base = Field("ours", description="Training method (docs/methods.md).")
    adapter: Adapter = Field("full", description="Fine-tune every weight, or LoRA adapters.")
    lambda_task: float | None = Field(None, ge=0, description="λ1, cross-entropy on clean ID rows (default by method).")
    lambda_distill: float | None = Field(None, ge=0, description="λ2, KL(teacher‖student) on perturbed rows "
                                                                 "(default by method).")
    lambda_act: float | None = Field(None, ge=0, description="λ3, Σ_i ‖a_i^s − a_i^t‖₂ over cached layers "
                                                             "(default by method).")
    act_layers: list[int] | None = Field(None, min_length=1, description="Cached layers the activation term "
                                                                        "compares (default: every cached layer).")
    temperature: float = Field(2.0, gt=0, description="τ of the distillation term.")
    distill_clean: bool = Field(False, description="Also distill (and preserve activations) on clean rows.")
    act_scale: Literal["none", "teacher-norm"] = Field(
        "none", description="teacher-norm: divide each layer's distance by the teacher's mean norm (l2 only).")
    act_distance: Literal["l2", "ldifs"] = Field(
        "l2", description="l2: Σ_i ‖a_i^s − a_i^t‖₂; ldifs: per-layer L2-normalised features, mean squared "
                          "difference averaged over layers (LDIFS).")
    reg_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Multiplier of λ2 and λ3 over training: constant, or decaying to 0 at the end.")
    class_weights: Literal["auto", "none", "balanced"] = Field(
        "auto", description="Class weights of the task loss; auto: balanced when a class has under 60% of an "
                            "equal share of the train rows (30% with two classes).")
    unlabelled_groups: int = Field(0, ge=0, description="Unlabelled examples (with variants) added to each batch "
                                                        "for the distillation and activation terms only.")
    task_rows: Literal["clean", "all"] = Field(
        "clean", description="Rows the task loss sees (all = perturbed rows as augmentation).")
    l2sp: float | None = Field(None, ge=0, description=f"α of the L2-SP penalty α/2·‖θ−θ0‖² (method l2-sp: "
                                                       f"{METHODS['l2-sp'].l2sp:g}; else 0).")
    dropout: bool | None = Field(None, description="Dropout in the student; default: off when λ_act > 0 "
                                                   "(the noise floor of L_reg).")
    head_init: Literal["teacher", "random"] | None = Field(None, description="Head start (default by method).")
    lr: float | None = Field(None, gt=0, description=f"Backbone learning rate (LoRA: the adapters'); default "
                                                     f"{LR_DEFAULT['full']:g} full, {LR_DEFAULT['lora']:g} LoRA.")
    head_lr: float = Field(1e-3, gt=0, description="Head learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup: float = Field(0.1, ge=0, le=1, description="Warm-up fraction of the steps (then linear decay to 0).")
    clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    epochs: int = Field(1, ge=1, description="Epochs over the train split.")
    batch_groups: int = Field(16, ge=1, description="Clean examples (with their variants) per batch.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    train_groups: int | None = Field(None, ge=1, description="Use only the first N train examples (quick runs).")
    seed: int = Field(0, ge=0, description="Seed of the head init, shuffling and dropout.")
    num_workers: int = Field(1, ge=1, description="Stream workers (the shuffle order depends on this).")
    threads: int | None = Field(None, ge=1, description="torch threads.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] | None = Field(None, min_length=1, description="Module names LoRA adapts (default: the "
                                                                         "model type's, e.g. query,value for BERT, "
                                                                         "q_proj,v_proj for Llama).")
    model: str | None = Field(None, description="Model folder override (must hash like the cache's model).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: at the end only).")
    resume: bool = Field(False, description="Resume from the run folder's checkpoint.")
    keep_optimizer: bool = Field(False, description="Keep the optimizer state after a finished run (to train on).")
    evaluate: bool = Field(True, description="Evaluate ID and OOD test splits after training.")
    transfer: str | None = Field(None, description="Generative runs: also measure zero-shot accuracy on this other "
                                                   "generative cache's test rows (key, folder or URL).")
    eval_rows: int | None = Field(None, ge=1, description="Generative runs: evaluate on the first N rows of each "
                                                          "split only (default: all).")

    @model_validator(mode="after")
    def _method_defaults(self) -> TrainConfig:
        base = METHODS[self.method]
        for name in ("lambda_task", "lambda_distill", "lambda_act", "l2sp", "head_init"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(base, name))
        self.dropout = (self.lambda_act == 0) if self.dropout is None else self.dropout
        self.lr = LR_DEFAULT[self.adapter] if self.lr is None else self.lr
        if self.lambda_task + self.lambda_distill + self.lambda_act == 0:
            raise ValueError("lambda-task, lambda-distill and lambda-act are all 0: nothing to train")
        if self.method == "online-kd" and self.lambda_distill + self.lambda_act == 0:
            raise ValueError("method online-kd needs lambda-distill or lambda-act > 0")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.lambda_distill > 0 or self.lambda_act > 0

    @property
    def label(self) -> str:
        """The run's name in the method table, e.g. `lora` for ft with LoRA adapters (`display_name`)."""
        return display_name(self.model_dump())
