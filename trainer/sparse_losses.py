"""Token-level distillation losses from a generative cache: dense KL, top-k KL, and the sampled (RS-KD) estimator.

Each takes the student's logits at the response positions, [N, V], and the teacher's targets for those N tokens,
and returns the mean over tokens.

- dense: KL(p ‖ s) exactly.
- top-k: KL between the teacher and the student over k+1 outcomes: the k tokens and "any other token" (the rest's
  mass). It never exceeds the dense KL and is blind to how the student spreads the tail: a biased target.
- sampled: −Σ_i w_i log s_i with w_i = count_i/k · p_i/q_i, an unbiased estimate of p_i. Its expectation is the
  cross-entropy H(p, s) = KL(p ‖ s) + H(p): the dense loss up to the teacher's entropy, a constant, and its gradient
  is the dense gradient's unbiased estimate.
"""

from __future__ import annotations

import torch

from robustkd.shared.sparse import BatchTargets


def dense_kl(student_logits: torch.Tensor, teacher_logp: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    log_s = torch.log_softmax(student_logits.float(), -1)
    kl = (teacher_logp.exp() * (teacher_logp - log_s)).sum(-1)
    return kl if per_token else kl.mean()


def topk_kl(student_logits: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, rest: torch.Tensor,
            per_token: bool = False) -> torch.Tensor:
    log_s = torch.log_softmax(student_logits.float(), -1)
    log_s_k = log_s.gather(-1, ids)
    # the student's mass outside the teacher's k tokens, in log space: log(1 - Σ s_k), kept finite
    log_s_rest = torch.log1p(-log_s_k.exp().sum(-1).clamp(max=1 - 1e-6))
    p_k, p_rest = logp.exp(), rest.exp()
    kl = (p_k * (logp - log_s_k)).sum(-1) + torch.where(p_rest > 0, p_rest * (rest - log_s_rest), 0.0)
    return kl if per_token else kl.mean()


def sampled_ce(student_logits: torch.Tensor, token: torch.Tensor, ids: torch.Tensor,
               weight: torch.Tensor) -> torch.Tensor:
    """−Σ w log s over each token's draws, mean over the N tokens (`token` says which token a draw belongs to)."""
    log_s = torch.log_softmax(student_logits.float(), -1)
    return -(weight * log_s[token, ids]).sum() / student_logits.shape[0]


def sparse_kd_loss(student_logits: torch.Tensor, t: BatchTargets) -> torch.Tensor:
    """The loss of the targets' kind, for the student's logits at those N response tokens."""
    dev = student_logits.device
    if student_logits.shape[0] != t.n_tokens:
        raise ValueError(f"{student_logits.shape[0]} student positions for {t.n_tokens} teacher tokens")
    if t.kind == "dense":
        return dense_kl(student_logits, torch.from_numpy(t.logp).to(dev))
    if t.kind == "top-k":
        return topk_kl(student_logits, torch.from_numpy(t.ids).to(dev), torch.from_numpy(t.logp).to(dev),
                       torch.from_numpy(t.rest).to(dev))
    return sampled_ce(student_logits, torch.from_numpy(t.token).to(dev), torch.from_numpy(t.ids).to(dev),
                      torch.from_numpy(t.weight).to(dev))


def kl_per_token(student_logits: torch.Tensor, t: BatchTargets) -> torch.Tensor | None:
    """[N] KL(teacher ‖ student) per token, where the cache's kind gives one (dense: exact; top-k: over the k tokens
    and the rest, a lower bound); None for sampled targets, which estimate the cross-entropy only."""
    dev = student_logits.device
    if t.kind == "dense":
        return dense_kl(student_logits, torch.from_numpy(t.logp).to(dev), per_token=True)
    if t.kind == "top-k":
        return topk_kl(student_logits, torch.from_numpy(t.ids).to(dev), torch.from_numpy(t.logp).to(dev),
                       torch.from_numpy(t.rest).to(dev), per_token=True)
    return None
