"""Generative caches: rows of prompt + response ids, and the teacher's sparse next-token targets per response token.

Perturbations apply to the prompt's text only; the response is the same in every variant, so the student is
taught what the teacher answers to a perturbed prompt. The targets go into the shard's rows file as list columns
(`robustkd.shared.sparse`), pooled layers into zarr as for classification.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.sparse import to_columns
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service import perturb
from robustkd.teacher_service.forward import Forward, Outputs, length_batches
from robustkd.teacher_service.lm import CausalLM
from robustkd.teacher_service.plan import Plan, prepare_shard
from robustkd.teacher_service.sparse import targets as token_targets
from robustkd.teacher_service.taskdata import TaskData


def prepare_generative(spec: CacheSpec, task: TaskData, p: Plan, k: int, lm: CausalLM,
                       ctx: perturb.PerturbContext) -> pa.Table:
    """Shard k's rows: the (perturbed) prompt text, the response, and prompt + response + EOS token ids. An unrelated
    prompt (no response: the teacher answers it in `TokenForward`) gets the prompt's ids alone and a null response."""
    rows = prepare_shard(spec, task, p, k, lambda texts, _: [[] for _ in texts], ctx)
    start, stop = p.bounds(k)
    responses = [task.examples[p.refs[r].example].response for r in range(start, stop)]
    texts = rows.column("text").to_pylist()
    ids: list[list[int]] = [[] for _ in texts]
    lens = [0] * len(texts)
    answered = [i for i, r in enumerate(responses) if r is not None]
    if answered:
        pairs = lm.encode_pairs(spec.teacher.prompt, [texts[i] for i in answered], [responses[i] for i in answered],
                                spec.teacher.max_length, spec.sparse.max_response_tokens)
        for i, seq, n in zip(answered, *pairs, strict=True):
            ids[i], lens[i] = seq, n
    asked = [i for i, r in enumerate(responses) if r is None]
    if asked:
        g = spec.general
        prompts = lm.encode_prompts(g.prompt, [texts[i] for i in asked], spec.teacher.max_length - g.max_new_tokens)
        for i, seq in zip(asked, prompts, strict=True):
            ids[i], lens[i] = seq, len(seq)
    rows = rows.set_column(rows.schema.get_field_index("input_ids"), "input_ids",
                           pa.array(ids, pa.list_(pa.int32())))
    return rows.append_column(layout.GENERATIVE_FIELDS[0], pa.array(lens, pa.int32())) \
               .append_column(layout.GENERATIVE_FIELDS[1], pa.array(responses, pa.string()))


class TokenForward(Forward):
    """The forward of a generative cache: the teacher's own answers to unrelated prompts (greedy, batched), then
    pooled layers and each response token's sparse targets."""

    generate_s, generated_rows = 0.0, 0

    def answer(self, rows: pa.Table) -> dict[str, pa.Array]:
        """The rows' `input_ids` and `response` with the teacher's answer to each unrelated prompt ({} if none)."""
        responses = rows.column("response").to_pylist()
        asked = [i for i, r in enumerate(responses) if r is None]
        if not asked:
            return {}
        t0 = time.perf_counter()
        seqs = rows.column("input_ids").to_pylist()
        answers = self.enc.generate([seqs[i] for i in asked], self.spec.general.max_new_tokens, self.check_stop)
        for i, a in zip(asked, answers, strict=True):
            seqs[i] = seqs[i] + a
            responses[i] = self.enc.tokenizer.decode(a, skip_special_tokens=True).strip()
        self.generate_s += time.perf_counter() - t0
        self.generated_rows += len(asked)
        return {"input_ids": pa.array(seqs, pa.list_(pa.int32())), "response": pa.array(responses, pa.string())}

    def timings(self) -> dict[str, float]:
        return {"generate_s": round(self.generate_s, 3), "generated_rows": self.generated_rows} \
            if self.generated_rows else {}

    def run(self, rows: pa.Table) -> Outputs:
        sp = self.spec.sparse
        answered = self.answer(rows)
        seqs = (answered["input_ids"] if answered else rows.column("input_ids")).to_pylist()
        lens = rows.column("prompt_len").to_pylist()
        row_ids = rows.column("example_id").to_pylist()
        n, d = len(seqs), self.enc.hidden_size
        t0 = time.perf_counter()
        feats = np.zeros((n, d), np.float32)
        layers = {i: np.zeros((n, d), np.float32) for i in self.layers}
        per_row: list = [None] * n
        for batch in length_batches([len(s) for s in seqs]):
            self.check_stop()
            out, logps = self.enc.forward_tokens([seqs[i] for i in batch], [lens[i] for i in batch], self.layers,
                                                 self.spec.teacher.pooling)
            feats[batch] = out.features.cpu().numpy()
            for i in self.layers:
                layers[i][batch] = out.layers[i].cpu().numpy()
            for j, logp in zip(batch, logps, strict=True):
                # each row's draws have their own seed: its bytes do not depend on its batch
                per_row[j] = token_targets(sp.kind, logp, sp.k, sp.temperature, sp.seed, row_ids[j])
        columns = to_columns(sp.kind, per_row, sp.k, self.enc.vocab_size, sp.index_dtype)
        self.seconds += time.perf_counter() - t0
        return Outputs(feats, layers, None, {**answered, **columns})
