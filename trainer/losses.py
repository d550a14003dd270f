"""The hybrid loss L = λ1·L_task + λ2·L_distill + λ3·L_reg, one small function per term."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, batch mean (weighted by class with `weight`, as `F.cross_entropy` normalises it)."""
    return F.cross_entropy(logits, labels, weight=weight)


def balanced_class_weights(counts: list[int]) -> torch.Tensor:
    """n / (k · n_c) per class: every class weighs as much in the loss as in a balanced sample."""
    c = torch.tensor(counts, dtype=torch.float32).clamp_min(1.0)
    return c.sum() / (len(counts) * c)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher^τ ‖ p_student^τ)·τ², batch mean; τ² keeps gradient scale independent of τ (Hinton et al.)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * t * t


def activation_loss(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor],
                    scale: dict[int, float] | None = None) -> torch.Tensor:
    """Batch mean of Σ_i ‖a_i^s − a_i^t‖₂ (the L2 norm, not squared).

    `scale` optionally divides layer i's distance by a constant (e.g. the teacher's mean activation norm),
    which puts layers of different magnitude on one footing.
    """
    total = 0.0
    for i, a_t in teacher.items():
        d = torch.linalg.vector_norm(student[i] - a_t.detach().to(student[i].dtype), dim=-1)
        total = total + d / (scale[i] if scale else 1.0)
    return total.mean()


def ldifs_loss(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor]) -> torch.Tensor:
    """LDIFS (Mukhoti et al., arXiv 2308.13320): each layer's features L2-normalised per row, squared differences
    averaged over features, then over layers (equal weights) and over the batch."""
    per_layer = [(F.normalize(student[i], dim=-1, eps=1e-10) -
                  F.normalize(a_t.detach().to(student[i].dtype), dim=-1, eps=1e-10)).pow(2).mean(-1)
                 for i, a_t in teacher.items()]
    return torch.stack(per_layer, dim=1).mean()


def reg_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of λ2 and λ3 at `step` of `total`: 1 throughout (`constant`), or decaying to 0 at the end
    (`linear`, `cosine`), so the fixed anchor holds the student back less as the task optimum nears."""
    if schedule == "constant" or total <= 1:
        return 1.0
    t = min(step, total) / total
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"reg_schedule: unknown {schedule!r}")


def hybrid_loss(lambdas: tuple[float, float, float], *, task: torch.Tensor | None = None,
                distill: torch.Tensor | None = None, act: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms that are present; a zero λ drops its term. Returns (loss, logged terms)."""
    total, logged = None, {}
    for name, lam, term in (("task", lambdas[0], task), ("distill", lambdas[1], distill), ("act", lambdas[2], act)):
        if term is None or lam == 0:
            continue
        logged[name] = float(term.detach())
        total = lam * term if total is None else total + lam * term
    if total is None:
        raise ValueError("every loss term is off: set a positive λ")
    return total, logged
