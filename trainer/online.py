"""The teacher in memory (`online-kd`): the reference the cache must match. The only trainer module that
imports the teacher service's code."""

from __future__ import annotations

import torch

from robustkd.shared.features import head_logits
from robustkd.shared.reader import CacheReader
from robustkd.teacher_service.lm import load_teacher
from robustkd.trainer.student import model_path


class OnlineTeacher:
    """The same encoder code and head that wrote the cache, run on each batch."""

    def __init__(self, reader: CacheReader, model: str | None, device: torch.device) -> None:
        spec = reader.manifest.spec
        # the model the cache was made with (its weights hash checked); the cached ids hold any prompt
        self.enc = load_teacher(str(model_path(reader.manifest, model)), device=str(device))
        head = reader.read_head()
        self.w = torch.from_numpy(head["weight"]).to(device)
        self.b = torch.from_numpy(head["bias"]).to(device)
        self.layers, self.pooling = spec.teacher.layers, spec.teacher.pooling

    def targets(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        seqs = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]
        out = self.enc.forward_ids(seqs, self.layers, self.pooling)
        return head_logits(out.features, self.w, self.b), out.layers
