"""A student with a pooled linear head as a transformers model, so an exported student loads with the Auto classes.

No stock transformers class pools an encoder's tokens by their mean (or a causal LM's by its last real token) and
puts a linear head on top, so robustkd registers one: `RobustkdConfig` (model_type `robustkd`, the backbone's own
config nested in it) and `RobustkdForSequenceClassification`. `import robustkd` registers them with `AutoConfig` and
`AutoModelForSequenceClassification` when transformers is imported, so
`transformers.pipeline("text-classification", model=OUT)` works without `trust_remote_code`.

The module's weights are named as the student's (`backbone.*`, `head.*`) and its forward computes the student's
logits: the backbone's last hidden layer pooled over the attention mask, then the head.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from robustkd.shared.features import pool

MODEL_TYPE = "robustkd"


class RobustkdConfig(PretrainedConfig):
    """`backbone`: the backbone's config as a dict (its `model_type` included); `pooling`: mean, cls or last."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict | None = None, pooling: str = "mean", **kwargs: object) -> None:
        self.backbone = dict(backbone or {})
        self.pooling = pooling
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        fields = dict(self.backbone)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


class RobustkdForSequenceClassification(PreTrainedModel):
    config_class = RobustkdConfig
    base_model_prefix = "backbone"

    def __init__(self, config: RobustkdConfig) -> None:
        super().__init__(config)
        inner = config.backbone_config()
        self.backbone = AutoModel.from_config(inner)
        self.n_layers = int(inner.num_hidden_layers)
        self.head = nn.Linear(int(inner.hidden_size), config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: object) -> SequenceClassifierOutput:
        """Class logits of right-padded rows (token_type_ids and other tokenizer outputs are not used)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logits = self.head(pool(out.hidden_states[self.n_layers], attention_mask, self.config.pooling))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register() -> None:
    AutoConfig.register(MODEL_TYPE, RobustkdConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(RobustkdConfig, RobustkdForSequenceClassification, exist_ok=True)
