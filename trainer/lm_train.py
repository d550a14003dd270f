"""One training step on a generative cache: next-token cross-entropy on clean responses (λ1), the sparse KD loss on
perturbed prompts' responses and on unrelated prompts' teacher answers (λ2), the activation distance (λ3). The
`Trainer` calls it for generative caches.

Sparse targets are the teacher's distribution at τ = 1 (a temperature would need the whole distribution), so
`--temperature` applies to classification caches only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustkd.shared.sparse import read_batch
from robustkd.trainer.lm_student import response_mask
from robustkd.trainer.sparse_losses import sparse_kd_loss
from robustkd.trainer.stream import concat_batches


class GenerativeError(ValueError):
    pass


def check_generative(cfg, student, manifest) -> None:  # noqa: ANN001
    """What a generative run cannot do, said before the first step."""
    if cfg.method == "online-kd":
        raise GenerativeError("method: online-kd is not implemented for generative caches; use ours")
    if cfg.lambda_act > 0 and student.lm.config.hidden_size != manifest.hidden_size:
        raise GenerativeError(f"lambda_act: the student's hidden size {student.lm.config.hidden_size} differs from "
                              f"the teacher's {manifest.hidden_size}; set --lambda-act 0")


def token_rows(positions: torch.Tensor) -> torch.Tensor:
    """For each True position (row-major), the row it belongs to."""
    return positions.nonzero()[:, 0]


def generative_step(tr, batch: dict) -> tuple[torch.Tensor, dict[str, float], int]:  # noqa: ANN001 - a Trainer
    """(loss, logged terms, rows used) of one batch; with `unlabelled_groups`, that many of the cache's unrelated
    prompts (the teacher's own answers) join it for the distillation and activation terms."""
    cfg, dev, m = tr.cfg, tr.device, tr.reader.manifest
    if tr.unlabelled is not None:
        batch = concat_batches(batch, next(tr.unlabelled), tr.pad_id)
    clean, labelled = batch["clean"], batch["labels"] >= 0
    task_sel = (clean if cfg.task_rows == "clean" else torch.ones_like(clean)) & labelled
    # distillation sees the perturbed task rows, and every unlabelled row on its clean prompt
    kd_sel = torch.ones_like(clean) if cfg.distill_clean else ~clean | ~labelled
    rows = torch.zeros_like(clean)
    if cfg.lambda_task > 0:
        rows |= task_sel
    if cfg.uses_teacher:
        rows |= kd_sel
    width = int(batch["attention_mask"][rows].sum(1).max())
    ids, mask = batch["input_ids"][rows][:, :width].to(dev), batch["attention_mask"][rows][:, :width].to(dev)
    positions = response_mask(mask, batch["prompt_len"][rows].to(dev))
    tr.student.train(cfg.dropout)
    logits, acts = tr.model(ids, mask, positions, with_layers=cfg.uses_teacher and cfg.lambda_act > 0)
    of_row = token_rows(positions)
    terms = {}
    if cfg.lambda_task > 0:
        next_ids = torch.roll(ids, -1, dims=1)[positions]  # the token each position predicts
        keep = task_sel[rows].to(dev)[of_row]
        terms["task"] = F.cross_entropy(logits[keep].float(), next_ids[keep])
    if cfg.uses_teacher:
        sel = kd_sel[rows].to(dev)
        if cfg.lambda_distill > 0:
            kd_rows = rows.nonzero()[:, 0][sel.cpu()]  # batch rows distilled, in order
            targets = read_batch(m.spec.sparse.kind, batch["sparse"].take(kd_rows.numpy()), m.spec.sparse.k)
            terms["distill"] = sparse_kd_loss(logits[sel[of_row]], targets)
        if cfg.lambda_act > 0:
            t_acts = {i: batch[f"t_layer_{i}"][rows].to(dev)[sel] for i in tr.student.layers}
            s_acts = {i: a[sel] for i, a in acts.items()}
            terms["act"] = tr.act_term(s_acts, t_acts)
    loss, logged = tr.total(terms)
    return loss, logged, int(rows.sum())
