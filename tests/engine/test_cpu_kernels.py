"""thinkrl.engine.cpu_kernels: oneDNN float32 linears equal F.linear in values and gradients, on
either kernel choice (forced), and the choice decides every path. The choice itself:
test_kernel_choice.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.engine import cpu_kernels as onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch build without oneDNN linear kernels")


@pytest.fixture(autouse=True, params=["onednn", "aten"])
def kernel(request, monkeypatch):
    """Every test here runs on both kernel choices (forced, not measured)."""
    monkeypatch.setenv(onednn.FORCE_ENV, request.param)
    onednn.choice.cache_clear()
    yield request.param
    onednn.choice.cache_clear()


def test_the_choice_decides_every_path(kernel):
    w = torch.randn(600, 512)  # above PACK_MIN_ELEMENTS
    assert onednn.pack(w).is_mkldnn == (kernel == "onednn")
    lin = torch.nn.Linear(4, 3)
    with onednn.onednn_linears(lin):
        assert ("forward" in lin.__dict__) == (kernel == "onednn")


@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_f_linear_forward_and_backward(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 17, generator=g, requires_grad=True)  # (B, T, I)
    w = torch.randn(11, 17, generator=g, requires_grad=True)  # (O, I)
    b = torch.randn(11, generator=g, requires_grad=True) if bias else None
    up = torch.randn(3, 5, 11, generator=g)  # upstream gradient
    got = onednn.linear(x, w, b)
    grads = torch.autograd.grad((got * up).sum(), [x, w] + ([b] if bias else []))
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad((ref * up).sum(), [x, w] + ([b] if bias else []))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-5)


def test_packed_linear_matches_f_linear():
    w, x, b = torch.randn(600, 512), torch.randn(2, 7, 512), torch.randn(600)  # packed: above PACK_MIN_ELEMENTS
    torch.testing.assert_close(onednn.packed_linear(x, onednn.pack(w), b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_context_manager_same_loss_and_grads_and_restores_forward(kernel):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 50, (2, 9))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_grads = loss_and_grads()
    with onednn.onednn_linears(model):
        assert all(("forward" in m.__dict__) == (kernel == "onednn") for m in model.modules() if type(m) is torch.nn.Linear)
        loss, grads = loss_and_grads()
    assert not any("forward" in m.__dict__ for m in model.modules())  # restored
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_autocast_falls_back_to_torch():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.linear(x, w).dtype == torch.bfloat16  # autocast's own bf16 product


def test_fused_rms_norms_same_values_and_grads():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.weight.uniform_(0.5, 1.5)  # not all-ones, so the weight's role is tested
    ids = torch.randint(0, 50, (2, 9))
    out = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        with onednn.fused_rms_norms(model, enabled=fused):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert not any("forward" in m.__dict__ for m in model.modules())
    torch.testing.assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_sparse_tied_embedding_same_dense_grads(tied):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 50, (2, 9))
    out = []
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        for _ in range(2):  # two micro-batches accumulate
            with onednn.sparse_tied_embedding(model, enabled=on):
                model(input_ids=ids, labels=ids).loss.backward()
        out.append([p.grad.clone() for p in model.parameters()])
    assert all(not g.is_sparse for g in out[1])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gqa_attention_same_values_and_grads_without_repeated_heads(monkeypatch):
    """A padded grouped-query batch: the swap hands the KV heads to the kernel as they are
    (enable_gqa), in float32, with the same logits and gradients; the config is restored."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    ids, mask = torch.randint(0, 50, (3, 10)), torch.ones(3, 10, dtype=torch.long)
    mask[0, :4] = 0  # left padding: transformers builds a mask and repeats the KV heads
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[1], k.shape[1], kw.get("enable_gqa", False), q.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out = []
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        seen.clear()
        with onednn.gqa_attention(model, enabled=on):
            logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * torch.linspace(-1, 1, 50)).sum().backward()
        out.append((logits.detach(), [p.grad.clone() for p in model.parameters()], list(seen)))
    assert all(s[:3] == (4, 4, False) for s in out[0][2])  # transformers' path: KV heads repeated 2x
    assert len(out[1][2]) == 2 and all(s == (4, 2, True, torch.float32) for s in out[1][2])
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"
    with torch.autocast("cpu", dtype=torch.bfloat16), onednn.gqa_attention(model):  # bf16 activations in, bf16 out
        bf16 = model(input_ids=ids, attention_mask=mask).logits
    assert bf16.dtype == torch.bfloat16 and seen[-1][3] == torch.float32
    torch.testing.assert_close(bf16.float(), out[0][0], atol=0.1, rtol=0.05)
