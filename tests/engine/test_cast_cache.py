"""The bf16 copy of a weight: one per fixed-weights block, current values in every block,
including after torch's fused AdamW (which updates weights without moving `_version`)."""

import gc

import pytest
import torch

from thinkrl.engine import cast_cache as buffers
from thinkrl.engine.logprobs import _TokenLogprobs
from thinkrl.trainers.grpo import make_optimizer


def _fused_adamw_step(w: torch.nn.Parameter) -> None:
    opt, _ = make_optimizer(torch.nn.ParameterList([w]), 1e-2, 0.0, 0)
    w.grad = torch.randn_like(w)
    version = w._version
    opt.step()
    assert w._version == version  # what makes change detection by version unusable


def test_fused_adamw_step_between_casts_outside_a_block():
    w = torch.nn.Parameter(torch.randn(5, 3))
    a = buffers.cast(w, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and torch.equal(a, w.detach().bfloat16())
    _fused_adamw_step(w)
    assert torch.equal(buffers.cast(w, torch.bfloat16), w.detach().bfloat16())
    assert not torch.equal(a, w.detach().bfloat16())


def test_one_copy_per_block_in_kept_memory_current_after_an_update():
    w = torch.nn.Parameter(torch.randn(5, 3))
    with buffers.fixed_weights():
        a = buffers.cast(w, torch.bfloat16)
        with buffers.fixed_weights():  # nested: the same block
            assert buffers.cast(w, torch.bfloat16) is a
    _fused_adamw_step(w)
    with buffers.fixed_weights():
        b = buffers.cast(w, torch.bfloat16)
        assert torch.equal(b, w.detach().bfloat16())  # current values ...
        assert b.data_ptr() == a.data_ptr()  # ... in the same memory
    assert buffers.cast(w, torch.float32) is not None and not buffers.cast(w, torch.float32).requires_grad


def test_new_storage_of_another_shape_gets_its_own_copy():
    w = torch.nn.Parameter(torch.randn(4, 4))
    with buffers.fixed_weights():
        buffers.cast(w, torch.bfloat16)
    w.data = torch.randn(2, 4)
    with buffers.fixed_weights():
        assert torch.equal(buffers.cast(w, torch.bfloat16), w.detach().bfloat16())


def test_entries_go_with_their_weight():
    w = torch.nn.Parameter(torch.randn(4, 4))
    with buffers.fixed_weights():
        buffers.cast(w, torch.bfloat16)
    key = id(w)
    assert key in buffers._CASTS
    del w
    gc.collect()
    assert key not in buffers._CASTS
    buffers.clear()
    assert not buffers._CASTS


def _head_logp(h, w, targets):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return _TokenLogprobs.apply(h, w, targets, 1.0, 4, False)[0]


def test_bf16_head_uses_the_updated_weight_after_a_fused_adamw_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, 8))
    h, targets = torch.randn(6, 8), torch.randint(0, 50, (6,))
    opt, _ = make_optimizer(torch.nn.ParameterList([w]), 0.1, 0.0, 0)
    for _ in range(2):
        with buffers.fixed_weights():
            logp = _head_logp(h, w, targets)
            logp.sum().backward()
        expected = torch.log_softmax((h.bfloat16() @ w.detach().bfloat16().t()).float(), -1)
        assert torch.allclose(logp.detach(), expected.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
        opt.step()
        opt.zero_grad()


def test_a_copy_overwritten_before_backward_fails_loudly():
    w = torch.nn.Parameter(torch.randn(50, 8))
    h, targets = torch.randn(6, 8), torch.randint(0, 50, (6,))
    with buffers.fixed_weights():
        logp = _head_logp(h, w, targets)
    with buffers.fixed_weights():  # a later block re-copies into the saved copy's memory
        _head_logp(h, w, targets)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
