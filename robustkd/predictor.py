"""A student ready to predict on new text: a run folder or an exported folder, behind one `Predictor`.

Both are turned into the same transformers model (`robustkd.hf_student` builds it in memory from a run)
and tokenised by the rules the teacher cache was built with (`robustkd.shared.prompts`), so a run, its export and
the exported files read by plain transformers give the same logits.

| kind | model | output |
|---|---|---|
| classifier | `RobustkdForSequenceClassification` (backbone, pooled, linear head) | class probabilities |
| verbalizer | a causal LM: label words' next-token logits at the prompt's end + `label_bias` | class probabilities |
| generative | a causal LM | its greedy answer |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustkd.recipe import RECIPE, Recipe, is_export, is_run
from robustkd.shared.prompts import encode_plain, encode_prompts, start_ids


class PredictError(ValueError):
    pass


class Predictor:
    """`predict(texts)` -> labels (a generative student: answers), `predict_proba(texts)` -> [n, C] probabilities."""

    def __init__(self, model, tokenizer, recipe: Recipe, batch_size: int = 32) -> None:  # noqa: ANN001
        self.model, self.tokenizer, self.recipe, self.batch_size = model.eval(), tokenizer, recipe, batch_size
        self.start = start_ids(tokenizer) if recipe.family == "causal-lm" else []

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Predictor:
        folder = Path(path)
        if is_export(folder):
            return cls.from_export(folder, device)
        if is_run(folder):
            from robustkd.hf_student import student_as_hf
            from robustkd.trainer.run import load_run

            model, tokenizer, recipe = student_as_hf(load_run(folder, device=device))
            return cls(model, tokenizer, recipe)
        raise PredictError(f"model: {path} is neither a run folder (config.json and checkpoint/, written by "
                           f"`robustkd train`) nor an exported folder ({RECIPE}, written by `robustkd export`)")

    @classmethod
    def from_export(cls, folder: Path, device: str = "cpu") -> Predictor:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        from robustkd.hf_classifier import register

        register()  # what `import robustkd` does once transformers is imported
        recipe = Recipe.model_validate_json((folder / RECIPE).read_text())
        auto = AutoModelForSequenceClassification if recipe.kind == "classifier" else AutoModelForCausalLM
        model = auto.from_pretrained(str(folder), dtype=torch.float32).to(device)
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), recipe)

    @property
    def label_names(self) -> list[str]:
        return self.recipe.label_names

    # ---- text -> ids -------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[list[int]]:
        r = self.recipe
        if r.family == "causal-lm":
            return encode_prompts(self.tokenizer, self.start, r.prompt or "{text}", texts, r.max_length)
        return encode_plain(self.tokenizer, texts, r.max_length)

    # ---- ids -> outputs ----------------------------------------------------------------------------
    def logits_of_ids(self, seqs: list[list[int]]) -> np.ndarray:
        """[n, C] class logits, batched by sorted length (right-padded; pooling and attention use the mask)."""
        import torch

        from robustkd.shared.features import pad_batch

        if self.recipe.kind == "generative":
            raise PredictError("a generative student answers in text: use predict(), not class probabilities")
        out = np.zeros((len(seqs), len(self.label_names)), np.float32)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for i in range(0, len(seqs), self.batch_size):
                idx = order[i:i + self.batch_size]
                ids, mask = pad_batch([seqs[j] for j in idx], self.recipe.pad_token_id)
                out[idx] = self._class_logits(ids.to(device), mask.to(device)).float().cpu().numpy()
        return out

    def _class_logits(self, ids, mask):  # noqa: ANN001, ANN202
        if self.recipe.kind == "classifier":
            return self.model(input_ids=ids, attention_mask=mask).logits
        import torch

        # verbalizer: the label words' rows of the output layer at the last real token, plus the fitted bias
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(ids.shape[0]), mask.sum(1) - 1]
        rows = self.model.get_output_embeddings()(last)[:, self.recipe.label_token_ids]
        return rows + torch.tensor(self.recipe.label_bias, dtype=rows.dtype, device=rows.device)

    def answers_of_ids(self, seqs: list[list[int]]) -> list[str]:
        """Greedy answers of a generative student, up to its EOS or max_response_tokens (batched as evaluation
        decodes them)."""
        from robustkd.shared.generation import greedy

        tok = self.tokenizer
        eos = tok.eos_token_id
        new = greedy(self.model, seqs, self.recipe.max_response_tokens or 64, eos, self.recipe.pad_token_id,
                     batch_size=self.batch_size)
        return [tok.decode(g, skip_special_tokens=True).strip() for g in new]

    # ---- the public surface ------------------------------------------------------------------------
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        logits = self.logits_of_ids(self.encode(list(texts)))
        z = np.exp(logits - logits.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict(self, texts: list[str]) -> list[str]:
        texts = list(texts)
        if self.recipe.kind == "generative":
            return self.answers_of_ids(self.encode(texts))
        return [self.label_names[i] for i in self.predict_proba(texts).argmax(1)]
