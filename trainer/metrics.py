"""Classification metrics on logits: accuracy, macro-F1, AUROC, predicted vs true class rates, calibration."""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Σ_bins (rows in bin / rows) · |accuracy − mean confidence| over equal-width confidence bins (lo, hi]."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return float(ece)


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (as sklearn's, without its warnings on tiny splits)."""
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class F1, confusion, AUROC, predicted vs true class rates, ECE;
    `single_class` flags a model that predicts one class for every row."""
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    k = len(label_names)
    probs = softmax(logits.astype(np.float64))
    pred = probs.argmax(1)
    classes = list(range(k))
    out = {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": balanced_accuracy(pred, labels),
        "single_class": bool(len(np.unique(pred)) == 1 and k > 1),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=classes, zero_division=0)),
        "per_class_f1": dict(zip(label_names, map(float, f1_score(labels, pred, average=None, labels=classes,
                                                                   zero_division=0)), strict=True)),
        "confusion": confusion_matrix(labels, pred, labels=classes).tolist(),
        "predicted_rate": {n: float((pred == i).mean()) for i, n in enumerate(label_names)},
        "true_rate": {n: float((labels == i).mean()) for i, n in enumerate(label_names)},
        "ece": expected_calibration_error(probs, labels),
    }
    if len(np.unique(labels)) == k:
        out["auroc"] = float(roc_auc_score(labels, probs[:, 1]) if k == 2 else
                             roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    return out


def activation_drift(acts: dict[int, np.ndarray], teacher: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer: mean ‖a^student − a^teacher‖₂ relative to the teacher's mean norm (0 = no drift)."""
    out = {}
    for i, a in acts.items():
        t = teacher[f"layer_{i}"]
        out[str(i)] = float(np.linalg.norm(a - t, axis=1).mean() / np.linalg.norm(t, axis=1).mean())
    return out
