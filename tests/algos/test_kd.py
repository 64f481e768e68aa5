"""Logit-KD losses against hand computations on a 3-token vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from thinkrl.algos.kd import KINDS, TopK, kd_divergence, kd_loss, teacher_topk

P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.2, 0.5, 0.3]  # student


def logits(p):
    return torch.tensor([math.log(x) for x in p])  # softmax(log p) = p


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_hand_computed_values():
    m = [0.5 * a + 0.5 * b for a, b in zip(P_T, P_S)]
    expected = {
        "forward": 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.5) + 0.1 * math.log(0.1 / 0.3),  # 0.5838
        "reverse": 0.2 * math.log(0.2 / 0.7) + 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.1),  # 0.5372
        "jsd": 0.5 * kl(P_T, m) + 0.5 * kl(P_S, m),
    }
    assert expected["forward"] == pytest.approx(0.583815, abs=1e-6)
    assert expected["reverse"] == pytest.approx(0.537176, abs=1e-6)
    for kind, value in expected.items():
        got = kd_loss(logits(P_S)[None], logits(P_T)[None], torch.tensor([True]), kind)
        assert got.item() == pytest.approx(value, abs=1e-6), kind


def test_jsd_beta_weights_the_mixture():
    beta = 0.25
    m = [beta * a + (1 - beta) * b for a, b in zip(P_T, P_S)]
    got = kd_divergence(logits(P_S), logits(P_T), "jsd", beta=beta)
    assert got.item() == pytest.approx(beta * kl(P_T, m) + (1 - beta) * kl(P_S, m), abs=1e-6)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        kd_divergence(logits(P_S), logits(P_T), "jsd", beta=1.0)


def test_temperature_softens_both_and_scales_by_t_squared():
    s, t = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([2.0, 0.0, 0.0])
    T = 2.0
    soft = lambda x: [math.exp(v / T) / sum(math.exp(u / T) for u in x.tolist()) for v in x.tolist()]  # noqa: E731
    got = kd_divergence(s, t, "forward", temperature=T)
    assert got.item() == pytest.approx(T * T * kl(soft(t), soft(s)), abs=1e-6)


def test_mask_averages_over_the_masked_positions_only():
    s = torch.stack([logits(P_S), torch.tensor([5.0, -5.0, 0.0])])  # (2, 3)
    t = torch.stack([logits(P_T), torch.tensor([-5.0, 5.0, 0.0])])  # (2, 3)
    got = kd_loss(s, t, torch.tensor([True, False]), "forward")
    assert got.item() == pytest.approx(kl(P_T, P_S), abs=1e-6)
    zero = kd_loss(s.requires_grad_(), t, torch.tensor([False, False]))
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(s.grad) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_zero_when_student_equals_teacher(kind, temperature):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 11) * 4  # (B, T, V)
    mask = torch.rand(2, 5) > 0.3
    loss = kd_loss(x.clone().requires_grad_(), x, mask, kind, temperature)
    assert abs(loss.item()) < 1e-6
    others = kd_loss(x + torch.randn_like(x), x, mask, kind, temperature)
    assert others.item() > 1e-3


def test_topk_with_full_vocabulary_equals_full_forward_kl():
    torch.manual_seed(1)
    s, t = torch.randn(3, 4, 7, requires_grad=True), torch.randn(3, 4, 7)  # (B, T, V)
    mask = torch.ones(3, 4, dtype=torch.bool)
    for T in (1.0, 2.0):
        full = kd_loss(s, t, mask, "forward", T)
        top = kd_loss(s, teacher_topk(t, 7), mask, "forward", T)
        assert torch.allclose(full, top, atol=1e-6)
        g_full, = torch.autograd.grad(full, s)
        g_top, = torch.autograd.grad(top, s)
        assert torch.allclose(g_full, g_top, atol=1e-6)


def test_topk_renormalises_the_teacher_over_its_support():
    top = teacher_topk(logits(P_T), 2)  # ids [0, 1], log-probs log 0.7, log 0.2
    assert top.ids.tolist() == [0, 1]
    q = [0.7 / 0.9, 0.2 / 0.9]
    expected = q[0] * math.log(q[0] / 0.2) + q[1] * math.log(q[1] / 0.5)
    assert kd_divergence(logits(P_S), top).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["reverse", "jsd"])
def test_topk_refuses_reverse_and_jsd(kind):
    with pytest.raises(ValueError, match="needs the teacher's full distribution"):
        kd_divergence(logits(P_S), teacher_topk(logits(P_T), 2), kind)


def test_shape_and_option_errors():
    with pytest.raises(ValueError, match="share a vocabulary"):
        kd_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="do not match"):
        kd_divergence(torch.zeros(2, 3), TopK(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1)))
    with pytest.raises(ValueError, match="kd kind 'mse'"):
        kd_divergence(torch.zeros(3), torch.zeros(3), "mse")
    with pytest.raises(ValueError, match="temperature 0"):
        kd_divergence(torch.zeros(3), torch.zeros(3), temperature=0)
