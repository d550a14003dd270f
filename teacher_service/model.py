"""The frozen teacher: an HF encoder whose chosen layers are pooled, plus a linear class head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustkd.shared.features import pad_batch, pool
from robustkd.shared.models import ModelFolderError, check_model_folder, quiet_transformers
from robustkd.shared.prompts import encode_plain


class ModelError(ValueError):
    """The model path, hub id or layer choice is unusable."""


def resolve_model_path(model: str) -> Path:
    """A local directory, or a hub id resolved from the local HF cache (or the hub, where reachable)."""
    p = Path(model).expanduser()
    if p.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        try:
            return check_model_folder(p)
        except ModelFolderError as e:
            raise ModelError(str(e)) from None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model))
    except Exception as e:  # offline, unknown repo, ...
        raise ModelError(f"model: cannot resolve hub id {model!r} ({type(e).__name__}); "
                         "pass a local model folder") from None


def num_layers(config) -> int:  # noqa: ANN001
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        raise ModelError("model: config has no num_hidden_layers")
    return int(n)


def check_layers(layers: tuple[int, ...] | list[int], n: int) -> None:
    bad = [i for i in layers if not 0 <= i <= n]
    if bad:
        raise ModelError(f"layers: {bad} out of range; this model has hidden_states 0..{n}")


def compute_placement() -> tuple[str, str]:
    """(device type, compute dtype) the teacher runs with here: bfloat16 autocast on CUDA, float32 on CPU."""
    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def place(device: str | None, threads: int | None, dtype: str | None = None) -> tuple[torch.device, str]:
    """The device a teacher loads onto (default: `compute_placement`) and its compute dtype (default: bfloat16 on
    CUDA, float32 elsewhere); sets torch's threads."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or compute_placement()[0])
    return dev, dtype or ("bfloat16" if dev.type == "cuda" else "float32")


@dataclass
class Encoded:
    features: torch.Tensor              # [B, D] pooled last layer (the head's input)
    layers: dict[int, torch.Tensor]     # layer -> [B, D] pooled
    logits: torch.Tensor | None = None  # [B, C] when the model has its own head


class Encoder:
    """Frozen HF encoder: tokenises, runs in inference mode, pools the captured layers."""

    def __init__(self, model: str, *, with_head: bool = False, device: str | None = None,
                 threads: int | None = None, dtype: str | None = None) -> None:
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        self.path = resolve_model_path(model)
        quiet_transformers()
        self.device, self.compute_dtype = place(device, threads, dtype)
        cls = AutoModelForSequenceClassification if with_head else AutoModel
        try:
            self.model = cls.from_pretrained(str(self.path)).to(self.device).eval()
        except Exception as e:
            raise ModelError(f"model: cannot load {self.path} ({type(e).__name__}: {e})") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.n_layers = num_layers(self.model.config)
        self.hidden_size = int(self.model.config.hidden_size)
        self.with_head = with_head
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        return encode_plain(self.tokenizer, texts, max_length)

    @torch.inference_mode()
    def forward_ids(self, seqs: list[list[int]], layers: tuple[int, ...], pooling: str) -> Encoded:
        check_layers(layers, self.n_layers)
        ids, mask = pad_batch(seqs, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        pooled = {i: pool(hs[i].float(), mask, pooling) for i in layers}
        feats = pooled.get(self.n_layers)
        if feats is None:
            feats = pool(hs[self.n_layers].float(), mask, pooling)
        logits = out.logits.float() if self.with_head else None
        return Encoded(feats, pooled, logits)

    def encode_texts(self, texts: list[str], *, layers: tuple[int, ...], pooling: str = "mean",
                     max_length: int = 128, batch_size: int = 64) -> Encoded:
        """Convenience for small inputs (label descriptions, tests)."""
        seqs = self.tokenize(texts, max_length)
        parts = [self.forward_ids(seqs[i:i + batch_size], layers, pooling)
                 for i in range(0, len(seqs), batch_size)]
        return Encoded(torch.cat([p.features for p in parts]),
                       {i: torch.cat([p.layers[i] for p in parts]) for i in layers},
                       torch.cat([p.logits for p in parts]) if self.with_head else None)
