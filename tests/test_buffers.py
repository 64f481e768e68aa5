"""The cached dtype copy of a weight follows the weight's changes and goes with it."""

import gc

import torch

from thinkrl import buffers


def test_cast_is_cached_until_the_weight_changes_in_place():
    w = torch.nn.Parameter(torch.randn(5, 3))
    a = buffers.cast(w, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and torch.equal(a, w.detach().bfloat16())
    assert buffers.cast(w, torch.bfloat16) is a  # unchanged weight: the same copy, no new cast
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step
    b = buffers.cast(w, torch.bfloat16)
    assert torch.equal(b, w.detach().bfloat16())  # new values ...
    assert b.data_ptr() == a.data_ptr()  # ... in the same memory
    assert buffers.cast(w, torch.float32) is not None and not buffers.cast(w, torch.float32).requires_grad


def test_cast_follows_new_storage():
    w = torch.nn.Parameter(torch.randn(4, 4))
    buffers.cast(w, torch.bfloat16)
    w.data = torch.randn(4, 4)  # keeps _version: caught by the storage pointer
    assert torch.equal(buffers.cast(w, torch.bfloat16), w.detach().bfloat16())


def test_cast_entries_go_with_their_weight():
    w = torch.nn.Parameter(torch.randn(4, 4))
    buffers.cast(w, torch.bfloat16)
    key = id(w)
    assert key in buffers._CASTS
    del w
    gc.collect()
    assert key not in buffers._CASTS
    buffers.clear()
    assert not buffers._CASTS
