"""The frozen causal-LM teacher (a folder or a GGUF file): prompts around the text, last-token features, and the
next-token distribution over each response token of a generative row.

It offers `Encoder`'s interface (`forward_ids`, `hidden_size`, `n_layers`, `model`, `tokenizer`), so the forward,
the head fit and the perturbations treat both families alike; `load_teacher` picks the class for a model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustkd.shared.features import pad_batch, pool
from robustkd.shared.generation import greedy
from robustkd.shared.models import load_tokenizer, model_family, pretrained_args, quiet_transformers
from robustkd.shared.prompts import answer_separator, encode_prompts, frame, plain_ids, start_ids
from robustkd.teacher_service.model import (
    Encoded,
    Encoder,
    ModelError,
    check_layers,
    num_layers,
    place,
    resolve_model_path,
)


def label_token_ids(tokenizer, template: str, words: tuple[str, ...]) -> list[int]:  # noqa: ANN001
    """The first token of each label word as it follows the prompt; they must differ between classes."""
    sep = answer_separator(template)
    if any(not w.strip() for w in words):
        raise ModelError(f"label_words: empty word in {list(words)}")
    ids = [tokenizer(sep + w.strip(), add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) != len(ids):
        raise ModelError(f"label_words: {list(words)} do not start with distinct tokens "
                         f"({[tokenizer.decode([i]) for i in ids]}); choose other words")
    return ids


class CausalLM:
    """A frozen causal LM, loaded from a Hugging Face folder or a GGUF file."""

    with_head = False

    def __init__(self, model: str, *, device: str | None = None, threads: int | None = None,
                 dtype: str | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.path = resolve_model_path(model)
        quiet_transformers()
        self.device, self.compute_dtype = place(device, threads, dtype)
        folder, kwargs = pretrained_args(self.path)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(self.device).eval()
            self.tokenizer = load_tokenizer(self.path)
        except Exception as e:
            raise ModelError(f"model: cannot load {self.path} as a causal LM ({type(e).__name__}: {e})") from None
        self.n_layers = num_layers(self.model.config)
        self.hidden_size = int(self.model.config.hidden_size)
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        self.eos_id = tok.eos_token_id
        self.start = start_ids(tok)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ---- tokenisation ---------------------------------------------------------------------------
    def _ids(self, texts: list[str]) -> list[list[int]]:
        return plain_ids(self.tokenizer, texts)

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Plain texts (no template), truncated."""
        return [self.start + ids[: max_length - len(self.start)] for ids in self._ids(texts)]

    def encode_prompts(self, template: str, texts: list[str], max_length: int) -> list[list[int]]:
        """Template around each text; the text is truncated so that the template's end (the cue) is always kept."""
        return encode_prompts(self.tokenizer, self.start, template, texts, max_length)

    def encode_pairs(self, template: str, texts: list[str], responses: list[str], max_length: int,
                     max_response: int) -> tuple[list[list[int]], list[int]]:
        """(prompt + response + EOS ids, prompt lengths). The response is cut to `max_response` tokens with EOS;
        the text gives way first, so the cue and the response are kept."""
        sep = answer_separator(template)
        resp = [ids[: max_response - 1] + [self.eos_id] for ids in self._ids([sep + r for r in responses])]
        pre, lead, suf = frame(self.tokenizer, self.start, template, max_length - max(map(len, resp), default=0))
        seqs, lens = [], []
        for ids, r in zip(self._ids([lead + t for t in texts]), resp, strict=True):
            prompt = pre + ids[: max_length - len(pre) - len(suf) - len(r)] + suf
            seqs.append(prompt + r)
            lens.append(len(prompt))
        return seqs, lens

    # ---- forward --------------------------------------------------------------------------------
    def _hidden(self, seqs: list[list[int]], layers: tuple[int, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        check_layers(layers, self.n_layers)
        ids, mask = pad_batch(seqs, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            # the base model alone: its last hidden state is after the final norm, what the output layer reads
            out = self.model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states, mask

    @torch.inference_mode()
    def forward_ids(self, seqs: list[list[int]], layers: tuple[int, ...], pooling: str) -> Encoded:
        hs, mask = self._hidden(seqs, layers)
        pooled = {i: pool(hs[i].float(), mask, pooling) for i in layers}
        feats = pooled.get(self.n_layers)
        return Encoded(pool(hs[self.n_layers].float(), mask, pooling) if feats is None else feats, pooled)

    @torch.inference_mode()
    def forward_tokens(self, seqs: list[list[int]], prompt_lens: list[int], layers: tuple[int, ...],
                       pooling: str) -> tuple[Encoded, list[torch.Tensor]]:
        """Pooled layers, and per row the [T, V] log-probs of the T response tokens (position p predicts p+1)."""
        hs, mask = self._hidden(seqs, layers)
        pooled = {i: pool(hs[i].float(), mask, pooling) for i in layers}
        head = self.model.get_output_embeddings()
        logps = []
        for b, (seq, n) in enumerate(zip(seqs, prompt_lens, strict=True)):
            logits = head(hs[self.n_layers][b, n - 1: len(seq) - 1]).float()
            logps.append(torch.log_softmax(logits, -1).cpu())
        last = pool(hs[self.n_layers].float(), mask, pooling)
        return Encoded(last, pooled), logps

    def generate(self, prompts: list[list[int]], max_new_tokens: int, before_batch=None) -> list[list[int]]:  # noqa: ANN001
        """The greedy continuation of each prompt (its ids), EOS kept when it stopped before `max_new_tokens`."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            return greedy(self.model, prompts, max_new_tokens, self.eos_id, self.pad_id, keep_eos=True,
                          before_batch=before_batch)

    def output_rows(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [C, D], bias [C]) of the output layer's rows for these token ids (tied embeddings or not)."""
        head = self.model.get_output_embeddings()
        w = head.weight.detach()[ids].float().cpu()
        b = head.bias.detach()[ids].float().cpu() if getattr(head, "bias", None) is not None else torch.zeros(len(ids))
        return w, b


def load_teacher(model: str, *, with_head: bool = False, device: str | None = None, threads: int | None = None,
                 dtype: str | None = None) -> Encoder | CausalLM:
    """The frozen teacher for a model: a `CausalLM` for causal LMs (folders or GGUF files), else an `Encoder`;
    `dtype`: its compute dtype (default: the device's, `place`)."""
    path = resolve_model_path(model)
    if model_family(Path(path)) == "causal-lm":
        return CausalLM(str(path), device=device, threads=threads, dtype=dtype)
    return Encoder(str(path), with_head=with_head, device=device, threads=threads, dtype=dtype)
