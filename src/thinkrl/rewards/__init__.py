"""Rule-based rewards (DeepSeek-R1-Zero: accuracy + format) and their weighted combination.

- :data:`REWARDS` / :func:`register` / :func:`get_reward`: the name -> function registry
  (``accuracy``, ``format``; other modules add more with ``@register``).
- :func:`score`: run several rewards on a batch and combine them with weights, never
  letting a broken reward crash training or pass for a 0.

R1-Zero's reward is ``score(..., weights={"accuracy": 1.0, "format": 1.0})``.

What it leaves out: advantages and group normalisation (``thinkrl.algos.grpo``), answer
extraction and checking details (``extract``, ``verify``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from . import code_reward as _code_reward  # noqa: F401  (registers "code", "code_fraction")
from . import format_reward as _format_reward  # noqa: F401  (registers "format")
from . import language_reward as _language_reward  # noqa: F401  (registers "language")
from . import length_reward as _length_reward  # noqa: F401  (registers "overlong")
from . import math_reward as _math_reward  # noqa: F401  (registers "accuracy")
from . import model_reward as _model_reward  # noqa: F401  (registers "reward_model")
from .registry import REWARDS, RewardFn, get_reward, register

__all__ = ["REWARDS", "RewardFn", "register", "get_reward", "ScoreResult", "score"]

log = logging.getLogger(__name__)
_warned: set[str] = set()  # reward names whose crash has been logged


@dataclass
class ScoreResult:
    """Rewards of one batch.

    ``total[i]``: weighted sum for sample i, None if any reward with a non-zero weight
    gave None for it. ``per_reward[name][i]``: each reward's raw value.
    ``failures[name]``: how many samples ``name`` gave None for (crashes included).
    """

    total: list[float | None]
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


def _clean(values: object, n: int) -> list[float | None]:
    """Validate a reward's return value; raises TypeError/ValueError if malformed."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"returned {type(values).__name__}, expected a list")
    if len(values) != n:
        raise ValueError(f"returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, (int, float)) or hasattr(v, "__float__"):
            f = float(v)
            out.append(None if math.isnan(f) else f)
        else:
            raise TypeError(f"returned a {type(v).__name__} value")
    return out


def _run_one(name: str, fn: RewardFn, completions: list[str],
             columns: dict[str, list]) -> list[float | None]:
    n = len(completions)
    try:
        return _clean(fn(completions, **columns), n)
    except Exception as e:  # noqa: BLE001 - a broken reward gives None, not a crash
        if name not in _warned:
            _warned.add(name)
            log.warning("reward %r failed (%s: %s); its samples get None (logged once per "
                        "reward)", name, type(e).__name__, e, exc_info=True)
        return [None] * n


def score(completions: list[str], columns: dict[str, list],
          weights: dict[str, float], options: dict[str, dict] | None = None) -> ScoreResult:
    """Run each reward named in ``weights`` on the batch and combine them.

    ``columns`` maps a column name to one value per completion (e.g. ``{"answer": [...]}``)
    and is passed to every reward as keyword arguments. A reward that raises or returns
    something malformed (not a list, wrong length, non-numbers) gives None for all its
    samples; NaN counts as None. Rewards with weight 0 are computed and reported but do
    not affect ``total``. Unknown names raise ValueError (a configuration error), as do
    columns whose length differs from ``len(completions)``. ``options`` maps a reward name to
    keyword settings of that reward alone (e.g. ``{"accuracy": {"timeout": 5.0}}``); they are
    passed after the columns, so a column cannot shadow them.
    """
    n = len(completions)
    for col, vals in columns.items():
        if len(vals) != n:
            raise ValueError(f"column {col!r} has {len(vals)} values for {n} completions")
    fns = {name: get_reward(name) for name in weights}
    result = ScoreResult(total=[0.0] * n)
    for name, fn in fns.items():
        values = _run_one(name, fn, completions, {**columns, **(options or {}).get(name, {})})
        result.per_reward[name] = values
        result.failures[name] = sum(v is None for v in values)
        w = float(weights[name])
        if w == 0.0:
            continue
        for i, v in enumerate(values):
            t = result.total[i]
            result.total[i] = None if (t is None or v is None) else t + w * v
    return result
