"""Sparse per-token targets against dense KL on a tiny vocabulary: storage round trip, unbiasedness, top-k's bias."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from robustkd.shared.sparse import SparseError, check_vocab, index_dtype, read_batch, to_columns
from robustkd.teacher_service.sparse import sampled, top_k
from robustkd.trainer.sparse_losses import dense_kl, sparse_kd_loss

V, T = 16, 6


@pytest.fixture
def teacher() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.log_softmax(torch.randn(T, V, generator=g) * 2, -1)


@pytest.fixture
def student() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(T, V, generator=g)


def loss_and_grad(kind: str, targets, student: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:  # noqa: ANN001
    """Through the storage format: the targets are written as Arrow columns and read back as a batch."""
    table = pa.table(to_columns(kind, [targets], k, V, "uint8"))
    s = student.clone().requires_grad_(True)
    loss = sparse_kd_loss(s, read_batch(kind, table, k))
    loss.backward()
    return float(loss.detach()), s.grad


def dense(teacher: torch.Tensor, student: torch.Tensor) -> tuple[float, torch.Tensor]:
    s = student.clone().requires_grad_(True)
    loss = dense_kl(s, teacher)
    loss.backward()
    return float(loss.detach()), s.grad


def test_dense_kl_is_kl(teacher: torch.Tensor, student: torch.Tensor) -> None:
    ref = torch.nn.functional.kl_div(torch.log_softmax(student, -1), teacher, log_target=True, reduction="sum") / T
    assert dense_kl(student, teacher).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_estimator_is_unbiased(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> None:
    """Mean over many seeded draws: loss -> dense KL + H(p) (a constant), gradient -> the dense gradient."""
    d_loss, d_grad = dense(teacher, student)
    entropy = float(-(teacher.exp() * teacher).sum(-1).mean())
    draws = [loss_and_grad("sampled", sampled(teacher, 12, temperature, "test", i), student, 12) for i in range(1500)]
    mean_loss = np.mean([x for x, _ in draws])
    mean_grad = torch.stack([g for _, g in draws]).mean(0)
    assert mean_loss == pytest.approx(d_loss + entropy, rel=0.02)
    assert (mean_grad - d_grad).abs().max() < 0.01 < d_grad.abs().max()
    one = draws[0][1]
    assert (one - d_grad).abs().max() > 0.02  # a single draw is noisy: the mean is what converges


def test_top_k_is_biased_low_and_blind_to_the_tail(teacher: torch.Tensor, student: torch.Tensor) -> None:
    teacher = torch.log_softmax(teacher / 2, -1)  # a flatter teacher: a quarter of its mass outside its top 4
    d_loss, d_grad = dense(teacher, student)
    loss, grad = loss_and_grad("top-k", top_k(teacher, 4), student, 4)
    assert loss < d_loss  # bucketing the tail can only lose information (data processing inequality)
    # and the bias does not average away: nothing is random, the tail tokens get the wrong pull
    assert (grad - d_grad).abs().max() > 0.2 * d_grad.abs().max()
    # two students that differ only in how they spread the mass outside the teacher's top 4: same top-k loss
    ids = torch.topk(teacher, 4, -1).indices
    tail = torch.ones(T, V, dtype=torch.bool).scatter(-1, ids, False)
    other = student.clone()
    for t in range(T):  # permute the tail logits: the tail's total mass, and so the top-k loss, is unchanged
        vals = other[t][tail[t]]
        other[t][tail[t]] = vals.flip(0)
    assert loss_and_grad("top-k", top_k(teacher, 4), other, 4)[0] == pytest.approx(loss, rel=1e-4)
    assert dense(teacher, other)[0] != pytest.approx(d_loss, rel=1e-3)


def test_top_k_with_every_token_is_dense(teacher: torch.Tensor, student: torch.Tensor) -> None:
    loss, grad = loss_and_grad("top-k", top_k(teacher, V - 1), student, V - 1)
    d_loss, d_grad = dense(teacher, student)
    assert loss == pytest.approx(d_loss, abs=5e-3)  # float16 log-probs


def test_storage_round_trip_and_index_types(teacher: torch.Tensor) -> None:
    rows = [top_k(teacher[:2], 3), top_k(teacher[2:], 3)]
    table = pa.table(to_columns("top-k", rows, 3, V, "uint8"))
    back = read_batch("top-k", table.slice(1, 1), 3)  # a slice: offsets must be rebased
    assert back.n_tokens == T - 2 and (back.ids == rows[1].ids).all()
    np.testing.assert_allclose(back.logp, rows[1].values, atol=1e-2)
    assert table.schema.field("sparse_ids").type == pa.list_(pa.list_(pa.uint8(), 3))
    assert [index_dtype(n) for n in (256, 257, 49152, 70000)] == ["uint8", "uint16", "uint16", "uint32"]
    with pytest.raises(SparseError, match="index_dtype: uint16 .* 70000 tokens"):
        check_vocab(70000, "uint16")
    with pytest.raises(SparseError, match="vocab_size: .* do not fit"):
        index_dtype(2**33)
