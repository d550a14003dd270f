"""A response's teacher targets from its next-token log-probabilities: top-k, importance-sampled (RS-KD) or dense.

Top-k keeps the k most likely tokens and the log of the mass outside them: a biased target (the tail is lost).
Sampled draws k tokens from q ∝ p^(1/τ) and keeps the distinct ids with their counts (and log p/q when τ != 1):
count/k · p/q is an unbiased estimate of p (Anshumann et al., ACL 2025). The draws of a row use their own
seeded generator, so a row's targets do not depend on its batch or on which process computed it.
"""

from __future__ import annotations

import numpy as np
import torch

from robustkd.shared.seeding import numpy_rng
from robustkd.shared.sparse import TokenTargets


def top_k(logp: torch.Tensor, k: int) -> TokenTargets:
    """[T, V] log-probs -> the k most likely ids, their log-probs, and log of the rest's mass."""
    vals, ids = torch.topk(logp, k, dim=-1)
    rest = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)  # exact even when the rest is tiny
    return TokenTargets(ids.numpy(), vals.numpy(), rest=rest.numpy())


def sampled(logp: torch.Tensor, k: int, temperature: float, *seed: object) -> TokenTargets:
    """[T, V] log-probs -> per token the distinct ids among k draws from q ∝ p^(1/τ), their counts (and log p/q)."""
    rng = numpy_rng("sparse", *seed)
    logq = torch.log_softmax(logp.double() / temperature, -1)
    q = logq.exp().numpy()
    ids, counts, logw = [], [], []
    for t in range(q.shape[0]):
        c = rng.multinomial(k, q[t] / q[t].sum())
        nz = np.flatnonzero(c)
        ids.append(nz)
        counts.append(c[nz])
        logw.append((logp[t].double() - logq[t]).numpy()[nz])
    return TokenTargets(ids, counts, logw=logw if temperature != 1.0 else None)


def dense(logp: torch.Tensor) -> TokenTargets:
    return TokenTargets(None, logp.numpy())


def targets(kind: str, logp: torch.Tensor, k: int, temperature: float, *seed: object) -> TokenTargets:
    """One row's targets of the spec's kind from its [T, V] next-token log-probs (float32, CPU)."""
    if kind == "top-k":
        return top_k(logp, k)
    if kind == "sampled":
        return sampled(logp, k, temperature, *seed)
    return dense(logp)
