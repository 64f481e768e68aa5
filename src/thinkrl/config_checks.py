"""The run configuration's checks: every option's choices and ranges, and the combinations
left out, each a ConfigError naming the option, before any model loads (`thinkrl.config`
holds the options themselves and their loading). Imports no torch at module import: the
modules behind the choices (rewards, registries, devices) are imported when a check runs.
"""

from __future__ import annotations

from pathlib import Path

from thinkrl.config import BaseModelConfig, Config, ConfigError, is_few_shot
from thinkrl.models import lora


def validate(cfg: Config) -> Config:
    """Check choices before anything expensive runs; raises ConfigError naming the option."""
    from thinkrl import rewards
    from thinkrl.algos import grpo, registry, sampler_correction
    from thinkrl.data.templates import PROMPT_BUILDERS
    from thinkrl.engine import device
    from thinkrl.engine.cpu import cpu_has_fast_bf16

    g = cfg.grpo
    if g.loss_type:
        if g.loss_type not in registry.LOSS_TYPES:
            raise ConfigError(f"grpo.loss_type={g.loss_type!r}; choose one of {', '.join(registry.LOSS_TYPES)}")
        g.loss_aggregation, g.advantage_scale, g.policy_loss = registry.LOSS_TYPES[g.loss_type]
    if g.advantage_estimator == "gae":
        raise ConfigError("grpo.advantage_estimator=gae needs a value model (PPO); GRPO's estimators: grpo, rloo, "
                          "reinforce_pp")
    choices = {
        "grpo.advantage_estimator": (g.advantage_estimator, tuple(sorted(registry.ADVANTAGE_ESTIMATORS))),
        "grpo.policy_loss": (g.policy_loss, tuple(sorted(registry.POLICY_LOSSES))),
        "grpo.algo": (g.algo, ("grpo", "ppo")),
        "grpo.value_head": (g.value_head, ("copy", "shared")),
        "grpo.advantage_scale": (g.advantage_scale, grpo.ADVANTAGE_SCALES),
        "grpo.loss_aggregation": (g.loss_aggregation, grpo.LOSS_AGGREGATIONS),
        "grpo.kl_estimator": (g.kl_estimator, grpo.KL_ESTIMATORS),
        "data.template": (cfg.data.template, tuple(PROMPT_BUILDERS)),
        "model.dtype": (cfg.model.dtype, ("float32", "bfloat16")),
        "run.precision": (cfg.run.precision, ("auto", "fp32", "bf16")),
        "run.parallel": (cfg.run.parallel, ("ddp", "fsdp2")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; choose one of {', '.join(allowed)}")
    for name in cfg.rewards.weights:
        if name not in rewards.REWARDS:
            raise ConfigError(f"rewards.weights: unknown reward {name!r}; known: {', '.join(sorted(rewards.REWARDS))}")
    positive = {"grpo.steps": g.steps, "grpo.prompts_per_step": g.prompts_per_step, "grpo.group_size": g.group_size,
                "grpo.mu": g.mu, "grpo.minibatches": g.minibatches, "grpo.max_new_tokens": g.max_new_tokens,
                "run.eval_samples": cfg.run.eval_samples}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value}; must be at least 1")
    ranges = {  # key: (value, allowed, what the range is)
        "grpo.temperature": (g.temperature, g.temperature > 0, "> 0 (0 makes every sample of a group the same)"),
        "grpo.top_p": (g.top_p, 0 < g.top_p <= 1, "in (0, 1]"),
        "run.eval_temperature": (cfg.run.eval_temperature, cfg.run.eval_temperature >= 0, ">= 0 (0 = greedy)"),
        "run.eval_top_p": (cfg.run.eval_top_p, 0 < cfg.run.eval_top_p <= 1, "in (0, 1]"),
        "grpo.epsilon_low": (g.epsilon_low, g.epsilon_low >= 0, ">= 0"),
        "grpo.epsilon_high": (g.epsilon_high, g.epsilon_high >= 0, ">= 0"),
        "grpo.beta": (g.beta, g.beta >= 0, ">= 0"),
        "grpo.lr": (g.lr, g.lr > 0, "> 0"),
        "grpo.max_grad_norm": (g.max_grad_norm, g.max_grad_norm > 0, "> 0"),
        "rewards.verify_timeout": (cfg.rewards.verify_timeout, cfg.rewards.verify_timeout > 0, "> 0"),
        "grpo.gae_gamma": (g.gae_gamma, 0 <= g.gae_gamma <= 1, "in [0, 1]"),
        "grpo.gae_lambda": (g.gae_lambda, 0 <= g.gae_lambda <= 1, "in [0, 1]"),
        "grpo.value_lr": (g.value_lr, g.value_lr >= 0, ">= 0 (0 = grpo.lr)"),
        "grpo.value_clip": (g.value_clip, g.value_clip > 0, "> 0"),
        "grpo.value_coef": (g.value_coef, g.value_coef > 0, "> 0"),
    }
    for key, (value, ok, allowed) in ranges.items():
        if not ok:
            raise ConfigError(f"{key}={value}; must be {allowed}")
    try:  # before any model loads: a GPU that is not there, a misspelt device
        on_cpu = device.resolve(cfg.run.device) == "cpu"
    except device.DeviceError as e:
        raise ConfigError(str(e)) from None
    if cfg.run.precision == "bf16" and on_cpu and not cpu_has_fast_bf16():
        raise ConfigError("run.precision=bf16: this CPU has no bf16 matrix instructions (AVX512_BF16 or AMX), so bf16 "
                          "products would run ~100x slower than fp32 here; use run.precision=fp32 (the default)")
    if cfg.data.few_shot and (cfg.data.template != "chat" or not is_few_shot(cfg.data.few_shot)):
        raise ConfigError("data.few_shot: a list of [question, response] string pairs, with data.template=chat")
    if g.sampler_correction not in sampler_correction.CORRECTIONS:
        raise ConfigError(f"grpo.sampler_correction={g.sampler_correction!r}; choose one of "
                          f"{', '.join(sampler_correction.CORRECTIONS)}")
    if not 0 <= g.sampler_correction_min < g.sampler_correction_max:
        raise ConfigError(f"grpo.sampler_correction_min={g.sampler_correction_min}, _max={g.sampler_correction_max}: "
                          "need 0 <= min < max")
    if cfg.run.log_samples_every < 0:
        raise ConfigError(f"run.log_samples_every={cfg.run.log_samples_every}; must be >= 0 (0 = never)")
    if g.dynamic_sampling_max_rounds < 0:
        raise ConfigError(f"grpo.dynamic_sampling_max_rounds={g.dynamic_sampling_max_rounds}; must be >= 0")
    if not 0 <= cfg.rewards.overlong_cache <= g.max_new_tokens:
        raise ConfigError(f"rewards.overlong_cache={cfg.rewards.overlong_cache}; must be in [0, grpo.max_new_tokens="
                          f"{g.max_new_tokens}] (0 = a fifth of it)")
    if "reward_model" in cfg.rewards.weights and not Path(cfg.rewards.reward_model_path or "/nonexistent").is_dir():
        raise ConfigError(f"rewards.reward_model_path={cfg.rewards.reward_model_path!r}: the `reward_model` reward needs "
                          "a reward model directory (thinkrl rm ... -> DIR/final_model)")
    if g.kl_in_reward and (g.algo != "ppo" or g.beta <= 0):
        raise ConfigError("grpo.kl_in_reward=true needs grpo.algo=ppo and grpo.beta > 0 (β weighs the per-token penalty)")
    if g.algo == "ppo" and cfg.run.parallel == "fsdp2":
        raise ConfigError("grpo.algo=ppo with run.parallel=fsdp2 is left out (the critic is not sharded): use run.parallel=ddp")
    m = cfg.model
    fsdp2_key = "run.parallel" if cfg.run.parallel == "fsdp2" else None
    problem = m.lora_r and (lora.check(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules, "model.",
                                       m.lora_save_merged, fsdp2_key) or (
        "grpo.ref_reset_every with LoRA is left out (it would merge the adapter into the base)" if g.ref_reset_every else None))
    if problem:
        raise ConfigError(problem)
    if g.micro_batch_size < 0:
        raise ConfigError(f"grpo.micro_batch_size={g.micro_batch_size}; must be 0 (whole mini-batch) or positive")
    if g.group_size < 2:
        raise ConfigError("grpo.group_size must be at least 2: advantages compare samples within a group")
    if g.minibatches > g.prompts_per_step * g.group_size:
        raise ConfigError(f"grpo.minibatches={g.minibatches} exceeds the {g.prompts_per_step * g.group_size} samples per step")
    return cfg


def validate_base(b: BaseModelConfig, where: str = "base") -> BaseModelConfig:
    """Check a base model's options before pre-training starts; raises ConfigError naming the option."""
    for name in ("corpus_size", "vocab_size", "hidden_size", "layers", "heads", "intermediate_size", "steps",
                 "batch_size"):
        if getattr(b, name) < 1:
            raise ConfigError(f"{where}.{name}={getattr(b, name)}; must be at least 1")
    if b.hidden_size % b.heads:
        raise ConfigError(f"{where}.hidden_size={b.hidden_size} must be a multiple of {where}.heads={b.heads}")
    if not (0 <= b.reason_share and 0 <= b.untagged_share and b.reason_share + b.untagged_share <= 1):
        raise ConfigError(f"{where}.reason_share and untagged_share must be in [0, 1] with a sum of at most 1")
    if not b.lr > 0:
        raise ConfigError(f"{where}.lr={b.lr}; must be positive")
    return b
