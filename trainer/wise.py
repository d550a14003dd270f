"""Weight-space ensembles (WiSE-FT, Wortsman et al. 2022): θ_α = (1 − α)·θ0 + α·θ for every weight, head included.

θ0 is the pre-trained backbone with the teacher's head (the cache's head; a generative student's θ0 is the teacher
LM itself); θ is the fine-tuned student, LoRA adapters merged into its weights. α = 0 is the teacher exactly,
α = 1 the fine-tuned run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from robustkd.trainer.evaluate import write_metrics
from robustkd.trainer.record import register
from robustkd.trainer.run import Run, load_run
from robustkd.trainer.student import Student


def interpolate(theta0: dict[str, torch.Tensor], theta: dict[str, torch.Tensor], alpha: float
                ) -> dict[str, torch.Tensor]:
    """(1 − α)·θ0 + α·θ for floating-point tensors; others (integer buffers) are taken from θ."""
    if theta0.keys() != theta.keys():
        raise ValueError("interpolate: the two state dicts hold different tensors")
    return {k: torch.lerp(theta0[k], v, alpha) if v.is_floating_point() else v.clone() for k, v in theta.items()}


def merged_state(student: Student, adapter: str) -> dict[str, torch.Tensor]:
    """The student's weights as a plain (full) student's state dict: LoRA adapters merged into the base weights."""
    if adapter != "lora":
        return {k: v.detach().clone() for k, v in student.state_dict().items()}
    base = student.backbone.merge_and_unload()
    head = student.head.state_dict().items() if student.head is not None else ()  # an LM's is in its backbone
    return {**{f"backbone.{k}": v.detach().clone() for k, v in base.state_dict().items()},
            **{f"head.{k}": v.detach().clone() for k, v in head}}


def wise_runs(folder: str | Path, alphas: list[float]) -> Iterator[tuple[float, Run]]:
    """(α, a run whose student holds θ_α) for each α; one student is reused, so use each before the next."""
    fine = load_run(folder)
    theta = merged_state(fine.student, fine.config.adapter)
    del fine
    base = load_run(folder, weights=False, adapter="full", head_init="teacher")
    theta0 = {k: v.detach().clone() for k, v in base.student.state_dict().items()}
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha: {a} is outside 0..1")
        with torch.no_grad():
            base.student.load_state_dict(interpolate(theta0, theta, a))
        yield a, base


def wise_folder(run: str | Path, alpha: float) -> Path:
    return Path(run) / "wise" / f"alpha-{alpha:g}"


def write_wise(run: str | Path, alphas: list[float]) -> dict[float, dict]:
    """Evaluate θ_α for each α into RUN/wise/alpha-<α>/ (metrics.json, predictions.npz) and record each point in
    the registry; returns the metrics."""
    out = {}
    summary = Path(run) / "train_summary.json"
    train = json.loads(summary.read_text()) if summary.exists() else {}
    for a, r in wise_runs(run, alphas):
        folder = wise_folder(run, a)
        m = write_metrics(folder, r.student, r.reader, r.pad_id, r.config.transfer, r.config.eval_rows)
        m["train"], m["wise"] = train, {"alpha": a, "of": str(run)}
        (folder / "metrics.json").write_text(json.dumps(m, indent=1))
        register(folder, alpha=a, of=run)
        out[a] = m
    return out
