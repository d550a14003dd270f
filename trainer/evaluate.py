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


def activation_drift(acts: dict[int, np.ndarray], teacher: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer: mean ‖a^student − a^teacher‖₂ relative to the teacher's mean norm (0 = no drift)."""
    out = {}
    for i, a in acts.items():
        t = teacher[f"layer_{i}"]
        out[str(i)] = float(np.linalg.norm(a - t, axis=1).mean() / np.linalg.norm(t, axis=1).mean())
    return out


def heldout_transforms(reader: CacheReader) -> list[str]:
    """Transforms the cache's training recipe never used (and that need no model resources)."""
    from teacher_service import perturb

    used = set(reader.manifest.cache_spec().perturbations.transforms)
    return sorted(n for n, t in perturb.REGISTRY.items() if n not in used and not t.needs)


def perturbed_split(reader: CacheReader, split: str, tokenizer, transforms: list[str], severity: int = 3,  # noqa: ANN001
                    seed: int = 12345) -> tuple[list[list[int]], np.ndarray, list[str]]:
    """Clean rows of a split, each perturbed by one held-out transform (chosen per row, seeded)."""
    from teacher_service import perturb

    shard = reader.read_split(split)
    r = reader.manifest.splits[split]
    keep = np.arange(0, r.stop - r.start, r.group_size)
    texts = [shard.rows.column("text")[int(i)].as_py() for i in keep]
    sids = [shard.rows.column("source_id")[int(i)].as_py() for i in keep]
    labels = np.asarray(shard.rows.column("label").to_numpy())[keep]
    out, names = [], []
    for sid, text in zip(sids, texts, strict=True):
        name = perturb.transform_rng(seed, sid, "heldout").choice(transforms)
        out.append(perturb.apply(name, text, seed=seed, example_id=sid, severity=severity))
        names.append(name)
    max_len = reader.manifest.cache_spec().teacher.max_length
    return tokenizer(out, truncation=True, max_length=max_len)["input_ids"], labels, names


def split_labels(shard: Shard) -> np.ndarray:
    return np.asarray(shard.rows.column("label").to_pylist())


def evaluate_student(student: Student, reader: CacheReader, pad_id: int, tokenizer=None,  # noqa: ANN001
                     predictions: dict | None = None) -> dict:
    """ID test and OOD test metrics (+ activation drift on OOD rows, + held-out perturbations when a
    tokenizer is given). Raw logits go into `predictions` when passed (for paired bootstraps)."""
    names = reader.manifest.label_names
    out = {}
    for split in EVAL_SPLITS:
        shard = reader.read_split(split)
        logits, acts = predict(student, shard.rows.column("input_ids").to_pylist(), pad_id,
                               with_layers=split == "ood_test")
        out[split] = classification_metrics(logits, split_labels(shard), names)
        if acts:
            out[split]["activation_drift"] = activation_drift(acts, shard.targets)
        if predictions is not None:
            predictions[split] = logits
    if tokenizer is not None:
        transforms = heldout_transforms(reader)
        seqs, labels, _ = perturbed_split(reader, "test", tokenizer, transforms)
        logits, _ = predict(student, seqs, pad_id)
        out["test_heldout_perturbed"] = {**classification_metrics(logits, labels, names), "transforms": transforms}
        if predictions is not None:
            predictions["test_heldout_perturbed"] = logits
    return out


def evaluate_teacher(reader: CacheReader) -> dict:
    """The un-tuned teacher with its cached head: metrics from the cached logits."""
    names = reader.manifest.label_names
    out = {}
    for split in EVAL_SPLITS:
        shard = reader.read_split(split)
        out[split] = classification_metrics(shard.targets["logits"], split_labels(shard), names)
    return out


def write_metrics(run: Path, student: Student, reader: CacheReader, pad_id: int, tokenizer=None) -> dict:  # noqa: ANN001
    """Evaluate a student (and the teacher) into `run/metrics.json`; logits into `run/predictions.npz`."""
    preds: dict[str, np.ndarray] = {}
    metrics = {"student": evaluate_student(student, reader, pad_id, tokenizer, preds),
               "teacher": evaluate_teacher(reader),
               "cache_key": reader.key, "label_names": reader.manifest.label_names}
    summary = run / "train_summary.json"
    if summary.exists():
        metrics["train"] = json.loads(summary.read_text())
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    np.savez(run / "predictions.npz", **preds)
    return metrics


def evaluate_run(run: str | Path, device: str | None = None) -> dict:
    """Load a run's final checkpoint and write its `metrics.json`."""
    from trainer.train import TrainConfig, Trainer, load_student

    run = Path(run)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    cfg_dict = json.loads((run / "config.json").read_text())
    cfg_dict.pop("cache_key", None)
    cfg_dict.pop("world_size", None)
    cfg = TrainConfig(**{**cfg_dict, "resume": False})
    if cfg.method == "online-kd":
        cfg.method = "ours"  # evaluation needs no teacher in memory
    tr = Trainer(cfg, device=device)
    load_student(tr.student, run / "checkpoint", tr.cfg.adapter)
    return write_metrics(run, tr.student, tr.reader, tr.pad_id, tr.tokenizer)
