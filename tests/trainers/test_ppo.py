"""PPO on GRPO's step: per-token advantages through the optimised path, the critic's pieces, a step."""

import pytest
import torch

from thinkrl import rewards
from thinkrl.config import Config
from thinkrl.data.synthetic import sample_problems
from thinkrl.trainers import loop
from thinkrl.trainers.ppo import outcome_on_last_token, ppo_step, token_values, whiten


def test_outcome_sits_on_the_last_valid_token():
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    out = outcome_on_last_token(torch.tensor([1.0, -2.0, 0.5]), mask)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))


def test_whiten_uses_the_masked_entries_only():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    out = whiten(x, torch.tensor([[True, True, False]]))
    s = torch.tensor([1.0, 3.0]).std()
    torch.testing.assert_close(out, torch.tensor([[-1.0 / s, 1.0 / s, 0.0]]), rtol=1e-5, atol=1e-6)


def test_ppo_with_fsdp2_is_refused_before_any_model_loads():
    from thinkrl.config import ConfigError, load_config
    from thinkrl.config_checks import validate

    with pytest.raises(ConfigError, match="grpo.algo=ppo with run.parallel=fsdp2 is left out"):
        validate(load_config(overrides=["grpo.algo=ppo", "run.parallel=fsdp2"]))
    validate(load_config(overrides=["grpo.algo=ppo", "run.parallel=ddp"]))  # data parallelism: allowed


@pytest.mark.parametrize("layout", ["copy", "shared"])
def test_values_are_the_states_before_each_completion_token(tiny_model, tiny_tokenizer, layout):
    """token_values on a batch equals the value model run on each prompt + completion alone."""
    from thinkrl.engine.sampler import SamplingParams, sample
    from thinkrl.models.value_model import VALUE_HEADS

    torch.manual_seed(0)
    vm = VALUE_HEADS[layout](tiny_model).eval()
    prompts = [tiny_tokenizer("1 + 2 =")["input_ids"], tiny_tokenizer("7 * 8 = ? , the")["input_ids"]]
    ro = sample(tiny_model, tiny_tokenizer, prompts, 2, SamplingParams(max_new_tokens=6), torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = token_values(vm, ro, torch.arange(4), tiny_tokenizer.pad_token_id)  # (4, L)
        for n in range(4):
            p, c = ro.prompt_ids[n // 2], ro.completion_ids[n, : ro.lengths[n]].tolist()
            alone = vm(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1, 0]  # (C,)
            torch.testing.assert_close(v[n, : len(c)], alone, atol=1e-5, rtol=1e-5)
            assert (v[n, len(c):] == 0).all()


@pytest.fixture()
def length_reward():
    @rewards.register("test_ppo_length")
    def _length(completions, **_):
        return [float(len(c) % 5) for c in completions]
    yield "test_ppo_length"
    rewards.REWARDS.pop("test_ppo_length")


@pytest.mark.parametrize("layout", ["copy", "shared"])
def test_ppo_step_trains_policy_and_critic(tiny_model, tiny_tokenizer, length_reward, layout):
    cfg = Config()
    g = cfg.grpo
    g.algo, g.prompts_per_step, g.group_size, g.max_new_tokens, g.lr, g.beta, g.mu = "ppo", 2, 4, 10, 1e-2, 0.04, 2
    g.value_head = layout
    cfg.rewards.weights = {length_reward: 1.0}
    state = loop.new_train_state(tiny_model, tiny_tokenizer, cfg, sample_problems(8, "train", 0))
    if layout == "shared":  # the head alone is the critic's; it trains in the policy's optimizer
        assert [p.shape for p in state.value_model.parameters()] == [torch.Size([1, 32]), torch.Size([1])]
        assert state.value_optimizer is None and len(state.optimizer.param_groups) == 2
    policy0 = [p.detach().clone() for p in tiny_model.parameters()]
    critic0 = [p.detach().clone() for p in state.value_model.parameters()]
    m = ppo_step(state, cfg, lambda q: q)
    assert any(not torch.equal(a, b) for a, b in zip(policy0, tiny_model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic0, state.value_model.parameters()))
    for key in ("value/loss", "value/clip_frac", "value/explained_variance", "loss", "kl", "clip_frac"):
        assert key in m and m[key] == m[key], key
    assert state.step == 1


def test_the_copied_critic_steps_once_per_non_empty_minibatch(tiny_model, tiny_tokenizer, length_reward):
    """6 samples in 4 mini-batches: torch.chunk makes 3 (2 rows each), so one process takes 3
    critic steps a pass, not a 4th on no rows (only ranks under torchrun pad to keep in step)."""
    cfg = Config()
    g = cfg.grpo
    g.algo, g.prompts_per_step, g.group_size, g.max_new_tokens, g.minibatches, g.mu = "ppo", 3, 2, 6, 4, 2
    cfg.rewards.weights = {length_reward: 1.0}
    state = loop.new_train_state(tiny_model, tiny_tokenizer, cfg, sample_problems(8, "train", 0))
    steps = []
    state.value_optimizer.register_step_post_hook(lambda *_: steps.append(1))
    ppo_step(state, cfg, lambda q: q)
    assert len(steps) == 3 * g.mu


@pytest.mark.parametrize("layout", ["copy", "shared"])
def test_ppo_resume_restores_the_critic(tmp_path, length_reward, layout):
    """A PPO run cut after its step-2 checkpoint and resumed ends with the same policy and critic."""
    from safetensors.torch import load_file

    from thinkrl.config import load_config
    from thinkrl.models.tiny import SHIPPED_BASE

    def cfg(name):
        return load_config(overrides=[
            f"model.path={SHIPPED_BASE}", f"run.output_dir={tmp_path / name}", "grpo.algo=ppo", "grpo.steps=3",
            "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=12", "grpo.mu=2",
            "data.train_size=16", "data.eval_size=2", "run.eval_samples=1", "run.checkpoint_every=1",
            "run.progress=false", f"rewards.weights={{{length_reward}: 1.0}}", f"grpo.value_head={layout}"])

    straight = loop.train_run(cfg("straight"), log=lambda *_: None)

    def crash_at_2(state, *a, **k):
        if state.step == 2:
            raise KeyboardInterrupt("simulated crash")
        return ppo_step(state, *a, **k)

    with pytest.raises(KeyboardInterrupt):
        loop.train_run(cfg("resumed"), log=lambda *_: None, step_fn=crash_at_2)
    resumed = loop.train_run(None, resume=str(tmp_path / "resumed"), log=lambda *_: None)
    for name in ("model.safetensors", "value_model.safetensors"):
        a = load_file(str(straight / "checkpoints/step-000003" / name))
        b = load_file(str(resumed / "checkpoints/step-000003" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_kl_in_reward_moves_the_penalty_from_the_loss_to_the_advantages(tiny_model, tiny_tokenizer, length_reward,
                                                                       monkeypatch):
    """grpo.kl_in_reward: the advantages are GAE of (outcome − β (log π_old − log π_ref)) per token,
    whitened, and the loss carries no KL term (β = 0 there)."""
    import copy

    from thinkrl.algos import grpo as grpo_math
    from thinkrl.algos.advantages import gae_advantages
    from thinkrl.trainers import grpo as trainer
    from thinkrl.trainers.ppo import kl_penalty

    cfg = Config()
    g = cfg.grpo
    g.algo, g.prompts_per_step, g.group_size, g.max_new_tokens, g.beta, g.kl_in_reward = "ppo", 2, 4, 10, 0.5, True
    cfg.rewards.weights = {length_reward: 1.0}
    state = loop.new_train_state(tiny_model, tiny_tokenizer, cfg, sample_problems(8, "train", 0))
    with torch.no_grad():  # π_ref away from π_θ, so that the penalty is not 0
        for p in state.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    critic = copy.deepcopy(state.value_model)
    seen, betas = {}, []
    real_mb, real_loss = trainer.minibatch_gradients, grpo_math.grpo_loss
    monkeypatch.setattr(trainer, "minibatch_gradients",
                        lambda *a, **k: seen.update(ro=a[2], adv=a[4], ref=a[6]) or real_mb(*a, **k))
    monkeypatch.setattr(grpo_math, "grpo_loss", lambda *a, **k: betas.append(a[5]) or real_loss(*a, **k))
    ppo_step(state, cfg, lambda q: q)
    ro, mask = seen["ro"], seen["ro"].completion_mask
    with torch.no_grad():
        values = token_values(critic, ro, torch.arange(len(ro.texts)), tiny_tokenizer.pad_token_id)
    outcome = torch.tensor([float(len(t) % 5) for t in ro.texts])
    rewards_t = outcome_on_last_token(outcome, mask) - 0.5 * kl_penalty(ro.logprobs, seen["ref"], mask)
    adv, _ = gae_advantages(rewards_t, values=values, mask=mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(seen["adv"], whiten(adv, mask), atol=1e-5, rtol=1e-4)
    assert kl_penalty(ro.logprobs, seen["ref"], mask).abs().sum() > 0.1 and set(betas) == {0.0}
