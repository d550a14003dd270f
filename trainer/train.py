"""One training loop for every method: ft, lp-ft, l2-sp, ours (cached teacher) and online-kd (teacher in memory).

The cached path never builds a teacher: targets come from the stream. `online-kd` loads the teacher
(`robustkd.trainer.online`) and runs it on each batch instead.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from robustkd.shared.layout import default_root, imbalanced, resolve_location
from robustkd.shared.reader import CacheReader
from robustkd.trainer import checkpoint
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.lm_student import LMStudent, build_lm_student, lm_pad_id
from robustkd.trainer.losses import (
    activation_loss,
    balanced_class_weights,
    distill_loss,
    hybrid_loss,
    ldifs_loss,
    reg_factor,
    task_loss,
)
from robustkd.trainer.stream import CacheStream, Cycle, concat_batches, loader
from robustkd.trainer.student import Student, build_student, tokenizer_for

StepFn = Callable[[int, int, dict], None]  # (step, total steps, logged record)


class TrainError(ValueError):
    pass


class PeakMemory:
    """Peak process RSS (sampled) and CUDA allocation during a block."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak = self.proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def summary(self) -> dict[str, float]:
        out = {"peak_rss_mb": round(self.peak / 2**20, 1)}
        if torch.cuda.is_available():
            out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


def distributed_setup(device: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Joins the process group torchrun describes: gloo on CPU; on GPU, NCCL with
    this rank's device set first (PyTorch's pattern: `set_device(local_rank)`, then `init_process_group`)."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dev
    return 0, 1, dev


def open_cache(cfg: TrainConfig) -> CacheReader:
    """The run's cache, checked for what the method needs."""
    reader = CacheReader(resolve_location(cfg.cache, default_root()))
    m = reader.manifest
    if "train" not in m.splits or m.splits["train"].stop == m.splits["train"].start:
        raise TrainError(f"cache {m.key[:12]} has no train rows")
    if cfg.uses_teacher and m.splits["train"].group_size == 1 and not cfg.distill_clean:
        raise TrainError("the cache has no perturbed variants; pass --distill-clean or precompute with "
                         "--variants > 0")
    if cfg.unlabelled_groups and "unlabelled" not in m.splits:
        raise TrainError("unlabelled-groups: the cache has no unlabelled rows (precompute with --unlabelled or "
                         "--unlabelled-domains)")
    if cfg.unlabelled_groups and not cfg.uses_teacher:
        raise TrainError("unlabelled-groups: unlabelled rows feed only the distillation and activation terms, "
                         "which this method has off")
    if cfg.act_layers:
        if cfg.lambda_act == 0:
            raise TrainError("act-layers: the activation term is off (lambda-act 0); set --lambda-act > 0")
        cached = m.spec.teacher.layers
        for i in cfg.act_layers:
            if i not in cached:
                raise TrainError(f"act-layers: {i} is not a cached layer (the cache holds "
                                 f"{', '.join(map(str, cached))})")
    return reader


def resolve_class_weights(cfg: TrainConfig, reader: CacheReader) -> TrainConfig:
    """`auto` becomes `balanced` when the clean train rows are imbalanced (`layout.imbalanced`), else `none`."""
    if cfg.class_weights != "auto":
        return cfg
    balanced = imbalanced(reader.manifest.label_counts.get("train") or [])
    return cfg.model_copy(update={"class_weights": "balanced" if balanced else "none"})


def make_student(cfg: TrainConfig, reader: CacheReader, device: torch.device) -> tuple[Student | LMStudent, int]:
    """(student on device, pad token id)."""
    if reader.manifest.spec.generative:
        from robustkd.trainer.lm_train import GenerativeError, check_generative

        student = build_lm_student(reader.manifest, adapter=cfg.adapter, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                   lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets, model=cfg.model,
                                   seed=cfg.seed)
        try:
            check_generative(cfg, student, reader.manifest)
        except GenerativeError as e:
            raise TrainError(str(e)) from None
        return student.to(device), lm_pad_id(reader.manifest, cfg.model)
    head = reader.read_head() if cfg.head_init == "teacher" else None
    student = build_student(reader.manifest, head_tensors=head, adapter=cfg.adapter, lora_r=cfg.lora_r,
                            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                            lora_targets=cfg.lora_targets, model=cfg.model, seed=cfg.seed).to(device)
    tok = tokenizer_for(reader.manifest, cfg.model)
    return student, tok.pad_token_id if tok.pad_token_id is not None else 0


def make_optimizer(cfg: TrainConfig, student: Student, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (backbone and head learning rates) with transformers' linear schedule: warm-up from 0 over the first
    `warmup` fraction of the steps (so the first step's learning rate is 0), then linear decay to 0."""
    from transformers import get_scheduler

    backbone = [p for p in student.backbone.parameters() if p.requires_grad]
    groups = [{"params": backbone, "lr": cfg.lr}]
    if student.head is not None:  # a generative student's output layer is in its backbone
        groups.append({"params": student.head.parameters(), "lr": cfg.head_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = get_scheduler("linear", opt, num_warmup_steps=max(1, int(total_steps * cfg.warmup)),
                          num_training_steps=total_steps)
    return opt, sched


def teacher_norms(reader: CacheReader, layers: tuple[int, ...]) -> dict[int, float]:
    """Mean norm of the teacher's pooled activations per layer (on the first shard)."""
    sample = reader.read_shard(0).targets
    return {i: float(np.linalg.norm(sample[f"layer_{i}"], axis=1).mean()) for i in layers}


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


class Trainer:
    """Holds the student, optimiser and stream of one run; `fit()` trains, `step()` does one update."""

    def __init__(self, cfg: TrainConfig, device: str | None = None) -> None:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, self.device = distributed_setup(device)
        self.reader = open_cache(cfg)
        self.cfg = cfg = resolve_class_weights(cfg, self.reader)
        self.class_weight = (balanced_class_weights(self.reader.manifest.label_counts["train"]).to(self.device)
                             if cfg.class_weights == "balanced" else None)
        torch.manual_seed(cfg.seed)
        self.student, self.pad_id = make_student(cfg, self.reader, self.device)
        self.stream = CacheStream(self.reader, "train", batch_groups=cfg.batch_groups, seed=cfg.seed,
                                  num_workers=cfg.num_workers, pad_id=self.pad_id, max_groups=cfg.train_groups)
        self.steps_per_epoch = self._common_steps(len(self.stream))
        self.unlabelled = None
        if cfg.unlabelled_groups:
            self.unlabelled = Cycle(CacheStream(self.reader, "unlabelled", batch_groups=cfg.unlabelled_groups,
                                                seed=cfg.seed + 1, pad_id=self.pad_id))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.opt, self.sched = make_optimizer(cfg, self.student, self.total_steps)
        trainable = [p for p in self.student.backbone.parameters() if p.requires_grad]
        self.theta0 = [p.detach().clone() for p in trainable] if cfg.l2sp > 0 else None
        self.online = None
        if cfg.method == "online-kd":
            from robustkd.trainer.online import OnlineTeacher

            self.online = OnlineTeacher(self.reader, cfg.model, self.device)
        self.act_scale = teacher_norms(self.reader, self.student.layers) if cfg.act_scale == "teacher-norm" else None
        self.step_no, self.epoch, self.batches_in_epoch = 0, 0, 0
        self.out = Path(cfg.out)
        self.model = self.student
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: e.g. BERT's pooler is never used by our pooling
            self.model = DistributedDataParallel(self.student, device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None, find_unused_parameters=True)

    def _common_steps(self, mine: int) -> int:
        """Ranks may hold a batch more or less: all stop at the shortest (drop_last)."""
        if self.world == 1:
            return mine
        n = torch.tensor([mine], device=self.device)  # NCCL reduces only device tensors
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        return int(n.item())

    # ---- one update ---------------------------------------------------------------------------
    def step(self, batch: dict) -> dict[str, float]:
        cfg = self.cfg
        if self.reader.manifest.spec.generative:
            from robustkd.trainer.lm_train import generative_step

            loss, logged, n_rows = generative_step(self, batch)
        else:
            loss, logged, n_rows = self.classification_loss(batch)
        if self.theta0 is not None:
            params = [p for p in self.student.backbone.parameters() if p.requires_grad]
            pen = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, self.theta0, strict=True))
            loss = loss + cfg.l2sp / 2 * pen
            logged["l2sp"] = float(pen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.clip)
        self.opt.step()
        self.sched.step()
        self.step_no += 1
        return {"loss": float(loss.detach()), **logged, "grad_norm": float(gnorm), "rows": n_rows}

    def classification_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss, logged terms, rows used) of a classification batch."""
        cfg, dev = self.cfg, self.device
        if self.unlabelled is not None:
            batch = concat_batches(batch, next(self.unlabelled), self.pad_id)
        clean, labelled = batch["clean"], batch["labels"] >= 0
        use_task, use_kd = cfg.lambda_task > 0, cfg.uses_teacher
        task_sel = (clean if cfg.task_rows == "clean" else torch.ones_like(clean)) & labelled
        # distillation sees the perturbed rows, and every unlabelled row: its clean text is the point of having it
        kd_sel = torch.ones_like(clean) if cfg.distill_clean else ~clean | ~labelled
        rows = torch.zeros_like(clean)
        if use_task:
            rows |= task_sel
        if use_kd:
            rows |= kd_sel
        ids, mask = trim(batch["input_ids"][rows], batch["attention_mask"][rows])
        ids, mask = ids.to(dev), mask.to(dev)
        self.student.train(cfg.dropout)
        logits, acts = self.model(ids, mask, with_layers=use_kd and cfg.lambda_act > 0)
        terms = {}
        if use_task:
            sel = task_sel[rows].to(dev)
            terms["task"] = task_loss(logits[sel], batch["labels"][rows].to(dev)[sel], self.class_weight)
        if use_kd:
            sel = kd_sel[rows].to(dev)
            if self.online is not None:
                t_logits, t_acts = self.online.targets(ids[sel], mask[sel])
            else:
                t_logits = batch["t_logits"][rows].to(dev)[sel]
                t_acts = {i: batch[f"t_layer_{i}"][rows].to(dev)[sel] for i in self.student.layers}
            if cfg.lambda_distill > 0:
                terms["distill"] = distill_loss(logits[sel], t_logits, cfg.temperature)
            if cfg.lambda_act > 0:
                s_acts = {i: a[sel] for i, a in acts.items()}
                terms["act"] = self.act_term(s_acts, t_acts)
        loss, logged = self.total(terms)
        return loss, logged, int(rows.sum())

    def act_term(self, s_acts: dict, t_acts: dict) -> torch.Tensor:
        """L_reg with the configured distance over the chosen layers (classification and generative steps alike)."""
        if self.cfg.act_layers:
            s_acts, t_acts = ({i: a[i] for i in self.cfg.act_layers} for a in (s_acts, t_acts))
        if self.cfg.act_distance == "ldifs":
            return ldifs_loss(s_acts, t_acts)
        return activation_loss(s_acts, t_acts, self.act_scale)

    def total(self, terms: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """λ-weighted sum of the step's terms, λ2 and λ3 scaled by the schedule at this step."""
        cfg = self.cfg
        f = reg_factor(cfg.reg_schedule, self.step_no, self.total_steps)
        return hybrid_loss((cfg.lambda_task, f * cfg.lambda_distill, f * cfg.lambda_act), **terms)

    # ---- loop ---------------------------------------------------------------------------------
    def fit(self, on_step: StepFn | None = None) -> dict:
        """Train to `total_steps`; rank 0 writes config.json, log.jsonl, the checkpoint and train_summary.json."""
        cfg = self.cfg
        main = self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self.load_checkpoint()
        if main:
            (self.out / "config.json").write_text(cfg.model_dump_json(indent=1))
        t0 = time.perf_counter()
        with self.open_log() as log, PeakMemory() as mem:
            while self.step_no < self.total_steps:
                self.stream.set_epoch(self.epoch)
                if self.batches_in_epoch:
                    self.stream.load_state_dict({"epoch": self.epoch, "batches": self.batches_in_epoch,
                                                 "seed": cfg.seed})
                for batch in loader(self.stream):
                    if self.batches_in_epoch >= self.steps_per_epoch:
                        break
                    rec = self.step(batch)
                    self.batches_in_epoch += 1
                    if not all(math.isfinite(v) for v in rec.values()):
                        raise TrainError(f"non-finite loss at step {self.step_no}: {rec}")
                    log.write(json.dumps({"step": self.step_no, "epoch": self.epoch,
                                          "lr": self.sched.get_last_lr()[0], **rec}) + "\n")
                    if on_step and main:
                        on_step(self.step_no, self.total_steps, rec)
                    if cfg.save_every and self.step_no % cfg.save_every == 0:
                        self.save_checkpoint()
                    if self.step_no >= self.total_steps:
                        break
                if self.step_no < self.total_steps or self.batches_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1  # the epoch ended (its stream ran out, or this rank reached the common count)
                    self.batches_in_epoch = 0
        train_s = time.perf_counter() - t0
        self.save_checkpoint()
        if main and not cfg.keep_optimizer:
            checkpoint.drop_optimizer(self.out / "checkpoint")
        summary = {"method": cfg.method, "adapter": cfg.adapter, "steps": self.step_no, "train_s": round(train_s, 2),
                   "s_per_step": round(train_s / max(1, self.step_no), 4), **mem.summary(),
                   "trainable_params": sum(p.numel() for p in self.student.parameters() if p.requires_grad),
                   "cache_key": self.reader.key, "device": str(self.device), "world_size": self.world}
        if main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
        if self.world > 1:
            torch.distributed.barrier()
        return summary

    def open_log(self) -> TextIO:
        """log.jsonl of this run (rank 0): a new one, or on resume the records up to the checkpoint's step."""
        if self.rank != 0:
            return open(os.devnull, "w")
        path = self.out / "log.jsonl"
        kept = []
        if self.cfg.resume and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step_no:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by the crash
                    continue
        log = open(path, "w", buffering=1)  # line-buffered: a killed run keeps every step it took
        log.writelines(kept)
        return log

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank == 0:
            state = {"step": self.step_no, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}
            if self.unlabelled is not None:
                state["unlabelled"] = self.unlabelled.state_dict()
            checkpoint.save(self.out / "checkpoint", self.student, self.cfg.adapter, self.opt, self.sched, state)

    def load_checkpoint(self) -> None:
        try:
            state = checkpoint.load(self.out / "checkpoint", self.student, self.cfg.adapter, self.opt, self.sched)
        except checkpoint.CheckpointError as e:
            raise TrainError(str(e)) from None
        self.step_no, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        if self.unlabelled is not None and "unlabelled" in state:
            self.unlabelled.load_state_dict(state["unlabelled"])
        if self.batches_in_epoch >= self.steps_per_epoch:
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0


def train_and_evaluate(cfg: TrainConfig, on_step: StepFn | None = None) -> tuple[Trainer, dict, dict | None]:
    """Train one run and, when `cfg.evaluate`, write its metrics.json and its registry record (next to the cache):
    (trainer, train summary, metrics)."""
    from robustkd.trainer.evaluate import write_metrics
    from robustkd.trainer.record import register

    tr = Trainer(cfg)
    summary = tr.fit(on_step)
    metrics = None
    if cfg.evaluate and tr.rank == 0:
        metrics = write_metrics(Path(cfg.out), tr.student, tr.reader, tr.pad_id, cfg.transfer, cfg.eval_rows)
        register(cfg.out)  # beside its cache, for the service's dashboard
    return tr, summary, metrics
