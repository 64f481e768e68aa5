"""Name -> advantage estimator and name -> policy loss, the way `thinkrl.rewards` registers rewards.

An advantage estimator turns per-sample rewards into per-sample advantages:

    fn(rewards (N,), group_size: int, *, valid (N,) bool | None, **options) -> (N,) float32

A policy loss turns log-probs into a per-token loss (the negated objective, before
aggregation) and the mask of tokens whose gradient it cut:

    fn(logp (N, T), old_logp (N, T), advantages (N,) or (N, T), *, mask (N, T), eps_low, eps_high,
       **options) -> (loss (N, T), clipped (N, T) bool)

A policy loss whose token terms depend on other tokens' log-probs (GSPO's sequence ratio)
registers with `token_separable=False`: the trainer then builds no per-token gradient hint
for the LM head (`grpo.token_gradients`, which assumes each token's gradient depends on its
own log-prob; the head's backward checks a hint against the true gradient and recomputes on a
mismatch, so this saves work rather than guarding correctness).

`LOSS_TYPES` maps TRL's `loss_type` names (and `gspo`) to the (aggregation, advantage
scale, policy loss) triple they stand for; `grpo.loss_type` sets the three at once.

Register with `@register_advantage("name")` / `@register_policy_loss("name")` in a module
of `thinkrl.algos`; the package imports them, so the names exist once `thinkrl.algos` is
imported. The trainer picks them by `grpo.advantage_estimator` and `grpo.policy_loss`.
Left out: calling them (the trainers do) and value-model estimators' extra inputs.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "LOSS_TYPES", "register_advantage", "register_policy_loss",
           "get_advantage", "get_policy_loss", "is_token_separable"]

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
NOT_TOKEN_SEPARABLE: set[str] = set()

# loss_type -> (loss_aggregation, advantage_scale, policy_loss). TRL 1.16's GRPOConfig.loss_type
# names; verl spells the aggregation `actor.loss_agg_mode` (seq-mean-token-mean, token-mean,
# seq-mean-token-sum-norm) and the loss `actor.policy_loss.loss_mode` (vanilla, gspo, ...).
LOSS_TYPES: dict[str, tuple[str, str, str]] = {
    "grpo": ("seq_mean_group_mean", "group", "clip"),  # DeepSeekMath Eq. 3: per-sequence mean, group std
    "bnpo": ("token_mean", "group", "clip"),           # token mean (TRL: over the local batch)
    "dapo": ("token_mean", "group", "clip"),           # DAPO: token mean over the whole batch; TRL's default
    "dr_grpo": ("seq_sum_const", "none", "clip"),      # Dr. GRPO: sum / max length, no std division
    "gspo": ("seq_mean_group_mean", "group", "gspo"),  # GSPO: sequence-level ratio
    "cispo": ("token_mean", "group", "cispo"),         # MiniMax-M1: clipped IS weight x log π
}


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        old = table.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"{kind} {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        table[name] = fn
        return fn
    return deco


def _get(table: dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(table))}") from None


def register_advantage(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register an advantage estimator under `name` (returned unchanged)."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str, token_separable: bool = True) -> Callable[[Callable], Callable]:
    """Decorator: register a policy loss under `name` (returned unchanged). token_separable:
    each token's loss term depends on that token's log-prob alone."""
    register = _register(POLICY_LOSSES, "policy loss", name)

    def deco(fn: Callable) -> Callable:
        register(fn)
        (NOT_TOKEN_SEPARABLE.discard if token_separable else NOT_TOKEN_SEPARABLE.add)(name)
        return fn
    return deco


def is_token_separable(name: str) -> bool:
    """Whether the policy loss `name` is a sum of terms each depending on its own token's log-prob."""
    return name not in NOT_TOKEN_SEPARABLE


def get_advantage(name: str) -> Callable:
    """The advantage estimator registered as `name`; ValueError listing the known names otherwise."""
    return _get(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as `name`; ValueError listing the known names otherwise."""
    return _get(POLICY_LOSSES, "policy loss", name)
