"""Name -> reward function registry.

A reward is a plain function ``fn(completions: list[str], **columns) -> list[float | None]``:
one value per completion, ``None`` meaning "no signal for this sample". ``columns`` are
per-sample lists from the dataset (``answer=[gold, gold, ...]``); a reward takes the
ones it needs by name and swallows the rest with ``**_``.

Register with the decorator::

    @register("accuracy")
    def accuracy_reward(completions, answer, **_): ...

What it leaves out: calling and combining rewards (``thinkrl.rewards.score``), and
importing the modules that register (``thinkrl.rewards`` does that).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["RewardFn", "REWARDS", "register", "get_reward"]

RewardFn = Callable[..., list]  # (completions: list[str], **columns) -> list[float | None]

REWARDS: dict[str, RewardFn] = {}


def _qualname(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: add ``fn`` to :data:`REWARDS` under ``name`` and return it unchanged.

    Re-registering the same function (same module and qualified name, e.g. after a
    module reload) replaces it; a different function under a taken name raises
    ValueError.
    """

    def deco(fn: RewardFn) -> RewardFn:
        old = REWARDS.get(name)
        if old is not None and _qualname(old) != _qualname(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualname(old)}")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return REWARDS[name]
    except KeyError:
        known = ", ".join(sorted(REWARDS)) or "(none)"
        raise ValueError(f"unknown reward {name!r}; known rewards: {known}") from None
