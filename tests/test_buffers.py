"""Reused big buffers: a cached cast follows in-place changes of its weight; scratch memory is reused."""

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


def test_cast_entries_go_with_their_weight():
    w = torch.nn.Parameter(torch.randn(4, 4))
    buffers.cast(w, torch.bfloat16)
    key = id(w)
    assert key in buffers._CASTS
    del w
    gc.collect()
    assert key not in buffers._CASTS


def test_scratch_reuses_memory_and_grows():
    a = buffers.scratch("test", (4, 6), torch.float32, "cpu")
    b = buffers.scratch("test", (3, 5), torch.float32, "cpu")  # smaller: a view of the same memory
    assert b.shape == (3, 5) and b.data_ptr() == a.data_ptr()
    c = buffers.scratch("test", (10, 10), torch.float32, "cpu")  # larger: new memory, kept from now on
    assert c.shape == (10, 10) and buffers.scratch("test", (2, 2), torch.float32, "cpu").data_ptr() == c.data_ptr()
    assert buffers.scratch("test", (2, 2), torch.bfloat16, "cpu").dtype == torch.bfloat16
    buffers.clear()
    assert not buffers._SCRATCH
