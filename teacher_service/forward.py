"""The teacher's forward over one shard's rows: length-sorted batches, pooled layers, class logits from the head.

Batches are cut per shard, so a shard's bytes do not depend on which pass or process computed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.heads import LinearHead

TOKENS_PER_BATCH = 8192  # forward batches are cut by padded tokens, after sorting by length


class Cancelled(RuntimeError):
    pass


def length_batches(lengths: list[int], tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `tokens` (default TOKENS_PER_BATCH) padded tokens."""
    tokens = tokens or TOKENS_PER_BATCH
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class Outputs:
    """The teacher's raw outputs for the rows of one shard, in row order."""

    features: np.ndarray               # [n, D] pooled last layer (the head's input)
    layers: dict[int, np.ndarray]      # layer -> [n, D]
    logits: np.ndarray | None          # [n, C] from the model's own head, if it has one
    columns: dict[str, pa.Array] = field(default_factory=dict)  # extra row columns (a generative cache's targets)


class Forward:
    """Runs the teacher over a shard's rows in length-sorted batches; the head turns features into logits."""

    def __init__(self, spec: CacheSpec, enc,  # noqa: ANN001 - an Encoder or a CausalLM
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.spec, self.enc = spec, enc
        self.should_stop = should_stop or (lambda: False)
        self.layers = spec.teacher.layers
        self.head: LinearHead | None = None
        self.seconds = 0.0

    def run(self, rows: pa.Table) -> Outputs:
        seqs = rows.column("input_ids").to_pylist()
        n = len(seqs)
        t0 = time.perf_counter()
        feats = np.zeros((n, self.enc.hidden_size), np.float32)
        layers = {k: np.zeros((n, self.enc.hidden_size), np.float32) for k in self.layers}
        logits = None
        for batch in length_batches([len(s) for s in seqs]):
            self.check_stop()
            out = self.enc.forward_ids([seqs[i] for i in batch], self.layers, self.spec.teacher.pooling)
            feats[batch] = out.features.cpu().numpy()
            for k in self.layers:
                layers[k][batch] = out.layers[k].cpu().numpy()
            if out.logits is not None:
                if logits is None:
                    logits = np.zeros((n, out.logits.shape[1]), np.float32)
                logits[batch] = out.logits.cpu().numpy()
        self.seconds += time.perf_counter() - t0
        return Outputs(feats, layers, logits)

    def check_stop(self) -> None:
        """Asked before every batch: a cancel does not wait for a large shard to finish."""
        if self.should_stop():
            raise Cancelled("cancelled")

    def targets(self, out: Outputs) -> dict[str, np.ndarray]:
        logits = self.head.logits(out.features) if self.head is not None else out.logits
        arrays = {layout.layer_array(k): out.layers[k] for k in self.layers}
        return arrays if logits is None else {"logits": logits.astype(np.float32), **arrays}

    def timings(self) -> dict[str, float]:
        """What the forward did besides it, for the manifest's timings (a generative cache's answer generation)."""
        return {}

    @staticmethod
    def with_columns(rows: pa.Table, out: Outputs) -> pa.Table:
        """The rows as written: the forward's extra columns added, or in place of those it rewrote."""
        for name, col in out.columns.items():
            i = rows.schema.get_field_index(name)
            rows = rows.set_column(i, name, col) if i >= 0 else rows.append_column(name, col)
        return rows
