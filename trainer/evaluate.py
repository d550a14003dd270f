"""Evaluation: ID and OOD metrics of a trained student (and of the un-tuned teacher from its cached logits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from shared.layout import CacheReader, Shard
from shared.pooling import pad_batch
from trainer.student import Student

EVAL_SPLITS = ("test", "ood_test")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class F1, confusion, AUROC, predicted vs true class rates, ECE."""
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    k = len(label_names)
    probs = softmax(logits.astype(np.float64))
    pred = probs.argmax(1)
    out = {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "per_class_f1": dict(zip(label_names, map(float, f1_score(labels, pred, average=None, labels=list(range(k)),
                                                                   zero_division=0)), strict=True)),
        "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
        "predicted_rate": {n: float((pred == i).mean()) for i, n in enumerate(label_names)},
        "true_rate": {n: float((labels == i).mean()) for i, n in enumerate(label_names)},
        "ece": expected_calibration_error(probs, labels),
    }
    present = np.unique(labels)
    if len(present) == k:
        out["auroc"] = float(roc_auc_score(labels, probs[:, 1]) if k == 2 else
                             roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    return out


@torch.no_grad()
def predict(student: Student, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of the student (eval mode) on token id lists, batched by sorted length."""
    student.eval()
    device = next(student.parameters()).device
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(seqs), student.head.out_features), np.float32)
    for i in range(0, len(seqs), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = pad_batch([seqs[j] for j in idx], pad_id)
        logits, _ = student(ids.to(device), mask.to(device), with_layers=False)
        out[idx] = logits.float().cpu().numpy()
    return out


@torch.no_grad()
def activation_drift(student: Student, shard: Shard, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Mean ‖a_i^student − a_i^teacher‖₂ / mean ‖a_i^teacher‖₂ per cached layer on some rows."""
    student.eval()
    device = next(student.parameters()).device
    seqs = shard.rows.column("input_ids").to_pylist()
    sums = {i: 0.0 for i in student.layers}
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[s:s + batch_size], pad_id)
        _, acts = student(ids.to(device), mask.to(device))
        for i, a in acts.items():
            t = torch.from_numpy(shard.targets[f"layer_{i}"][s:s + batch_size]).to(device)
            sums[i] += float(torch.linalg.vector_norm(a.float() - t, dim=-1).sum())
    return {str(i): sums[i] / len(seqs) / float(np.linalg.norm(shard.targets[f"layer_{i}"], axis=1).mean())
            for i in student.layers}


def split_labels(shard: Shard) -> np.ndarray:
    return np.asarray(shard.rows.column("label").to_pylist())


def evaluate_student(student: Student, reader: CacheReader, pad_id: int) -> dict:
    names = reader.manifest.label_names
    out = {}
    for split in EVAL_SPLITS:
        shard = reader.read_split(split)
        logits = predict(student, shard.rows.column("input_ids").to_pylist(), pad_id)
        out[split] = classification_metrics(logits, split_labels(shard), names)
    return out


def evaluate_teacher(reader: CacheReader) -> dict:
    """The un-tuned teacher with its cached head: metrics from the cached logits."""
    names = reader.manifest.label_names
    out = {}
    for split in EVAL_SPLITS:
        shard = reader.read_split(split)
        out[split] = classification_metrics(shard.targets["logits"], split_labels(shard), names)
    return out


def write_metrics(run: Path, student: Student, reader: CacheReader, pad_id: int) -> dict:
    """Evaluate a student (and the teacher) on the ID and OOD test splits into `run/metrics.json`."""
    metrics = {"student": evaluate_student(student, reader, pad_id), "teacher": evaluate_teacher(reader),
               "cache_key": reader.key, "label_names": reader.manifest.label_names}
    summary = run / "train_summary.json"
    if summary.exists():
        metrics["train"] = json.loads(summary.read_text())
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def evaluate_run(run: str | Path, device: str | None = None) -> dict:
    """Load a run's final checkpoint and write its `metrics.json`."""
    from trainer.train import TrainConfig, Trainer, load_student

    run = Path(run)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    cfg_dict = json.loads((run / "config.json").read_text())
    cfg_dict.pop("cache_key", None)
    cfg = TrainConfig(**{**cfg_dict, "resume": False})
    if cfg.method == "online-kd":
        cfg.method = "ours"  # evaluation needs no teacher in memory
    tr = Trainer(cfg, device=device)
    load_student(tr.student, run / "checkpoint", tr.cfg.adapter)
    return write_metrics(run, tr.student, tr.reader, tr.pad_id)
