"""Name -> advantage estimator and name -> policy loss, the way `thinkrl.rewards` registers rewards.

An advantage estimator turns per-sample rewards into per-sample advantages:

    fn(rewards (N,), group_size: int, *, valid (N,) bool | None, **options) -> (N,) float32

A policy loss turns log-probs into a per-token loss (the negated objective, before
aggregation) and the mask of tokens whose gradient it cut:

    fn(logp (N, T), old_logp (N, T), advantages (N,) or (N, T), *, mask (N, T), eps_low, eps_high,
       **options) -> (loss (N, T), clipped (N, T) bool)

Register with `@register_advantage("name")` / `@register_policy_loss("name")` in a module
of `thinkrl.algos`; the package imports them, so the names exist once `thinkrl.algos` is
imported. The trainer picks them by `grpo.advantage_estimator` and `grpo.policy_loss`.
Left out: calling them (the trainers do) and value-model estimators' extra inputs.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "register_advantage", "register_policy_loss",
           "get_advantage", "get_policy_loss"]

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


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


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a policy loss under `name` (returned unchanged)."""
    return _register(POLICY_LOSSES, "policy loss", name)


def get_advantage(name: str) -> Callable:
    """The advantage estimator registered as `name`; ValueError listing the known names otherwise."""
    return _get(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as `name`; ValueError listing the known names otherwise."""
    return _get(POLICY_LOSSES, "policy loss", name)
