"""
A parameter's copy in another dtype, made once per block of unchanged weights.

Why: the bf16 LM-head product needs a bf16 copy of the (tied) head weight: 57 MB for
SmolLM2. Casting it afresh on every call costs a 57 MB copy each time (and, before
`thinkrl.engine.allocator` served such blocks from the heap, new pages), and the micro-batches of
one update, or a frozen reference model scored every step, would cast the same values again.

`cast(weight, dtype)`: weight.detach().to(dtype). Inside `fixed_weights()` (a block whose
caller promises the weights do not change: the micro-batches of one optimizer update, a
scoring pass) each weight is copied once per block, into memory kept from block to block;
outside any block every call makes a new copy. A graph that saved a copy and is run
backward after a later block overwrote it fails in autograd's in-place check (the copy is
saved with `save_for_backward`), never silently.

Why a declared block and not change detection: torch's fused AdamW (what `make_optimizer`
uses) updates parameters without moving their `_version`, and comparing values costs as
much as the copy.

Left out: not thread-safe.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

_CASTS: dict[int, tuple] = {}  # id(weight) -> (weakref to it, the block it was copied in, the copy)
_block: int | None = None  # the id of the `fixed_weights()` block being run, if any
_blocks = 0


@contextlib.contextmanager
def fixed_weights():
    """Declare that no weight changes inside: each `cast` is copied once per block
    (nested blocks belong to the outermost)."""
    global _block, _blocks
    if _block is not None:
        yield
        return
    _blocks += 1
    _block = _blocks
    try:
        yield
    finally:
        _block = None


def cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight.detach().to(dtype): inside a `fixed_weights` block copied once per block into
    memory kept per weight; outside any block a new tensor on every call."""
    if weight.dtype == dtype:
        return weight.detach()
    if _block is None:
        return weight.detach().to(dtype)
    key = id(weight)
    entry = _CASTS.get(key)
    if entry is not None and entry[0]() is weight and entry[2].dtype == dtype and entry[2].shape == weight.shape:
        if entry[1] == _block:
            return entry[2]
        copy = entry[2].copy_(weight.detach())  # same memory, current values
    else:
        copy = weight.detach().to(dtype)
    ref = weakref.ref(weight, lambda _, k=key: _CASTS.pop(k, None))  # dropped with the weight
    _CASTS[key] = (ref, _block, copy)
    return copy


def clear() -> None:
    """Drop every kept copy."""
    _CASTS.clear()
