"""Weight-space ensembles (WiSE-FT, Wortsman et al. 2022): θ_α = (1 − α)·θ0 + α·θ for every weight."""

from __future__ import annotations

import torch

from robustkd.trainer.student import Student


def interpolate(theta0: dict[str, torch.Tensor], theta: dict[str, torch.Tensor], alpha: float
                ) -> dict[str, torch.Tensor]:
    """(1 − α)·θ0 + α·θ for floating-point tensors; others (integer buffers) are taken from θ."""
    if theta0.keys() != theta.keys():
        raise ValueError("interpolate: the two state dicts hold different tensors")
    return {k: torch.lerp(theta0[k], v, alpha) if v.is_floating_point() else v.clone() for k, v in theta.items()}


def backbone_only_interpolation(student: Student, theta0_backbone: dict[str, torch.Tensor], alpha: float) -> None:
    """The first build's variant: only the backbone moves toward θ0; the fine-tuned head is kept."""
    with torch.no_grad():
        student.backbone.load_state_dict(interpolate(theta0_backbone, student.backbone.state_dict(), alpha))
