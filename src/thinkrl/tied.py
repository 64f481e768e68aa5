"""
One gradient, summed in place, for an input embedding tied to the LM head.

Why: SmolLM2 (like most small models) uses one (V, H) matrix as input embedding and LM
head. Autograd sums the two gradients it receives for that Parameter: the head's dense
(V, H) gradient arrives first (the head is the last op of the forward), the lookup's
afterwards, and torch adds a dense and a sparse gradient out of place (`InputBuffer`:
"ATen doesn't route sparse additions correctly"), and a dense lookup gradient is itself a
new (V, H) tensor. Either way each backward writes a fresh 113 MB block for SmolLM2 and
copies the head's gradient into it: ~90 ms in a SmolLM2 training step on this project's
VM, per micro-batch.

How: inside `tied_embedding(model)` the embedding's lookup is a `_TiedLookup`. Its forward
marks the weight's hand-off slot as waiting. The head's backward (`logprobs._TokenLogprobs`)
asks `defer_head_grad(weight, gw)`: while a lookup with autograd history is waiting, it
parks its gradient in the slot and returns none to autograd. The lookup's backward runs
later in the same backward pass (the lookup is upstream of everything), adds its rows into
the parked gradient in place (`index_add_`) and returns that one dense tensor as the
weight's whole gradient: autograd receives a single gradient, which `AccumulateGrad` takes
over (first micro-batch) or adds into `.grad` in place. `autograd.grad` sees the same sum.
Same math as autograd's sum; only the order of float additions differs.

When a lookup's backward finds nothing parked (an untied head, a head outside thinkrl's
log-prob function) it returns its rows as a sparse gradient, which autograd adds to the
head's as before. Each lookup with history starts a new hand-off (a graph built and never
run backward leaves nothing behind).

Left out: a head whose hidden states were not computed from a lookup inside the block
(`inputs_embeds` supplied from outside) while another lookup is waiting would park its
gradient with nobody to take it; `pending_head_grad` reports that (the trainer checks it
after each backward). Not thread-safe.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
import torch.nn.functional as F


class _Slot:
    """A weight's hand-off: is a lookup with history waiting, and the head gradient parked for it."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weakref.ref(weight)
        self.waiting = False
        self.grad: torch.Tensor | None = None


_SLOTS: dict[int, _Slot] = {}  # id(weight) -> its slot


def _slot(weight: torch.Tensor) -> _Slot | None:
    slot = _SLOTS.get(id(weight))
    return slot if slot is not None and slot.weight() is weight else None


def defer_head_grad(weight: torch.Tensor, grad: torch.Tensor) -> bool:
    """For the head's backward: park `grad` (V, H), the head's gradient for `weight`, for the
    tied lookup's backward and return True; False (nothing parked) when no lookup waits."""
    slot = _slot(weight)
    if slot is None or not slot.waiting:
        return False
    slot.grad = grad if slot.grad is None else slot.grad.add_(grad)
    return True


def pending_head_grad(weight: torch.Tensor) -> bool:
    """A head gradient is parked for `weight` with no lookup backward left to take it."""
    slot = _slot(weight)
    return slot is not None and slot.grad is not None


class _TiedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.shape = padding_idx, weight.shape
        slot = _slot(weight)
        if slot is None:
            slot = _SLOTS[id(weight)] = _Slot(weight)
        slot.waiting, slot.grad = True, None  # a new hand-off for this graph
        ctx.slot = slot
        return F.embedding(ids, weight, padding_idx)  # (..., H)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        slot = ctx.slot
        parked, slot.grad, slot.waiting = slot.grad, None, False
        ids, rows = ids.reshape(-1), g.reshape(-1, g.shape[-1])  # (n,), (n, H)
        if ctx.padding_idx is not None:  # the padding row gets no gradient (as F.embedding)
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        if parked is None:
            return None, torch.sparse_coo_tensor(ids[None], rows, ctx.shape, check_invariants=False), None
        return None, parked.index_add_(0, ids, rows.to(parked.dtype)), None


def _lookup_forward(mod: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    if not (torch.is_grad_enabled() and mod.weight.requires_grad):  # no backward will run: no hand-off
        return F.embedding(ids, mod.weight, mod.padding_idx)
    return _TiedLookup.apply(ids, mod.weight, mod.padding_idx)


def _plain(mod: torch.nn.Embedding) -> bool:
    return mod.max_norm is None and not mod.scale_grad_by_freq and not mod.sparse


@contextlib.contextmanager
def tied_embedding(model: torch.nn.Module, enabled: bool = True):
    """Inside the block a head-tied `nn.Embedding` looks up through `_TiedLookup` (module doc).
    Untied or non-plain embeddings (max_norm, scale_grad_by_freq, sparse) are left alone."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and emb.weight is head.weight
    use = enabled and tied and type(emb) is torch.nn.Embedding and _plain(emb) and "forward" not in emb.__dict__
    if use:
        emb.forward = functools.partial(_lookup_forward, emb)
    try:
        yield
    finally:
        if use:
            del emb.forward
