"""Sparse-logit caches for generation: bytes per response token, fidelity to the dense teacher, and what students
trained from each cache reach, with SmolLM2-135M-Instruct (GGUF) as the teacher on `condition-drugs`.

    python benchmarks/sparse_kd.py [--limit 32] [--steps 40] [--student-layers 4] [--out runs/sparse_kd]

1. One cache per kind (dense float16, top-k k=8/32/128, sampled k=12/32) through the real precompute; bytes per
   response token are the sparse columns' share of the Arrow rows files on disk.
2. Fidelity on the clean validation rows, against the dense cache's teacher distribution p: KL(p ‖ p̂) with p̂ the
   top-k probabilities and the rest's mass spread evenly over the other tokens (a sampled cache is an unbiased
   estimate, not a nearby distribution: one draw set's KL is infinite, so its TV distance is given), and the
   bias of each cache's KD loss for a fixed student: its loss minus the dense KL (sampled: minus KL + H(p)).
3. Students: the teacher's first `--student-layers` layers (its embeddings, final norm and output layer), trained
   `--steps` steps by distillation alone (λ1 = λ3 = 0, distillation on clean and perturbed rows) from each cache;
   their validation NLL per response token and exact match.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.shared.sparse import read_batch
from robustkd.teacher_service.lm import CausalLM
from robustkd.teacher_service.precompute import precompute
from robustkd.teacher_service.resolve import resolve
from robustkd.teacher_service.store import arrow_file_bytes
from robustkd.testing import smollm2_path

KINDS = [("dense", None), ("top-k", 8), ("top-k", 32), ("top-k", 128), ("sampled", 12), ("sampled", 32)]
DISTILLKIT = {"DistillKit top-k k=128 (published)": 300, "DistillKit top-k k=50 (published)": 114}


def name(kind: str, k: int | None) -> str:
    return kind if k is None else f"{kind} k={k}"


def make_student(lm: CausalLM, layers: int, folder: Path) -> Path:
    """The teacher cut to its first `layers` blocks (embeddings, final norm and tied output layer kept)."""
    from transformers import AutoModelForCausalLM

    if (folder / "config.json").exists():
        return folder
    config = lm.model.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF-loaded model will not save: rebuild it unquantised
    config["num_hidden_layers"] = layers
    small = AutoModelForCausalLM.from_config(type(lm.model.config).from_dict(config))
    missing, unexpected = small.load_state_dict(lm.model.state_dict(), strict=False)
    assert not missing and all(k.startswith("model.layers.") for k in unexpected)  # the dropped layers only
    small.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    return folder


def sparse_bytes(reader: CacheReader) -> tuple[int, int]:
    """(bytes of the sparse columns in the rows files, response tokens)."""
    total, tokens = 0, 0
    for k in range(reader.manifest.n_shards):
        rows = reader.read_shard(k).rows
        plain = rows.select([c for c in rows.column_names if not c.startswith("sparse_")])
        total += len(arrow_file_bytes(rows)) - len(arrow_file_bytes(plain))
        tokens += sum(len(s) - n for s, n in zip(rows.column("input_ids").to_pylist(),
                                                 rows.column("prompt_len").to_pylist(), strict=True))
    return total, tokens


def fidelity(reader: CacheReader, kind: str, k: int, dense_logp: np.ndarray, student_logits: torch.Tensor) -> dict:
    """KL / TV of the reconstruction against p, and the KD loss bias for a fixed student, on validation rows."""
    from robustkd.trainer.sparse_losses import dense_kl, sparse_kd_loss

    t = read_batch(kind, reader.read_clean("validation").rows, k)
    p = np.exp(dense_logp.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    n, v = p.shape
    q = np.zeros_like(p)
    if kind == "top-k":
        rest = np.exp(t.rest.astype(np.float64))
        q[:] = (rest / (v - k))[:, None]
        np.put_along_axis(q, t.ids, np.exp(t.logp.astype(np.float64)), 1)
    elif kind == "sampled":
        np.add.at(q, (t.token, t.ids), t.weight)
    else:
        q = np.exp(t.logp.astype(np.float64))
    q /= q.sum(1, keepdims=True)
    with np.errstate(divide="ignore"):
        kl = float(np.where(p > 0, p * (np.log(p) - np.log(q)), 0).sum(1).mean())
    dense = float(dense_kl(student_logits, torch.from_numpy(dense_logp.astype(np.float32))))
    loss = float(sparse_kd_loss(student_logits, t))
    entropy = float(-(p * np.log(np.maximum(p, 1e-300))).sum(1).mean())
    bias = loss - dense - (entropy if kind == "sampled" else 0.0)
    return {"kl": kl, "tv": float(0.5 * np.abs(p - q).sum(1).mean()), "loss_bias": bias, "dense_kl": dense}


def student_logits_on(student_dir: Path, reader: CacheReader) -> torch.Tensor:
    from robustkd.shared.features import pad_batch
    from robustkd.trainer.lm_student import build_lm_student, response_mask

    st = build_lm_student(reader.manifest, model=str(student_dir)).eval()
    rows = reader.read_clean("validation").rows
    ids, mask = pad_batch(rows.column("input_ids").to_pylist(), 0)
    with torch.no_grad():
        logits, _ = st(ids, mask, response_mask(mask, torch.tensor(rows.column("prompt_len").to_pylist())), False)
    return logits.float()


def train_student(cache: Path, student_dir: Path, out: Path, steps: int, lr: float, lambda_task: float,
                  lambda_distill: float) -> dict:
    from robustkd.shared.models import load_tokenizer
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.generation import evaluate_generation
    from robustkd.trainer.train import Trainer

    cfg = TrainConfig(cache=str(cache), out=str(out), method="ours", model=str(student_dir), lambda_task=lambda_task,
                      lambda_distill=lambda_distill, lambda_act=0.0, distill_clean=True, max_steps=steps,
                      batch_groups=4, lr=lr, epochs=100, evaluate=False, seed=0)
    tr = Trainer(cfg)
    summary = tr.fit()
    val, _ = evaluate_generation(tr.student, tr.reader, "validation", tr.pad_id, load_tokenizer(student_dir))
    return {"val_nll": val["nll_per_token"], "val_exact_match": val["exact_match"], "s_per_step": summary["s_per_step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--student-layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--out", default="runs/sparse_kd")
    args = ap.parse_args()
    out = Path(args.out)
    root = out / "cache"
    lm = CausalLM(str(smollm2_path()))
    student_dir = make_student(lm, args.student_layers, out / f"student-{args.student_layers}l")
    caches, rows = {}, {}
    for kind, k in KINDS:
        req = CacheRequest(model=str(lm.path), task="condition-drugs", limit=args.limit, variants=1, sparse=kind,
                           sparse_k=k, max_length=args.max_length, max_response_tokens=16, shard_rows=64)
        spec, task = resolve(req, str(lm.path))
        m = precompute(spec, task, lm, str(root))
        caches[name(kind, k)] = root / m.key
        b, n = sparse_bytes(CacheReader(str(root / m.key)))
        rows[name(kind, k)] = {"bytes_per_token": b / n, "tokens": n, "rows_per_s": m.timings["rows_per_s"]}
        print(f"{name(kind, k):14} cache: {m.n_rows} rows, {n} response tokens, {b / n:9.1f} B/token, "
              f"precompute {m.timings['rows_per_s']:.1f} rows/s", flush=True)
    dense_reader = CacheReader(str(caches["dense"]))
    dense_logp = read_batch("dense", dense_reader.read_clean("validation").rows, 1).logp
    s_logits = student_logits_on(student_dir, dense_reader)
    for key, folder in caches.items():
        kind, _, kk = key.partition(" k=")
        rows[key].update(fidelity(CacheReader(str(folder)), kind, int(kk or 1), dense_logp, s_logits))
    t_nll = -float(np.mean(_true_token_logp(dense_reader, dense_logp)))
    results = {"teacher_val_nll": t_nll}
    for key, folder in caches.items():
        t0 = time.perf_counter()
        rows[key].update(train_student(folder, student_dir, out / "runs" / key.replace(" ", ""), args.steps, args.lr,
                                       0.0, 1.0))
        print(f"trained from {key}: val NLL {rows[key]['val_nll']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    ce = train_student(caches["dense"], student_dir, out / "runs" / "ce-only", args.steps, args.lr, 1.0, 0.0)
    results.update(rows=rows, ce_only=ce, args=vars(args))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(rows, ce, t_nll, args)


def _true_token_logp(reader: CacheReader, dense_logp: np.ndarray) -> np.ndarray:
    rows = reader.read_clean("validation").rows
    true = [t for s, n in zip(rows.column("input_ids").to_pylist(), rows.column("prompt_len").to_pylist(), strict=True)
            for t in s[n:]]
    return dense_logp[np.arange(len(true)), true]


def report(rows: dict, ce: dict, t_nll: float, args: argparse.Namespace) -> None:
    vocab_dense = rows["dense"]["bytes_per_token"]
    print(f"\nSmolLM2-135M teacher on condition-drugs (limit {args.limit}); students: its first {args.student_layers} "
          f"layers, {args.steps} steps of distillation alone, lr {args.lr}")
    print(f"{'cache':36} {'B/token':>9} {'KL(p‖p̂)':>9} {'TV':>6} {'loss bias':>10} {'val NLL':>8} {'vs dense':>9} "
          f"{'val EM':>7}")
    d_nll = rows["dense"]["val_nll"]
    for key, r in rows.items():
        kl = "inf" if key.startswith("sampled") else f"{r['kl']:.4f}"
        print(f"{key:36} {r['bytes_per_token']:9.1f} {kl:>9} {r['tv']:6.3f} {r['loss_bias']:10.4f} "
              f"{r['val_nll']:8.4f} {100 * (r['val_nll'] / d_nll - 1):+8.2f}% {r['val_exact_match']:7.3f}")
    for label, b in DISTILLKIT.items():
        print(f"{label:36} {b:9.1f}")
    print(f"{'dense float16 (2 B x vocabulary)':36} {vocab_dense:9.1f}")
    print(f"teacher val NLL {t_nll:.4f}; student trained on the responses alone (cross-entropy, same steps): "
          f"{ce['val_nll']:.4f}")
    small = {k: r for k, r in rows.items() if k.startswith("sampled") and r["bytes_per_token"] <= 64}
    for key, r in small.items():
        peers = [(k2, r2) for k2, r2 in rows.items() if k2.startswith("top-k") and r2["bytes_per_token"] <= 1.5 *
                 r["bytes_per_token"]]
        gap = 100 * (r["val_nll"] / d_nll - 1)
        better = all(r["val_nll"] < r2["val_nll"] for _, r2 in peers)
        near = "yes" if abs(gap) <= 1 else "no"
        print(f"goal, {key} ({r['bytes_per_token']:.0f} B/token): within 1% of dense: {near} ({gap:+.2f}%); "
              f"better than top-k at up to 1.5x its bytes ({', '.join(k for k, _ in peers) or 'none'}): "
              f"{'yes' if better else 'no'}")


if __name__ == "__main__":
    main()
