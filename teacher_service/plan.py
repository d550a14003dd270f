"""Plan a cache: which task example, in which variant, lands at which row; and the text of each row.

Row order and grouping follow `robustkd.shared.layout`: the splits in `SPLITS` order; in `train`, `validation`
and `unlabelled` each clean row is followed by its recipe variants; the held-out splits repeat each clean
validation / test row once, perturbed by a held-out transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service import perturb
from robustkd.teacher_service.taskdata import Example, TaskData

HELDOUT_TAG = "heldout"  # salt of the held-out transform choice: independent of the recipe's draws


@dataclass(frozen=True)
class RowRef:
    example: int   # index into task.examples
    variant: int   # 0 = the clean text (or the held-out perturbation in a held-out split)
    split: str     # the cache split the row belongs to
    parent: int    # cache row of the clean row of its group


@dataclass
class Plan:
    refs: list[RowRef]
    splits: dict[str, layout.SplitRange]
    shard_rows: int

    @property
    def n_rows(self) -> int:
        return len(self.refs)

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.shard_rows, min(self.n_rows, (k + 1) * self.shard_rows)

    def shards_through(self, split: str) -> list[int]:
        """Shards 0.. up to the one holding the last row of `split`."""
        return list(range(-(-self.splits[split].stop // self.shard_rows)))


def plan(spec: CacheSpec, task: TaskData) -> Plan:
    refs: list[RowRef] = []
    splits: dict[str, layout.SplitRange] = {}
    index = {id(e): i for i, e in enumerate(task.examples)}
    clean_row: dict[int, int] = {}  # example index -> its clean cache row
    for split in layout.SPLITS:
        start = len(refs)
        if split in layout.HELDOUT_OF:
            base = splits[layout.HELDOUT_OF[split]]
            for row in base.clean_rows():
                refs.append(RowRef(refs[row].example, 0, split, row))
            splits[split] = layout.SplitRange(start=start, stop=len(refs), group_size=1)
            continue
        if split in layout.OPTIONAL_SPLITS and not task.split(split):
            continue
        v = spec.perturbations.variants if split in spec.perturbations.splits else 0
        for ex in task.split(split):
            i = index[id(ex)]
            clean_row[i] = len(refs)
            refs.extend(RowRef(i, j, split, clean_row[i]) for j in range(v + 1))
        if start % (v + 1):
            raise AssertionError(f"split {split} starts at row {start}: its groups of {v + 1} would straddle shards")
        splits[split] = layout.SplitRange(start=start, stop=len(refs), group_size=v + 1)
    return Plan(refs, splits, spec.shard_rows)


def label_counts(task: TaskData, p: Plan, n_labels: int) -> dict[str, list[int]]:
    """Clean rows per class in each labelled split of the plan."""
    out = {}
    for split, r in p.splits.items():
        labels = [task.examples[p.refs[row].example].label for row in r.clean_rows()]
        if split not in layout.OPTIONAL_SPLITS:
            out[split] = [labels.count(c) for c in range(n_labels)]
    return out


def row_text(spec: CacheSpec, ex: Example, ref: RowRef, ctx: perturb.PerturbContext) -> tuple[str, str, int]:
    """(text, transform, severity) of a row; reproducible from (seed, source_id, variant or split) alone."""
    p = spec.perturbations
    if ref.split in layout.HELDOUT_OF:
        if not p.heldout_transforms:
            return ex.text, layout.CLEAN, 0
        name = perturb.transform_rng(p.seed, ex.source_id, HELDOUT_TAG).choice(p.heldout_transforms)
        out = perturb.apply(name, ex.text, seed=p.seed, example_id=ex.source_id, severity=p.heldout_severity,
                            variant=0, ctx=ctx)
        return out, name, p.heldout_severity
    if ref.variant == 0:
        return ex.text, layout.CLEAN, 0
    rng = perturb.transform_rng(p.seed, ex.source_id, "recipe", ref.variant)
    name = rng.choice(p.transforms)
    severity = rng.choice(p.severities)
    out = perturb.apply(name, ex.text, seed=p.seed, example_id=ex.source_id, severity=severity,
                        variant=ref.variant, ctx=ctx)
    return out, name, severity


def prepare_shard(spec: CacheSpec, task: TaskData, p: Plan, k: int, tokenize, ctx: perturb.PerturbContext  # noqa: ANN001
                  ) -> pa.Table:
    """Shard k's rows: text (perturbed where the plan says), token ids and labels, as ROWS_SCHEMA."""
    cols: dict[str, list] = {f.name: [] for f in layout.ROWS_SCHEMA}
    start, stop = p.bounds(k)
    for row in range(start, stop):
        ref = p.refs[row]
        ex = task.examples[ref.example]
        text, name, sev = row_text(spec, ex, ref, ctx)
        cols["example_id"].append(row)
        cols["source_id"].append(ex.source_id)
        cols["split"].append(ref.split)
        cols["domain"].append(ex.domain)
        cols["perturbation"].append(name)
        cols["severity"].append(sev)
        cols["variant"].append(ref.variant)
        cols["parent_id"].append(ref.parent)
        cols["text"].append(text)
        cols["label"].append(ex.label)
    cols["input_ids"] = tokenize(cols["text"], spec.teacher.max_length)
    return pa.table(cols, schema=layout.ROWS_SCHEMA)
