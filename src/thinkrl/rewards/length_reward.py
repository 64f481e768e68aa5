"""DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13) as a reward: `overlong`.

With L_max the generation limit and L_cache the punishment interval before it, a completion
of |y| tokens gets

    0                               if |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
    -1                              if |y| > L_max

added to its other rewards (weight it in `rewards.weights`; DAPO: 1). The trainer passes each
completion's token count as the column `completion_length` and the two lengths as this
reward's options (`grpo.max_new_tokens`, `rewards.overlong_cache`), as TRL's
`get_soft_overlong_punishment(max_completion_len, soft_punish_cache)` takes them.
Left out: DAPO's overlong filtering, which is `grpo.mask_truncated`, not a reward.
"""

from __future__ import annotations

from .registry import register

__all__ = ["overlong_penalty", "overlong_reward"]


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """The punishment of one completion of `length` tokens (see the module docstring)."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"overlong: cache_length={cache_length} must be in (0, max_length={max_length}]")
    if length <= max_length - cache_length:
        return 0.0
    if length <= max_length:
        return (max_length - cache_length - length) / cache_length
    return -1.0


@register("overlong")
def overlong_reward(completions: list[str], completion_length: list[int], *, max_length: int, cache_length: int,
                    **_) -> list[float | None]:
    """DAPO's soft overlong punishment per completion, from the `completion_length` column (tokens)."""
    return [overlong_penalty(int(n), max_length, cache_length) for n in completion_length]
