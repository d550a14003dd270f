"""One training loop for every method: ft, lp-ft, l2-sp, ours (cached teacher) and online-kd (teacher in memory).

The cached path never builds a teacher: targets come from the stream. `online-kd` loads the teacher
(`teacher_service.model.Encoder`, the code that wrote the cache) and runs it on each batch instead.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from shared.layout import CacheReader, default_root, resolve_location
from trainer.losses import activation_loss, distill_loss, hybrid_loss, task_loss
from trainer.stream import CacheStream, loader
from trainer.student import LoraOptions, Student, build_student

METHODS = ("ft", "lp-ft", "l2-sp", "ours", "online-kd")
# (λ_task, λ_distill, λ_act, head init) per method; explicit flags override
METHOD_DEFAULTS = {
    "ft": (1.0, 0.0, 0.0, "random"),
    "lp-ft": (1.0, 0.0, 0.0, "teacher"),
    "l2-sp": (1.0, 0.0, 0.0, "random"),
    "ours": (1.0, 1.0, 0.1, "teacher"),
    "online-kd": (1.0, 1.0, 0.1, "teacher"),
}


class TrainError(ValueError):
    pass


def _h(text: str, default=None, **kw):  # noqa: ANN001, ANN202 - dataclass field with help text
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    cache: str = _h("Cache key, folder, fsspec URL or service URL of the cache.", "")
    out: str = _h("Run folder (checkpoints, log.jsonl, metrics.json).", "runs/x")
    method: str = _h(f"One of {', '.join(METHODS)}.", "ours")
    adapter: str = _h("full | lora.", "full")
    lambda_task: float | None = _h("λ1, cross-entropy on clean ID rows (default by method).")
    lambda_distill: float | None = _h("λ2, KL(teacher‖student) on perturbed rows (default by method).")
    lambda_act: float | None = _h("λ3, Σ_i ‖a_i^s − a_i^t‖₂ over cached layers (default by method).")
    temperature: float = _h("τ of the distillation term.", 2.0)
    distill_clean: bool = _h("Also distill (and preserve activations) on clean rows.", False)
    act_scale: str = _h("none | teacher-norm: divide each layer's distance by the teacher's mean norm.", "none")
    task_rows: str = _h("clean | all: rows the task loss sees (all = perturbed rows as augmentation).", "clean")
    l2sp: float = _h("α of the L2-SP penalty α/2·‖θ−θ0‖² (method l2-sp; default 0.01 there).", 0.0)
    dropout: bool | None = _h("Dropout in the student; default: off when λ_act > 0 (noise floor of L_reg).")
    head_init: str = _h("auto | teacher | random.", "auto")
    lr: float = _h("Backbone learning rate (LoRA: the adapters').", 2e-5)
    head_lr: float = _h("Head learning rate.", 1e-3)
    weight_decay: float = _h("AdamW weight decay.", 0.01)
    warmup: float = _h("Warm-up fraction of the steps (then linear decay to 0).", 0.1)
    clip: float = _h("Gradient norm clip.", 1.0)
    epochs: int = _h("Epochs over the train split.", 1)
    batch_groups: int = _h("Clean examples (with their variants) per batch.", 16)
    max_steps: int | None = _h("Stop after this many steps.")
    train_groups: int | None = _h("Use only the first N train examples (quick runs).")
    seed: int = _h("Seed of the head init, shuffling and dropout.", 0)
    num_workers: int = _h("Stream workers (the shuffle order depends on this).", 1)
    threads: int | None = _h("torch threads.")
    lora_r: int = _h("LoRA rank.", 8)
    lora_alpha: int = _h("LoRA alpha.", 16)
    lora_dropout: float = _h("LoRA dropout.", 0.1)
    lora_targets: str = _h("Comma-separated module names for LoRA.", "query,value")
    model: str | None = _h("Model folder override (must hash like the cache's model).")
    save_every: int = _h("Checkpoint every N steps (0: at the end only).", 0)
    resume: bool = _h("Resume from the run folder's checkpoint.", False)
    evaluate: bool = _h("Evaluate ID and OOD test splits after training.", True)

    def resolved(self) -> TrainConfig:
        """Fill method defaults and validate; raises TrainError naming the field."""
        if self.method not in METHODS:
            raise TrainError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        lt, ld, la, head = METHOD_DEFAULTS[self.method]
        c = TrainConfig(**asdict(self))
        c.lambda_task = lt if c.lambda_task is None else c.lambda_task
        c.lambda_distill = ld if c.lambda_distill is None else c.lambda_distill
        c.lambda_act = la if c.lambda_act is None else c.lambda_act
        if c.method == "l2-sp" and c.l2sp == 0:
            c.l2sp = 0.01
        c.head_init = head if c.head_init == "auto" else c.head_init
        c.dropout = (c.lambda_act == 0) if c.dropout is None else c.dropout
        for name in ("lambda_task", "lambda_distill", "lambda_act", "l2sp"):
            if getattr(c, name) < 0:
                raise TrainError(f"{name.replace('_', '-')}: must be >= 0, got {getattr(c, name)}")
        if c.lambda_task + c.lambda_distill + c.lambda_act == 0:
            raise TrainError("lambdas: all of λ_task, λ_distill, λ_act are 0; nothing to train")
        checks = {"adapter": ("full", "lora"), "head_init": ("teacher", "random"), "task_rows": ("clean", "all"),
                  "act_scale": ("none", "teacher-norm")}
        for name, allowed in checks.items():
            if getattr(c, name) not in allowed:
                raise TrainError(f"{name.replace('_', '-')}: {getattr(c, name)!r} is not one of {allowed}")
        if c.temperature <= 0:
            raise TrainError(f"temperature: must be > 0, got {c.temperature}")
        if c.epochs < 1 or c.batch_groups < 1:
            raise TrainError("epochs and batch-groups must be >= 1")
        if c.method == "online-kd" and c.lambda_distill + c.lambda_act == 0:
            raise TrainError("method online-kd needs λ_distill or λ_act > 0")
        return c

    @property
    def uses_teacher(self) -> bool:
        return (self.lambda_distill or 0) > 0 or (self.lambda_act or 0) > 0


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


class OnlineTeacher:
    """The teacher in memory (online-kd): the same encoder code and head that wrote the cache."""

    def __init__(self, reader: CacheReader, model: str | None, device: torch.device) -> None:
        from teacher_service.model import Encoder

        spec = reader.manifest.cache_spec()
        self.enc = Encoder(model or spec.teacher.model, device=str(device))
        head = reader.read_head()
        self.w = torch.from_numpy(head["weight"]).to(device)
        self.b = torch.from_numpy(head["bias"]).to(device)
        self.layers, self.pooling = spec.teacher.layers, spec.teacher.pooling

    def targets(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        seqs = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]
        out = self.enc.forward_ids(seqs, self.layers, self.pooling)
        return out.features @ self.w.T + self.b, out.layers


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def lr_lambda(total: int, warmup: float):  # noqa: ANN201
    """Linear warm-up over the first `warmup` fraction of steps, then linear decay to 0."""
    w = max(1, int(total * warmup))

    def f(step: int) -> float:
        return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))

    return f


class Trainer:
    """Holds the student, optimiser and stream of one run; `fit()` trains, `step()` does one update."""

    def __init__(self, cfg: TrainConfig, device: str | None = None) -> None:
        self.cfg = cfg = cfg.resolved()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world = distributed_setup()
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
        location = resolve_location(cfg.cache, default_root())
        self.reader = CacheReader(location)
        m = self.reader.manifest
        if "train" not in m.splits or m.splits["train"].stop == m.splits["train"].start:
            raise TrainError(f"cache {m.key[:12]} has no train rows")
        if cfg.uses_teacher and m.splits["train"].group_size == 1 and not cfg.distill_clean:
            raise TrainError("the cache has no perturbed variants; pass --distill-clean or precompute with "
                             "--variants > 0")
        torch.manual_seed(cfg.seed)
        head = self.reader.read_head() if cfg.head_init == "teacher" else None
        lora = LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets.split(",")))
        self.student: Student = build_student(m, head_tensors=head, adapter=cfg.adapter, lora=lora,
                                              model=cfg.model, seed=cfg.seed).to(self.device)
        from trainer.student import tokenizer_for

        self.tokenizer = tok = tokenizer_for(m, cfg.model)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.stream = CacheStream(self.reader, "train", batch_groups=cfg.batch_groups, seed=cfg.seed,
                                  num_workers=cfg.num_workers, pad_id=self.pad_id, max_groups=cfg.train_groups)
        self.steps_per_epoch = len(self.stream)
        if self.world > 1:  # ranks may hold a batch more or less; all stop at the shortest (drop_last)
            n = torch.tensor([self.steps_per_epoch])
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
            self.steps_per_epoch = int(n)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        backbone = [p for p in self.student.backbone.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW([{"params": backbone, "lr": cfg.lr},
                                      {"params": self.student.head.parameters(), "lr": cfg.head_lr}],
                                     weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.total_steps, cfg.warmup))
        self.theta0 = ([p.detach().clone() for p in backbone] if cfg.l2sp > 0 else None)
        self.online = OnlineTeacher(self.reader, cfg.model, self.device) if cfg.method == "online-kd" else None
        self.act_scale = None
        if cfg.act_scale == "teacher-norm":
            sample = self.reader.read_shard(0).targets
            self.act_scale = {i: float(np.linalg.norm(sample[f"layer_{i}"], axis=1).mean())
                              for i in self.student.layers}
        self.step_no, self.epoch, self.batches_in_epoch = 0, 0, 0
        self.out = Path(cfg.out)
        self.model = self.student
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: e.g. BERT's pooler is never used by our pooling
            self.model = DistributedDataParallel(self.student, device_ids=[local] if self.device.type == "cuda"
                                                 else None, find_unused_parameters=True)

    # ---- one update ---------------------------------------------------------------------------
    def step(self, batch: dict) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        clean = batch["clean"]
        use_task = cfg.lambda_task > 0
        use_kd = cfg.uses_teacher
        task_sel = clean if cfg.task_rows == "clean" else torch.ones_like(clean)
        kd_sel = torch.ones_like(clean) if cfg.distill_clean else ~clean
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
            terms["task"] = task_loss(logits[sel], batch["labels"][rows][sel].to(dev))
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
                terms["act"] = activation_loss({i: a[sel] for i, a in acts.items()}, t_acts, self.act_scale)
        loss, logged = hybrid_loss((cfg.lambda_task, cfg.lambda_distill, cfg.lambda_act), **terms)
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
        return {"loss": float(loss.detach()), **logged, "grad_norm": float(gnorm), "rows": int(rows.sum())}

    # ---- loop ---------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self.load_checkpoint()
        main = self.rank == 0  # only rank 0 writes
        if main:
            (self.out / "config.json").write_text(json.dumps({**asdict(cfg), "cache_key": self.reader.key,
                                                              "world_size": self.world}, indent=1))
        log = open(self.out / "log.jsonl" if main else os.devnull, "a")
        bar = _bar(progress and main, self.total_steps, self.step_no, f"train {cfg.method}")
        t0 = time.perf_counter()
        with PeakMemory() as mem:
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
                    bar.update(1, loss=rec["loss"])
                    if cfg.save_every and self.step_no % cfg.save_every == 0:
                        self.save_checkpoint()
                    if self.step_no >= self.total_steps:
                        break
                if self.step_no < self.total_steps or self.batches_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1  # the epoch ended (its stream ran out, or this rank reached the common count)
                    self.batches_in_epoch = 0
        train_s = time.perf_counter() - t0
        bar.close()
        log.close()
        self.save_checkpoint()
        summary = {"method": cfg.method, "adapter": cfg.adapter, "steps": self.step_no, "train_s": round(train_s, 2),
                   "s_per_step": round(train_s / max(1, self.step_no), 4), **mem.summary(),
                   "trainable_params": sum(p.numel() for p in self.student.parameters() if p.requires_grad),
                   "cache_key": self.reader.key, "device": str(self.device)}
        summary["world_size"] = self.world
        if self.rank == 0:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
        if self.world > 1:
            torch.distributed.barrier()
        return summary

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        ck = self.out / "checkpoint"
        ck.mkdir(parents=True, exist_ok=True)
        save_student(self.student, ck, self.cfg.adapter)
        torch.save({"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "rng": torch.get_rng_state()}, ck / "optimizer.pt.tmp")
        os.replace(ck / "optimizer.pt.tmp", ck / "optimizer.pt")
        state = {"step": self.step_no, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}
        (ck / "state.json.tmp").write_text(json.dumps(state))
        os.replace(ck / "state.json.tmp", ck / "state.json")

    def load_checkpoint(self) -> None:
        ck = self.out / "checkpoint"
        if not (ck / "state.json").exists():
            raise TrainError(f"resume: no checkpoint in {ck}")
        load_student(self.student, ck, self.cfg.adapter)
        blob = torch.load(ck / "optimizer.pt", weights_only=True)
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        torch.set_rng_state(blob["rng"])
        state = json.loads((ck / "state.json").read_text())
        self.step_no, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        if self.batches_in_epoch >= self.steps_per_epoch:
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0


def distributed_setup() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_student(student: Student, folder: Path, adapter: str) -> None:
    """Full: every weight in one safetensors file. LoRA: peft adapter files + the head."""
    if adapter == "lora":
        student.backbone.save_pretrained(str(folder / "adapter"))
        save_file({k: v.contiguous() for k, v in student.head.state_dict().items()}, str(folder / "head.safetensors"))
    else:
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(folder / "student.safetensors"))


def load_student(student: Student, folder: Path, adapter: str) -> None:
    if adapter == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file as load

        set_peft_model_state_dict(student.backbone, load(str(folder / "adapter" / "adapter_model.safetensors")))
        student.head.load_state_dict(load(str(folder / "head.safetensors")))
    else:
        student.load_state_dict(load_file(str(folder / "student.safetensors")))


def _bar(enabled: bool, total: int, done: int, desc: str):  # noqa: ANN202
    from tqdm.auto import tqdm

    class _Bar:
        def __init__(self) -> None:
            self.t = tqdm(total=total, initial=done, desc=desc, disable=not enabled, dynamic_ncols=True)

        def update(self, n: int, loss: float) -> None:
            self.t.update(n)
            self.t.set_postfix(loss=f"{loss:.4f}", refresh=False)

        def close(self) -> None:
            self.t.close()

    return _Bar()


def config_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
