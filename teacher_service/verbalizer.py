"""Label-token classification with a causal LM: prompts and label words per task, and the calibrated verbalizer head.

The label words' next-token logits at the prompt's last token are `W_out[label_ids] · h_last (+ b_out)`, with
h_last the final (normed) hidden state: a linear head on the last-token pooled features, so the cache, the
student's head and `LinearHead` carry the verbalizer unchanged. Zero-shot it is prompt-fragile (on Drugs.com
SmolLM2 called 13% of reviews positive where 71% are), so a bias per class is fitted on the clean ID validation
rows (maximum likelihood with the weights fixed); the bias is the head's, the raw and calibrated validation
figures are in the head's info and the manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from robustkd.teacher_service.heads import LinearHead

# task -> (prompt template, label words in class order); user files get GENERIC_PROMPT and their label names
TASK_PROMPTS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "sentiment-rt-drugs": ("Review: {text}\nIs this review positive or negative?\nAnswer:", ("negative", "positive")),
    "arrests-year": ("{text}\nWas this person released with a summons? Answer yes or no.\nAnswer:", ("no", "yes")),
    "hsb82-sector": ("Student: {text}\nIs this student's math achievement above the median? Answer yes or no.\n"
                     "Answer:", ("no", "yes")),
    "condition-drugs": ("Review: {text}\nWhat condition was the drug taken for?\nCondition:", None),
}
TASK_PROMPTS["sentiment-answer"] = TASK_PROMPTS["sentiment-rt-drugs"]  # answered in words by a generative student
GENERIC_PROMPT = "{text}\nAnswer:"
GENERIC_GENERATIVE_PROMPT = "{text}"  # a generative user file's prompts are used as they are


def default_prompt(task: str, generative: bool) -> str:
    if task in TASK_PROMPTS:
        return TASK_PROMPTS[task][0]
    return GENERIC_GENERATIVE_PROMPT if generative else GENERIC_PROMPT


def default_label_words(task: str, label_names: tuple[str, ...]) -> tuple[str, ...]:
    words = TASK_PROMPTS.get(task, ("", None))[1]
    return words if words is not None else tuple(n.replace("_", " ") for n in label_names)


def fit_bias(logits: np.ndarray, labels: np.ndarray, steps: int = 100) -> np.ndarray:
    """The per-class bias b minimising the mean cross-entropy of softmax(logits + b) (convex; L-BFGS), mean 0."""
    z = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=steps, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    out = b.detach().numpy()
    return (out - out.mean()).astype(np.float32)


def _summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    pred = logits.argmax(1)
    return {"accuracy": float((pred == labels).mean()),
            "predicted_rate": [float((pred == c).mean()) for c in range(logits.shape[1])]}


def verbalizer_head(weight: np.ndarray, bias: np.ndarray, token_ids: list[int], tokens: list[str],
                    words: tuple[str, ...], calibration: str, x_val: np.ndarray, y_val: np.ndarray) -> LinearHead:
    """The label words' output rows as a linear head; with `calibration="bias"` a bias per class fitted on the
    clean validation features (the rows' own output bias, if any, is kept underneath)."""
    raw = x_val @ weight.T + bias
    info = {"kind": "verbalizer", "label_words": list(words), "label_token_ids": token_ids, "label_tokens": tokens,
            "calibration": calibration, "validation_raw": _summary(raw, y_val)}
    if calibration == "bias":
        delta = fit_bias(raw, y_val)
        bias = bias + delta
        info["calibration_bias"] = delta.tolist()
        info["validation_calibrated"] = _summary(raw + delta, y_val)
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), info)


def fit_verbalizer(spec, lm, x_val: np.ndarray, y_val: np.ndarray) -> LinearHead:  # noqa: ANN001
    """The spec's verbalizer for a `CausalLM`: its label words' output rows, calibrated on the validation features."""
    from robustkd.teacher_service.lm import label_token_ids

    t = spec.teacher
    ids = label_token_ids(lm.tokenizer, t.prompt, t.label_words)
    w, b = lm.output_rows(ids)
    return verbalizer_head(w.numpy(), b.numpy(), ids, [lm.tokenizer.decode([i]) for i in ids], t.label_words,
                           t.calibration, x_val, y_val)
