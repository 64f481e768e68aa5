"""Advantage estimators and policy losses by name: the registry, and that the trainer uses it."""

import pytest
import torch

from thinkrl.algos import grpo, registry
from thinkrl.config import Config, ConfigError
from thinkrl.config_checks import validate
from thinkrl.data.synthetic import sample_problems
from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer


def test_the_papers_choices_are_registered_under_their_names():
    assert registry.get_advantage("grpo") is grpo.group_advantages
    assert registry.get_policy_loss("clip") is grpo.clipped_surrogate


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown policy loss 'nosuch'; choose one of .*clip"):
        registry.get_policy_loss("nosuch")
    with pytest.raises(ValueError, match="unknown advantage estimator 'nosuch'; choose one of .*grpo"):
        registry.get_advantage("nosuch")


def test_a_taken_name_is_not_silently_replaced():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_policy_loss("clip")(lambda *a, **k: None)
    registry.register_policy_loss("clip")(grpo.clipped_surrogate)  # the same function again: fine
    assert registry.POLICY_LOSSES["clip"] is grpo.clipped_surrogate


@pytest.fixture()
def halved_clip():
    """A registered policy loss: the clipped surrogate times 0.5."""
    @registry.register_policy_loss("test_half")
    def half(logp, old_logp, advantages, *, mask, eps_low, eps_high):
        loss, clipped = grpo.clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
        return 0.5 * loss, clipped
    yield "test_half"
    registry.POLICY_LOSSES.pop("test_half")


def test_grpo_loss_uses_the_named_policy_loss(halved_clip):
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)  # (N, T)
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.rand(3, 5, generator=g) > 0.3
    full, _ = grpo.grpo_loss(logp, old, adv, mask)
    half, _ = grpo.grpo_loss(logp, old, adv, mask, policy_loss=halved_clip)
    assert torch.allclose(half, 0.5 * full) and full.abs() > 0


def test_config_names_are_checked_against_the_registry(halved_clip):
    cfg = Config()
    cfg.grpo.policy_loss = "nosuch"
    with pytest.raises(ConfigError, match="grpo.policy_loss='nosuch'; choose one of cispo, clip, gspo"):
        validate(cfg)
    cfg.grpo.policy_loss = halved_clip
    validate(cfg)  # a registered name is accepted
    cfg.grpo.advantage_estimator = "nosuch"
    with pytest.raises(ConfigError, match="grpo.advantage_estimator='nosuch'; choose one of gae, grpo, reinforce_pp, rloo"):
        validate(cfg)


def test_the_trainer_takes_both_from_the_config(tiny_model, tiny_tokenizer):
    seen = {}

    @registry.register_advantage("test_spy")
    def spy(rewards, group_size, *, valid=None, **options):
        seen["advantage"] = (tuple(rewards.shape), group_size, options)
        return torch.zeros(rewards.shape)

    @registry.register_policy_loss("test_spy")
    def spy_loss(logp, old_logp, advantages, *, mask, eps_low, eps_high):
        seen["loss"] = tuple(logp.shape)
        return (logp * 0).sum() + 0 * logp, torch.zeros_like(logp, dtype=torch.bool)

    try:
        cfg = Config()
        cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4, 8
        cfg.grpo.beta, cfg.grpo.skip_zero_advantage = 0.0, False
        cfg.grpo.advantage_estimator = cfg.grpo.policy_loss = "test_spy"
        opt, sched = make_optimizer(tiny_model, 1e-3, 0.0, 0)
        state = TrainState(tiny_model, tiny_tokenizer, opt, sched, PromptStream(sample_problems(8, "train", 0), 0),
                           torch.Generator().manual_seed(0))
        grpo_step(state, cfg, lambda q: q)
    finally:
        registry.ADVANTAGE_ESTIMATORS.pop("test_spy")
        registry.POLICY_LOSSES.pop("test_spy")
    assert seen["advantage"] == ((8,), 4, {"scale": "group"})
    assert seen["loss"][0] == 8
