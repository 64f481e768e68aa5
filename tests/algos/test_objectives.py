"""Advantage estimators and policy losses beside GRPO's, against hand-computed values."""

import math

import pytest
import torch

from thinkrl.algos import grpo, registry
from thinkrl.algos.advantages import gae_advantages, reinforce_pp_advantages, rloo_advantages
from thinkrl.algos.policy_losses import cispo_loss, gspo_loss
from thinkrl.config import Config, ConfigError
from thinkrl.config_checks import validate


def test_rloo_leave_one_out_by_hand():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # a None reward: left out of the others' means; a group with one valid sample: 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 0.0])
    valid = torch.tensor([True, False, True, True, True, False])
    adv = rloo_advantages(r, 3, valid=valid)
    torch.testing.assert_close(adv, torch.tensor([1.0, 0.0, -1.0, -4.0, 4.0, 0.0]))
    assert rloo_advantages(torch.tensor([3.0, 1.0]), 2, valid=torch.tensor([True, False])).tolist() == [0.0, 0.0]


def test_reinforce_pp_by_hand():
    adv = reinforce_pp_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2)
    s = math.sqrt((0.25 + 0.25) / 3)  # std of the centred values [0.5, -0.5, 0, 0] (Bessel)
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, 0.0, 0.0]), atol=1e-5, rtol=1e-5)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae_advantages(rewards, values=values, mask=mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv[0], torch.tensor([0.225, 0.25, 0.3]))  # δ = 0.1, 0.1, 0.3
    torch.testing.assert_close(ret[0], torch.tensor([0.725, 0.85, 1.0]))
    adv, _ = gae_advantages(rewards, values=values, mask=mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv[1], torch.tensor([0.70, 0.6, 0.0]))  # V past the last token is 0, not 9


def test_gspo_sequence_ratio_by_hand():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.3, 5.0], [-0.1, -0.1, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss, clipped = gspo_loss(logp, old, torch.tensor([1.0, -1.0]), mask, eps_low=0.2, eps_high=0.2)
    # row 0: s = exp(0.2) = 1.2214 > 1.2, A > 0: clipped at 1.2; row 1: s = exp(-0.1), inside
    torch.testing.assert_close(loss[0], torch.full((3,), -1.2))
    torch.testing.assert_close(loss[1], torch.full((3,), math.exp(-0.1)))
    assert clipped[0].all() and not clipped[1].any()
    total = grpo.aggregate_loss(loss, mask, "seq_mean_group_mean")
    total.backward()
    # d/dlogp_t of s·(-A)/2 for row 1 = s/|o|/2 at each of its two tokens; row 0 clipped: no gradient
    g = math.exp(-0.1) / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [g, g, 0.0]]))


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    logp = torch.tensor([[math.log(0.5), math.log(0.3)]], requires_grad=True)
    old = torch.tensor([[math.log(0.25), math.log(0.3)]])
    loss, clipped = cispo_loss(logp, old, torch.tensor([1.0]), eps_low=0.2, eps_high=0.2)
    # token 0: ρ = 2 -> weight 1.2; token 1: ρ = 1 -> weight 1
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.2 * math.log(0.5), -math.log(0.3)]]))
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.2, -1.0]]))  # PPO's min would zero token 0
    ppo_logp = logp.detach().clone().requires_grad_()
    grpo.clipped_surrogate(ppo_logp, old, torch.tensor([1.0]))[0].sum().backward()
    assert ppo_logp.grad[0, 0] == 0


@pytest.mark.parametrize("loss_type, triple", list(registry.LOSS_TYPES.items()))
def test_loss_type_sets_the_triple(loss_type, triple):
    cfg = Config()
    cfg.grpo.loss_type = loss_type
    validate(cfg)
    assert (cfg.grpo.loss_aggregation, cfg.grpo.advantage_scale, cfg.grpo.policy_loss) == triple


def test_loss_type_and_estimator_names_are_checked():
    cfg = Config()
    cfg.grpo.loss_type = "ppo2"
    with pytest.raises(ConfigError, match="grpo.loss_type='ppo2'; choose one of grpo, bnpo, dapo"):
        validate(cfg)
    cfg = Config()
    cfg.grpo.advantage_estimator = "gae"
    with pytest.raises(ConfigError, match="gae needs a value model"):
        validate(cfg)


def test_only_gspo_is_not_token_separable():
    assert [n for n in sorted(registry.POLICY_LOSSES) if not registry.is_token_separable(n)] == ["gspo"]
