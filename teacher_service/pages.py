"""What the dashboard's pages show, gathered from the job manager (its public methods), the cache store and
the run registry. Plain data for the templates; nothing here renders HTML."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from robustkd.shared import layout, methods, registry
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import JobStatus
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.jobs import JOBS_DIR, JobManager
from robustkd.teacher_service.store import Store

SAMPLE_GROUPS = 4  # train examples shown with their perturbed variants on a cache's page
FINISHED_JOBS_SHOWN = 50
SERVED_SUFFIXES = (".png", ".svg", ".md", ".json")  # files of a registered bench folder the dashboard serves
# run table columns: (key, header, number format); the metrics are registry.METRICS and COSTS
RUN_COLUMNS = (("name", "run", None), ("seed", "seed", None), ("cache", "cache", None),
               ("id_acc", "ID acc", ".3f"), ("id_f1", "ID F1", ".3f"), ("id_bal_acc", "ID bal. acc", ".3f"),
               ("ood_acc", "OOD acc", ".3f"), ("ood_f1", "OOD F1", ".3f"), ("ood_bal_acc", "OOD bal. acc", ".3f"),
               ("ood_auroc", "OOD AUROC", ".3f"), ("ood_ece", "OOD ECE", ".3f"),
               ("heldout_acc", "held-out pert. acc", ".3f"), ("train_s", "train s", ".0f"),
               ("peak_rss_mb", "peak RSS MB", ".0f"), ("created_at", "recorded", None))
SORTABLE = tuple(c[0] for c in RUN_COLUMNS)


def columns(cache: bool = True) -> tuple[tuple[str, str, str | None], ...]:
    """The run table's columns; without the cache column where every row has the same cache."""
    return tuple(c for c in RUN_COLUMNS if cache or c[0] != "cache")


class PageError(ValueError):
    """Bad input to a page (an unknown column, a malformed key): shown as a 400 page with this message."""


def short(key: str) -> str:
    return key[:12]


def recipe(spec: CacheSpec) -> str:
    p = spec.perturbations
    text = f"{', '.join(p.transforms)}; {p.variants} variants at severities {', '.join(map(str, p.severities))}"
    return text + (f"; held-out: {', '.join(p.heldout_transforms)}" if p.heldout_transforms else "")


def method_summary(run: registry.RunRecord) -> str | None:
    """What the run is, from the method table (`robustkd.shared.methods`); None for a recipe it does not know. A
    WiSE point's record holds the config of the run it interpolates."""
    name = methods.display_name(run.config)
    return methods.summary(name if run.alpha is None else methods.wise_point(name, run.alpha))


def cache_rows(jobs: JobManager, root: Store, runs: list[registry.RunRecord]) -> list[dict]:
    """One row per complete cache, newest first."""
    students = Counter(r.cache_key for r in runs if r.alpha is None)
    rows = []
    for summary in jobs.list_caches():
        status = jobs.status(summary.key)
        m = status.manifest if status else None
        if m is None:
            continue
        size = root.child(m.key).size_bytes()
        rows.append({"key": m.key, "short": short(m.key), "model": summary.model,
                     "task": m.spec.task.name, "head": m.spec.teacher.head, "recipe": recipe(m.spec),
                     "splits": {s: r.stop - r.start for s, r in m.splits.items()}, "rows": m.n_rows, "bytes": size,
                     "bytes_per_row": size / max(1, m.n_rows), "state": "complete" if m.complete else status.state,
                     "created_at": m.created_at, "students": students[m.key]})
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)


def hide_root(path: str, root: Store) -> str:
    """A path or message as a page shows it: the cache root's absolute path (a local root) as `<cache root>`,
    as the API's answers do; any other path as recorded."""
    if not root.local:
        return path
    for form in {str(Path(root.path).expanduser().absolute()), os.path.realpath(root.path)}:
        path = path.replace(form, "<cache root>")
    return path


def splits(m: layout.Manifest) -> list[dict]:
    """Per split: rows, groups, and the class balance of its clean rows (manifest.label_counts)."""
    out = []
    for name, r in m.splits.items():
        counts = m.label_counts.get(name) or []
        total = sum(counts)
        out.append({"name": name, "rows": r.stop - r.start, "groups": r.groups, "group_size": r.group_size,
                    "classes": [{"label": label, "count": c, "share": c / total if total else 0.0}
                                for label, c in zip(m.label_names, counts, strict=False)]})
    return out


def teacher_facts(spec: CacheSpec) -> list[str]:
    """What a causal-LM teacher adds to the spec (prompt, label words, calibration) and a generative cache's
    per-token targets; nothing for an encoder's classification cache."""
    t, out = spec.teacher, []
    if t.family == "causal-lm":
        out.append(f"causal LM, prompt template {t.prompt!r}" if t.prompt else "causal LM")
        if t.label_words:
            out.append(f"label words {', '.join(t.label_words)} (calibration: {t.calibration})")
    if (sp := spec.sparse) is not None:
        what = {"top-k": f"the top {sp.k} tokens and the rest's mass",
                "sampled": f"{sp.k} draws at τ {sp.temperature:g} (seed {sp.seed})",
                "dense": "every log-probability"}[sp.kind]
        out.append(f"per response token: {what}; {sp.index_dtype} ids, {sp.value_dtype} values; responses cut to "
                   f"{sp.max_response_tokens} tokens")
    return out


def sample(location: str, m: layout.Manifest, n_groups: int = SAMPLE_GROUPS) -> list[list[dict]]:
    """The first train examples, each clean row followed by its perturbed variants, with the teacher's
    probability of the true label (read and checksum-verified like any other read); a generative cache's rows
    with their response instead (its targets are per token, not per class)."""
    r = m.splits.get("train")
    if r is None or r.stop == r.start:
        return []
    shard = CacheReader(location).read_rows(r.start, min(r.stop, r.start + n_groups * r.group_size))
    if "logits" not in shard.targets:
        groups_: dict[int, list[dict]] = {}
        for row in shard.rows.to_pylist():
            groups_.setdefault(row["parent_id"], []).append({
                "id": row["example_id"], "perturbation": row["perturbation"], "severity": row["severity"],
                "text": row["text"], "response": row.get("response"), "label": None, "p_label": None})
        return list(groups_.values())
    logits = shard.targets["logits"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    groups: dict[int, list[dict]] = {}
    for i, row in enumerate(shard.rows.to_pylist()):
        label = row["label"]
        groups.setdefault(row["parent_id"], []).append({
            "id": row["example_id"], "perturbation": row["perturbation"], "severity": row["severity"],
            "text": row["text"], "label": m.label_names[label] if 0 <= label < len(m.label_names) else "–",
            "p_label": float(probs[i, label]) if 0 <= label < probs.shape[1] else None,
            "predicted": m.label_names[int(probs[i].argmax())]})
    return list(groups.values())


def job_rows(jobs: JobManager, root: Store) -> list[JobStatus]:
    """Running, then queued (by position), then the latest finished jobs: live state from `JobManager.status`."""
    keys = [n[:-5] for n in root.list(JOBS_DIR) if n.endswith(".json") and layout.is_key(n[:-5])]
    found = [j for k in keys if (j := jobs.status(k)) is not None]
    order = {"running": 0, "cancelling": 0, "queued": 1}
    active = sorted((j for j in found if j.state in order), key=lambda j: (order[j.state], j.position or 0))
    done = sorted((j for j in found if j.state not in order), key=lambda j: j.submitted_at or "", reverse=True)
    return active + done[:FINISHED_JOBS_SHOWN]


def run_rows(runs: list[registry.RunRecord], benches: list[registry.BenchRecord]) -> list[dict]:
    """The run table's rows: headline metrics and cost of each run, the benches it belongs to."""
    member_of: dict[str, list[registry.BenchRecord]] = {}
    for b in benches:
        for member in b.runs:
            member_of.setdefault(member.run_id, []).append(b)
    return [{"id": r.id, "name": r.name, "seed": r.seed, "alpha": r.alpha, "cache": short(r.cache_key),
             "cache_key": r.cache_key, "created_at": r.created_at, "benches": member_of.get(r.id, []),
             **r.headline()} for r in runs]


def sort_rows(rows: list[dict], column: str, descending: bool) -> list[dict]:
    """Rows sorted by `column`, missing values last whichever the direction."""
    if column not in SORTABLE:
        raise PageError(f"sort: unknown column {column!r} (one of {', '.join(SORTABLE)})")

    def missing(r: dict) -> bool:
        v = r.get(column)
        return v is None or (isinstance(v, float) and math.isnan(v))

    have = sorted((r for r in rows if not missing(r)), key=lambda r: r[column], reverse=descending)
    return have + [r for r in rows if missing(r)]


def bench_file(bench: registry.BenchRecord, name: str) -> Path | None:
    """A regular file directly inside a registered bench folder (an absolute path) with a served suffix; None for
    anything else (other folders, `..`, links leading out of the folder, hidden files, FIFOs)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or Path(name).suffix not in SERVED_SUFFIXES:
        return None
    if not Path(bench.folder).is_absolute():  # "" would be the service's working directory
        return None
    try:
        folder = Path(bench.folder).resolve()
        path = (folder / name).resolve()
        return path if path.parent == folder and path.is_file() else None
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return None
