"""An exported encoder student's logits against what `robustkd eval` stored for its run, on the cache's test rows.

    python benchmarks/export_equality.py [--run runs/demo/ft] [--export runs/demo/export]

Prints the largest absolute difference for the transformers path (the registered Auto class) and for onnxruntime.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification

import robustkd  # noqa: F401  registers the exported model type with the Auto classes
from robustkd.shared.features import pad_batch
from robustkd.shared.reader import CacheReader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo/ft")
    ap.add_argument("--export", default="runs/demo/export")
    args = ap.parse_args()
    cache = json.loads(open(f"{args.run}/config.json").read())["cache"]
    ids = CacheReader(cache).read_clean("test").rows.column("input_ids").to_pylist()
    want = np.load(f"{args.run}/predictions.npz")["test"]
    model = AutoModelForSequenceClassification.from_pretrained(args.export).eval()
    session = ort.InferenceSession(f"{args.export}/model.onnx")
    hf, onnx = [], []
    with torch.inference_mode():
        for i in range(0, len(ids), 64):
            x, mask = pad_batch(ids[i:i + 64], 0)
            hf.append(model(input_ids=x, attention_mask=mask).logits.numpy())
            onnx.append(session.run(None, {"input_ids": x.numpy(), "attention_mask": mask.numpy()})[0])
    print(f"rows {len(ids)}: max |transformers - eval| = {np.abs(np.concatenate(hf) - want).max():.2e}, "
          f"max |onnxruntime - eval| = {np.abs(np.concatenate(onnx) - want).max():.2e}")


if __name__ == "__main__":
    main()
