"""Teacher heads: a foundation model has none, so the cache stores a linear one on pooled features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robustkd.shared.features import head_logits

# Inverse L2 strengths tried for the linear probe; the best on ID validation accuracy wins,
# ties going to the stronger regularisation (smaller C), which is listed first.
PROBE_C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0)
STD_FLOOR = 1e-6  # MiniLM has a constant feature (std ~1e-32): without a floor weights explode


@dataclass
class LinearHead:
    weight: np.ndarray  # [C, D] float32
    bias: np.ndarray    # [C] float32
    info: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return head_logits(x, self.weight, self.bias)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)}


def select_c(scores: dict[float, float]) -> float:
    """The C with the best validation score; ties go to the smallest C (the strongest regularisation)."""
    return min(scores, key=lambda c: (-scores[c], c))


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     num_labels: int, grid: tuple[float, ...] = PROBE_C_GRID, balanced: bool = False) -> LinearHead:
    """L2 logistic regression on standardised features, C chosen on validation accuracy (balanced accuracy, with
    class weights inversely proportional to class frequency, when `balanced`).

    The standardisation is folded into the returned weights, so the head is a plain linear layer on the
    raw pooled features (what the student's head starts from).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    if len(np.unique(y_train)) < 2:
        raise ValueError("linear-probe: the train split has a single class; nothing to fit")
    mean = x_train.mean(0)
    std = np.maximum(x_train.std(0), STD_FLOOR)
    zt, zv = (x_train - mean) / std, (x_val - mean) / std
    fits, scores = {}, {}
    for c in grid:
        fits[c] = LogisticRegression(C=c, max_iter=2000, tol=1e-6,
                                     class_weight="balanced" if balanced else None).fit(zt, y_train)
        pred = fits[c].predict(zv)
        scores[c] = float(balanced_accuracy_score(y_val, pred) if balanced else (pred == y_val).mean())
    c = select_c(scores)
    clf = fits[c]
    coef, icpt = clf.coef_, clf.intercept_
    w = np.zeros((num_labels, x_train.shape[1]))
    b = np.zeros(num_labels)
    if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([-z/2, z/2])
        w[clf.classes_[0]], w[clf.classes_[1]] = -coef[0] / 2, coef[0] / 2
        b[clf.classes_[0]], b[clf.classes_[1]] = -icpt[0] / 2, icpt[0] / 2
    else:
        w[clf.classes_], b[clf.classes_] = coef, icpt
    # classes never seen in train keep a very negative bias rather than zero logits
    unseen = np.setdiff1d(np.arange(num_labels), clf.classes_)
    b[unseen] = -1e4
    w_raw = w / std
    b_raw = b - w_raw @ mean
    metric = "val_balanced_accuracy" if balanced else "val_accuracy"
    info = {"C": c, metric: scores[c], f"{metric}_by_C": {str(k): v for k, v in scores.items()},
            "class_weights": "balanced" if balanced else "none"}
    return LinearHead(w_raw.astype(np.float32), b_raw.astype(np.float32), info)


def zero_shot_head(prototypes: np.ndarray, scale: float = 20.0) -> LinearHead:
    """Class prototypes (embeddings of label descriptions) as a linear head: logits = s * <x, p/|p|^2>.

    Dividing by |p|^2 puts each class's score on the scale of a cosine for inputs of a prototype's norm.
    """
    norms = np.linalg.norm(prototypes, axis=1, keepdims=True) ** 2
    w = scale * prototypes / np.maximum(norms, 1e-12)
    return LinearHead(w.astype(np.float32), np.zeros(len(prototypes), np.float32),
                      {"scale": scale, "kind": "zero-shot"})
