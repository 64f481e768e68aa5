"""PPO's clipped value loss and the Bradley–Terry loss against hand-computed values."""

import math

import pytest
import torch

from thinkrl.algos.preference import bradley_terry_loss, pair_accuracy
from thinkrl.algos.value import clipped_value_loss


def test_clipped_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.5, 9.0]], requires_grad=True)  # the last token is padding
    old = torch.tensor([[0.5, 0.4, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # token 0: plain (1-2)^2 = 1; clipped V_old + 0.2 = 0.7 -> (0.7-2)^2 = 1.69 -> 1.69 (clipped larger)
    # token 1: plain 0.25; clipped 0.4 + 0.1 = 0.5 -> 0.25 -> 0.25 (equal: not counted as clipped)
    loss, frac = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.25) / 2)
    assert frac.item() == pytest.approx(0.5)
    loss.backward()  # token 0's gradient is cut (the clipped branch is constant in V); token 1 keeps 2·(V−R)/2/2
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5 * 0.5, 0.0]]))
    plain, _ = clipped_value_loss(values.detach(), old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 0.25) / 2)


def test_bradley_terry_loss_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-1))) + math.log(2) - math.log(1 / (1 + math.exp(2)))) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected)
    assert pair_accuracy(chosen, rejected) == pytest.approx(1 / 3)  # the tie counts as wrong
    big = torch.tensor([100.0]), torch.tensor([-100.0])
    assert bradley_terry_loss(*big).item() == pytest.approx(0.0, abs=1e-30)  # stable, no overflow
    assert bradley_terry_loss(big[1], big[0]).item() == pytest.approx(200.0)
