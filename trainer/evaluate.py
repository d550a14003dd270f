"""Evaluation of a student on the cache's evaluation splits (and of the un-tuned teacher from its cached logits).

Everything evaluated is in the cache: ID `test`, OOD `ood_test`, `test_heldout` (test rows perturbed by
transforms the training recipe never used), and `validation` / `validation_heldout` (what hyper-parameters and
the OOD proxy are judged on), token ids included, so evaluation needs neither the perturbation code nor a
tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from robustkd.shared.features import pad_batch
from robustkd.shared.reader import CacheReader, Shard
from robustkd.trainer.metrics import activation_drift, classification_metrics
from robustkd.trainer.student import Student

EVAL_SPLITS = ("test", "ood_test", "test_heldout", "validation", "validation_heldout")


@torch.no_grad()
def predict(student: Student, seqs: list[list[int]], pad_id: int, batch_size: int = 64,
            with_layers: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Logits (and pooled captured layers) of the student in eval mode, batched by sorted length."""
    student.eval()
    device = next(student.parameters()).device
    order = np.argsort([len(s) for s in seqs], kind="stable")
    logits_out = np.zeros((len(seqs), student.head.out_features), np.float32)
    acts_out: dict[int, np.ndarray] = {}
    for i in range(0, len(seqs), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = pad_batch([seqs[j] for j in idx], pad_id)
        logits, acts = student(ids.to(device), mask.to(device), with_layers=with_layers)
        logits_out[idx] = logits.float().cpu().numpy()
        for k, a in acts.items():
            acts_out.setdefault(k, np.zeros((len(seqs), a.shape[1]), np.float32))[idx] = a.float().cpu().numpy()
    return logits_out, acts_out


def labels_of(shard: Shard) -> np.ndarray:
    return np.asarray(shard.rows.column("label").to_pylist())


def eval_splits(reader: CacheReader) -> list[str]:
    return [s for s in EVAL_SPLITS if s in reader.manifest.splits]


def evaluate_split(student: Student, reader: CacheReader, split: str, pad_id: int,
                   predictions: dict | None = None, drift: bool = False) -> dict:
    """Metrics of the student on the clean rows of `split` (+ activation drift against the teacher's)."""
    shard = reader.read_clean(split)
    logits, acts = predict(student, shard.rows.column("input_ids").to_pylist(), pad_id, with_layers=drift)
    out = classification_metrics(logits, labels_of(shard), reader.manifest.label_names)
    if acts:
        out["activation_drift"] = activation_drift(acts, shard.targets)
    if predictions is not None:
        predictions[split] = logits
    return out


def evaluate_student(student: Student, reader: CacheReader, pad_id: int, predictions: dict | None = None) -> dict:
    """Metrics on every evaluation split (+ activation drift on OOD rows). Raw logits go into `predictions` when
    passed (for paired bootstraps)."""
    return {split: evaluate_split(student, reader, split, pad_id, predictions, drift=split == "ood_test")
            for split in eval_splits(reader)}


def evaluate_teacher(reader: CacheReader, splits: list[str] | None = None) -> dict:
    """The un-tuned teacher with its cached head: metrics from the cached logits."""
    out = {}
    for split in splits or eval_splits(reader):
        shard = reader.read_clean(split)
        out[split] = classification_metrics(shard.targets["logits"], labels_of(shard), reader.manifest.label_names)
    return out


def write_metrics(run: Path, student: Student, reader: CacheReader, pad_id: int, transfer: str | None = None,
                  max_rows: int | None = None) -> dict:
    """Evaluate a student (and the teacher) into `run/metrics.json`; logits into `run/predictions.npz`.

    A generative cache's student gets NLL, perplexity, accuracy and exact match instead (no teacher figures: the
    cache holds sparse targets, not the teacher's answers), what it kept of the teacher on the cache's unrelated
    prompts, and its zero-shot accuracy on the `transfer` cache's test rows (`trainer.forgetting`); per-row
    figures in predictions.npz; `max_rows` caps the rows of each split it evaluates."""
    preds: dict[str, np.ndarray] = {}
    if reader.manifest.spec.generative:
        from robustkd.trainer.forgetting import generative_metrics

        metrics, preds = generative_metrics(student, reader, pad_id, transfer, max_rows)
    else:
        metrics = {"student": evaluate_student(student, reader, pad_id, preds), "teacher": evaluate_teacher(reader),
                   "cache_key": reader.key, "label_names": reader.manifest.label_names}
    summary = run / "train_summary.json"
    if summary.exists():
        metrics["train"] = json.loads(summary.read_text())
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    np.savez(run / "predictions.npz", **preds)
    return metrics
