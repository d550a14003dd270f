"""The head a cache stores beside its targets: fitted on the clean features (linear probe, verbalizer), built
from label descriptions (zero-shot), or the model's own; stored and loaded as safetensors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from robustkd.shared import layout
from robustkd.shared.spec import CacheSpec
from robustkd.teacher_service.forward import Outputs
from robustkd.teacher_service.heads import LinearHead, fit_linear_probe, zero_shot_head
from robustkd.teacher_service.lm import CausalLM
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.plan import Plan
from robustkd.teacher_service.store import Store
from robustkd.teacher_service.taskdata import TaskData
from robustkd.teacher_service.verbalizer import fit_verbalizer

FEATURE_HEADS = ("linear-probe", "verbalizer")  # heads fitted on the clean train/validation features


def head_info(raw: bytes) -> dict:
    """The `info` a head file was stored with (its safetensors header metadata)."""
    size = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8:8 + size]).get("__metadata__", {}).get("info", "{}"))


def head_shards(spec: CacheSpec, p: Plan) -> list[int]:
    """The shards to forward before the head can be fitted: those through the validation split for a head fitted
    on the clean train and validation features, none for the others."""
    return p.shards_through("validation") if spec.teacher.head in FEATURE_HEADS and not spec.generative else []


def fit_head(spec: CacheSpec, task: TaskData, enc: Encoder | CausalLM, p: Plan,
             outputs: dict[int, tuple[pa.Table, Outputs]]) -> tuple[LinearHead | None, dict[str, np.ndarray], dict]:
    """(head, tensors to store, info). A linear probe is fitted on the clean train rows, C chosen on the clean
    validation rows; `outputs` must hold every shard through the validation split."""
    kind = spec.teacher.head
    if spec.generative:  # the LM's own output layer gives the targets: no head to store
        return None, {}, {"kind": "vocabulary", "note": "generative cache: per-token targets, no class head"}
    if kind == "verbalizer":
        head = fit_verbalizer(spec, enc, *clean_features(outputs, p, "validation"))
        return head, head.tensors(), head.info
    if kind == "model":
        head_mod = enc.model.classifier if hasattr(enc.model, "classifier") else enc.model.score
        tensors = {k: v.detach().float().cpu().numpy() for k, v in head_mod.state_dict().items()}
        return None, tensors, {"kind": "model"}
    if kind == "zero-shot":
        out = enc.encode_texts(list(task.label_descriptions), layers=spec.teacher.layers,
                               pooling=spec.teacher.pooling, max_length=spec.teacher.max_length)
        head = zero_shot_head(out.features.cpu().numpy())
        return head, head.tensors(), head.info
    xy = {split: clean_features(outputs, p, split) for split in ("train", "validation")}
    head = fit_linear_probe(*xy["train"], *xy["validation"], len(spec.task.label_names),
                            balanced=spec.teacher.class_weights == "balanced")
    return head, head.tensors(), head.info


def clean_features(outputs: dict[int, tuple[pa.Table, Outputs]], p: Plan, split: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the clean rows of a split, from computed shards."""
    feats, labels = [], []
    for row in p.splits[split].clean_rows():
        k, i = divmod(row, p.shard_rows)
        rows, out = outputs[k]
        feats.append(out.features[i])
        labels.append(rows.column("label")[i].as_py())
    return np.stack(feats), np.asarray(labels)


def store_head(store: Store, tensors: dict[str, np.ndarray], info: dict) -> None:
    from safetensors.numpy import save

    store.write_bytes(layout.HEAD, save(tensors, metadata={"info": json.dumps(info)}))


def load_head(store: Store, spec: CacheSpec) -> LinearHead | None:
    """The stored head (None for the model's own head, which the forward applies)."""
    from safetensors.numpy import load

    if spec.teacher.head == "model":
        return None
    tensors = load(store.read_bytes(layout.HEAD))
    if not tensors:  # a generative cache's empty head
        return None
    return LinearHead(tensors["weight"], tensors["bias"])
