"""The hybrid loss terms, each against a hand computation in plain numpy/math (not the torch code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustkd.trainer.losses import activation_loss, distill_loss, hybrid_loss, task_loss


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


STUDENT = np.array([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]])
TEACHER = np.array([[0.5, 0.5, 3.0], [-1.0, 2.0, 0.1]])


# ---- distill ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_distill_zero_when_student_equals_teacher(tau: float) -> None:
    x = torch.tensor(TEACHER, dtype=torch.float32)
    assert float(distill_loss(x.clone(), x.clone(), tau)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_distill_positive_when_different(tau: float) -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert float(distill_loss(s, t, tau)) > 1e-3


def test_distill_equals_numpy_kl_times_tau_squared() -> None:
    tau = 2.0
    p_s, p_t = np_softmax(STUDENT / tau), np_softmax(TEACHER / tau)
    kl_rows = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1)  # KL(p_t ‖ p_s) per row
    expected = kl_rows.mean() * tau ** 2
    got = distill_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=tau)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # and the direction matters: KL(p_s ‖ p_t) is a different number for this example
    reverse = (p_s * (np.log(p_s) - np.log(p_t))).sum(-1).mean() * tau ** 2
    assert abs(reverse - expected) > 1e-4


def test_distill_gradient_reaches_only_the_student() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    distill_loss(s, t, 2.0).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None
    # the gradient w.r.t. student logits is τ·(p_s − p_t)/B (hand-derived for KL·τ² with softmax(z/τ))
    tau, b = 2.0, STUDENT.shape[0]
    expected = tau * (np_softmax(STUDENT / tau) - np_softmax(TEACHER / tau)) / b
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


# ---- task ------------------------------------------------------------------------------------------------
def test_task_loss_equals_numpy_cross_entropy() -> None:
    labels = np.array([2, 0])
    ce = []
    for row, y in zip(STUDENT, labels, strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        ce.append(log_z - row[y])
    got = task_loss(torch.tensor(STUDENT), torch.tensor(labels))
    assert float(got) == pytest.approx(sum(ce) / len(ce), rel=1e-9)


# ---- activation ------------------------------------------------------------------------------------------
def _acts() -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """2 layers × 3 rows whose differences have whole-number L2 norms: layer 1 → (5, 0, 3), layer 3 → (10, 13, 1)."""
    t1 = np.array([[1.0, 1.0, 1.0], [0.5, -2.0, 4.0], [0.0, 0.0, 0.0]])
    d1 = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    t3 = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, 5.0]])
    d3 = np.array([[6.0, -8.0], [5.0, 12.0], [0.0, -1.0]])
    return {1: t1 + d1, 3: t3 + d3}, {1: t1, 3: t3}


def test_activation_loss_is_mean_of_summed_l2_norms_not_squared() -> None:
    s, t = _acts()
    norms = {1: [5.0, 0.0, 3.0], 3: [10.0, 13.0, 1.0]}
    expected = sum(norms[1][r] + norms[3][r] for r in range(3)) / 3  # (15 + 13 + 4) / 3
    assert expected == pytest.approx(32 / 3)
    got = activation_loss({k: torch.tensor(v) for k, v in s.items()}, {k: torch.tensor(v) for k, v in t.items()})
    assert float(got) == pytest.approx(expected, rel=1e-9)
    squared = sum(norms[1][r] ** 2 + norms[3][r] ** 2 for r in range(3)) / 3
    assert float(got) != pytest.approx(squared)


def test_activation_loss_scale_divides_per_layer() -> None:
    s, t = _acts()
    scale = {1: 2.0, 3: 5.0}
    expected = sum(n1 / 2.0 + n3 / 5.0 for n1, n3 in zip([5.0, 0.0, 3.0], [10.0, 13.0, 1.0], strict=True)) / 3
    got = activation_loss({k: torch.tensor(v) for k, v in s.items()}, {k: torch.tensor(v) for k, v in t.items()},
                          scale=scale)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_activation_loss_zero_when_equal_and_teacher_detached() -> None:
    _, t = _acts()
    same = activation_loss({k: torch.tensor(v) for k, v in t.items()}, {k: torch.tensor(v) for k, v in t.items()})
    assert float(same) == 0.0
    s, t = _acts()
    st = {k: torch.tensor(v, requires_grad=True) for k, v in s.items()}
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in t.items()}
    activation_loss(st, tt).backward()
    assert all(x.grad is not None for x in st.values())
    assert all(x.grad is None for x in tt.values())
    # a float16 teacher (as cached) is compared in the student's dtype
    half = activation_loss({1: torch.tensor(s[1], dtype=torch.float32)}, {1: torch.tensor(t[1], dtype=torch.float16)})
    assert half.dtype == torch.float32 and float(half) == pytest.approx((5 + 0 + 3) / 3, rel=1e-6)


# ---- hybrid ----------------------------------------------------------------------------------------------
def test_hybrid_is_weighted_sum_and_zero_lambda_drops_term() -> None:
    task, distill, act = torch.tensor(0.7), torch.tensor(1.3), torch.tensor(2.5)
    total, logged = hybrid_loss((1.0, 0.5, 0.25), task=task, distill=distill, act=act)
    assert float(total) == pytest.approx(1.0 * 0.7 + 0.5 * 1.3 + 0.25 * 2.5)
    assert logged == pytest.approx({"task": 0.7, "distill": 1.3, "act": 2.5})

    total, logged = hybrid_loss((1.0, 0.0, 0.25), task=task, distill=distill, act=act)
    assert "distill" not in logged and set(logged) == {"task", "act"}
    assert float(total) == pytest.approx(0.7 + 0.25 * 2.5)

    total, logged = hybrid_loss((0.0, 2.0, 0.0), task=task, distill=distill, act=act)
    assert set(logged) == {"distill"} and float(total) == pytest.approx(2.6)

    # a missing term is dropped too
    total, logged = hybrid_loss((1.0, 1.0, 1.0), task=task, distill=None, act=act)
    assert set(logged) == {"task", "act"} and float(total) == pytest.approx(3.2)


def test_hybrid_all_zero_raises() -> None:
    t = torch.tensor(1.0)
    with pytest.raises(ValueError, match="λ"):
        hybrid_loss((0.0, 0.0, 0.0), task=t, distill=t, act=t)
    with pytest.raises(ValueError):
        hybrid_loss((1.0, 1.0, 1.0))


def test_optimiser_step_moves_student_not_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    teacher.eval()  # frozen: not in the optimiser; its parameters still require grad, so only detach protects it
    s_before = [p.detach().clone() for p in student.parameters()]
    t_before = [p.detach().clone() for p in teacher.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    losses = []
    for _ in range(3):
        opt.zero_grad()
        s_out, t_out = student(x), teacher(x)
        loss, logged = hybrid_loss((1.0, 0.5, 0.1), task=task_loss(s_out, y), distill=distill_loss(s_out, t_out, 2.0),
                                   act=activation_loss({1: s_out}, {1: t_out}))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert set(logged) == {"task", "distill", "act"}
    for before, p in zip(s_before, student.parameters(), strict=True):
        assert not torch.equal(before, p.detach())
    for before, p in zip(t_before, teacher.parameters(), strict=True):
        assert torch.equal(before, p.detach())
        assert p.grad is None
    assert losses[-1] < losses[0]


# ---- LDIFS, schedule, class weights ----------------------------------------------------------------------
def test_ldifs_by_hand() -> None:
    from robustkd.trainer.losses import ldifs_loss

    rng = np.random.default_rng(0)
    s = {1: rng.normal(size=(3, 4)), 2: rng.normal(size=(3, 4))}
    t = {1: rng.normal(size=(3, 4)), 2: 5 * s[2]}  # layer 2: the same direction, another scale -> distance 0

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    expected = np.mean([((unit(s[1]) - unit(t[1])) ** 2).mean(1), np.zeros(3)], axis=0).mean()
    got = ldifs_loss({k: torch.tensor(v) for k, v in s.items()}, {k: torch.tensor(v) for k, v in t.items()})
    assert float(got) == pytest.approx(expected)


def test_reg_schedule_factors() -> None:
    from robustkd.trainer.losses import reg_factor

    assert [reg_factor("constant", s, 4) for s in range(4)] == [1.0] * 4
    assert [reg_factor("linear", s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert reg_factor("cosine", 0, 10) == 1.0 and reg_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert reg_factor("cosine", 10, 10) == pytest.approx(0.0)


def test_balanced_class_weights_make_classes_weigh_alike() -> None:
    from robustkd.trainer.losses import balanced_class_weights

    w = balanced_class_weights([80, 20])
    assert w.tolist() == pytest.approx([100 / 160, 100 / 40])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    weights = w[labels]
    assert float(task_loss(logits, labels, w)) == pytest.approx(float((per_row * weights).sum() / weights.sum()))
