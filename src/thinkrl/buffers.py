"""
A parameter's copy in another dtype, kept until the parameter changes.

Why: the bf16 LM-head product needs a bf16 copy of the (tied) head weight: 57 MB for
SmolLM2, a block above glibc's 32 MB heap limit (`thinkrl.allocator`), so casting it afresh
on every call touches new pages each time, and micro-batches of one step, or a frozen
reference model scored every step, would cast the same values again.

`cast(weight, dtype)`: weight.detach().to(dtype), re-copied (into the same memory) only
when the weight changed: in place (its `_version` moved: an optimizer step, a
load_state_dict) or by new storage (`.data = ...`). The copy lives as long as the weight.

Left out: not thread-safe.
"""

from __future__ import annotations

import weakref

import torch

_CASTS: dict[int, tuple] = {}  # id(weight) -> (weakref to it, dtype, (its _version, data_ptr), the copy)


def cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight.detach().to(dtype), cached per weight until it changes in place."""
    if weight.dtype == dtype:
        return weight.detach()
    key = id(weight)
    entry = _CASTS.get(key)
    state = (weight._version, weight.data_ptr())
    if entry is not None and entry[0]() is weight and entry[1] == dtype:
        if entry[2] == state:
            return entry[3]
        copy = entry[3].copy_(weight.detach())  # same memory, new values
    else:
        copy = weight.detach().to(dtype)
    ref = weakref.ref(weight, lambda _, k=key: _CASTS.pop(k, None))  # dropped with the weight
    _CASTS[key] = (ref, dtype, state, copy)
    return copy


def clear() -> None:
    """Drop every kept copy."""
    _CASTS.clear()
