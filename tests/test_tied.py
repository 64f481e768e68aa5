"""thinkrl.tied: a head-tied embedding gets the same gradient as autograd's own sum, as one dense tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl import tied
from thinkrl.logprobs import completion_logprobs, grouped_completion_logprobs


def _model(tie: bool = True, pad: int | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64, tie_word_embeddings=tie,
                      pad_token_id=pad)
    return LlamaForCausalLM(cfg)


PROMPTS = [[5, 6, 7], [8, 9]]
GROUP = torch.tensor([0, 0, 1, 1])  # (N,)
COMP = torch.tensor([[3, 4, 5, 6, 7], [9, 9, 2, 1, 1], [4, 4, 4, 8, 2], [10, 11, 12, 13, 14]])  # (N, L)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)


def _grouped(model, rows, chunk=3):
    logp, _ = grouped_completion_logprobs(model, PROMPTS, GROUP[rows], COMP[rows], MASK[rows], 0, 0.7, chunk)
    return (logp * MASK[rows]).sum()


def _grads(model, swap: bool, loss_of, micro_batches):
    """.grad of every parameter after one backward per micro-batch, with or without the swap."""
    model.zero_grad(set_to_none=True)
    for rows in micro_batches:
        with tied.tied_embedding(model, enabled=swap):
            loss = loss_of(model, rows)
        loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("micro_batches", [[torch.arange(4)], [torch.tensor([0, 1]), torch.tensor([2, 3])]])
def test_same_gradients_as_autograds_sum_and_the_head_grad_is_handed_on(micro_batches, monkeypatch):
    model = _model()
    plain = _grads(model, False, _grouped, micro_batches)
    handed = []
    defer = tied.defer_head_grad
    monkeypatch.setattr(tied, "defer_head_grad", lambda w, g: handed.append(defer(w, g)) or handed[-1])
    swapped = _grads(model, True, _grouped, micro_batches)
    assert handed == [True] * len(micro_batches)  # every head gradient went through the lookup
    assert not any(g.is_sparse for g in swapped)
    for a, b in zip(plain, swapped):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert "forward" not in model.get_input_embeddings().__dict__  # swap undone


def test_plain_completion_logprobs_path_and_autograd_grad():
    """`autograd.grad` (no .grad, no AccumulateGrad) sees the same sum: it arrives by a real edge."""
    model = _model()
    w = model.get_input_embeddings().weight
    ids = torch.tensor([[1, 5, 6, 7, 3, 4, 5], [1, 1, 8, 9, 9, 2, 6]])
    attn = (ids != 1).long()
    pos = (attn.cumsum(1) - 1).clamp(min=0)

    def loss():
        logp, _ = completion_logprobs(model, ids, attn, pos, 3, 1.0, 2)
        return logp.sum()

    (ref,) = torch.autograd.grad(loss(), [w])
    with tied.tied_embedding(model):
        out = loss()
    (got,) = torch.autograd.grad(out, [w])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_a_graph_never_run_backward_leaves_nothing_behind():
    model = _model()
    ref = _grads(model, False, _grouped, [torch.arange(4)])
    with tied.tied_embedding(model):
        _grouped(model, torch.tensor([0, 1]))  # built, dropped
        loss = _grouped(model, torch.arange(4))
    model.zero_grad(set_to_none=True)
    loss.backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_no_grad_lookup_starts_no_hand_off():
    model = _model()
    w = model.get_input_embeddings().weight
    with tied.tied_embedding(model), torch.no_grad():
        _grouped(model, torch.arange(4))
    slot = tied._slot(w)
    assert slot is None or not slot.waiting


def test_two_graphs_run_backward_in_either_order():
    """Two forwards before their backwards: whichever head finds the lookup waiting hands its
    gradient on; the other goes to autograd as usual. The total is the same."""
    model = _model()
    a, b = torch.tensor([0, 1]), torch.tensor([2, 3])
    ref = _grads(model, False, _grouped, [a, b])
    for first_back in (0, 1):
        model.zero_grad(set_to_none=True)
        with tied.tied_embedding(model):
            losses = [_grouped(model, a), _grouped(model, b)]
        losses[first_back].backward()
        losses[1 - first_back].backward()
        for r, p in zip(ref, model.parameters()):
            torch.testing.assert_close(p.grad, r, atol=1e-6, rtol=1e-5)
        assert not tied.pending_head_grad(model.get_input_embeddings().weight)


def test_padding_row_gets_no_lookup_gradient():
    """As F.embedding(padding_idx=...): lookups of the padding id add nothing to its row, even
    where that id is a real input token whose embedding the loss depends on."""
    model = _model(pad=0)
    assert model.get_input_embeddings().padding_idx == 0
    comp = COMP.clone()
    comp[:, 1] = 0  # id 0 as an input token that later tokens attend to

    def loss_of(model, rows):
        logp, _ = grouped_completion_logprobs(model, PROMPTS, GROUP[rows], comp[rows], MASK[rows], 0, 1.0, 3)
        return (logp * MASK[rows]).sum()

    ref = _grads(model, False, loss_of, [torch.arange(4)])
    got = _grads(model, True, loss_of, [torch.arange(4)])
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_untied_model_is_left_alone():
    model = _model(tie=False)
    with tied.tied_embedding(model):
        assert "forward" not in model.get_input_embeddings().__dict__
    ref = _grads(model, False, _grouped, [torch.arange(4)])
    got = _grads(model, True, _grouped, [torch.arange(4)])
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a)


def test_a_head_without_a_lookup_behind_it_is_reported_not_lost():
    """The documented unsupported case: a head whose input did not come from the waiting
    lookup parks its gradient; `pending_head_grad` says so (the trainer raises on it)."""
    model = _model()
    w = model.get_input_embeddings().weight
    with tied.tied_embedding(model):
        model.get_input_embeddings()(torch.tensor([1, 2]))  # a lookup with history, never used
    h = torch.randn(4, 1, 32, requires_grad=True)
    from thinkrl.logprobs import _logprobs_from_hidden
    logp, _ = _logprobs_from_hidden(h, model.get_output_embeddings(), torch.tensor([[1], [2], [3], [4]]), 1.0, 2, False)
    logp.sum().backward()
    assert tied.pending_head_grad(w)
    F.embedding(torch.tensor([1]), w)  # no effect on the slot
    with tied.tied_embedding(model):  # the next lookup with history starts a new hand-off
        model.get_input_embeddings()(torch.tensor([1]))
    assert not tied.pending_head_grad(w)
