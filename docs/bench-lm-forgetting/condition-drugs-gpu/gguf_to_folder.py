"""A GGUF causal LM as a safetensors folder: the same dequantized float32 weights, loaded in seconds rather than
dequantized again by every process (~40 s each on the GPU machine's shared cores).
python3 gguf_to_folder.py MODEL.gguf OUT_FOLDER   (prints the largest logit difference between the two: 0.0)"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

src, out = sys.argv[1], sys.argv[2]
d, f = src.rsplit("/", 1)
t = time.time()
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
cfg = m.config.to_dict()
cfg.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained; a fresh one takes its weights
new = AutoModelForCausalLM.from_config(type(m.config).from_dict(cfg), dtype=torch.float32)
missing, unexpected = new.load_state_dict(m.state_dict(), strict=False)
assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)  # lm_head: tied
new.tie_weights()
new.save_pretrained(out)
tok.save_pretrained(out)
ids = tok("Hello, what is a drug used for?", return_tensors="pt").input_ids
with torch.no_grad():
    a, b = m(ids).logits, AutoModelForCausalLM.from_pretrained(out)(ids).logits
print("converted in", round(time.time() - t, 1), "s; max |logit diff|", (a - b).abs().max().item(), flush=True)
