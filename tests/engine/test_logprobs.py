"""Training log-probs against a plain full-logits computation, and against the sampler's."""

import pytest
import torch
import torch.nn.functional as F

from thinkrl.engine import logprobs
from thinkrl.engine.logprobs import build_batch, completion_logprobs
from thinkrl.engine.sampler import SamplingParams, sample


def _rollout(model, tok, temperature=0.8):
    prompts = [tok("What is 1 + 2 ?")["input_ids"], tok("What is 3 + 4 + 5 + 6 ?")["input_ids"]]
    return sample(model, tok, prompts, 3, SamplingParams(max_new_tokens=12, temperature=temperature),
                  torch.Generator().manual_seed(0))


def _reference(model, ids, attn, pos, L, temperature):
    """The obvious way: full logits over every position, shift, log_softmax, gather."""
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float() / temperature  # (N, S, V)
    logp = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, S-1)
    return logp[:, -L:]


def test_matches_full_logits_and_sampler(tiny_model, tiny_tokenizer):
    ro = _rollout(tiny_model, tiny_tokenizer)
    ids, attn, pos = build_batch(ro.prompt_ids, ro.group, ro.completion_ids, ro.completion_mask, tiny_tokenizer.pad_token_id)
    L = ro.completion_ids.shape[1]
    mask = ro.completion_mask
    with torch.no_grad():
        ours, ent = completion_logprobs(tiny_model, ids, attn, pos, L, 0.8, want_entropy=True)
        ref = _reference(tiny_model, ids, attn, pos, L, 0.8)
    assert torch.allclose(ours[mask], ref[mask], atol=1e-5)
    assert torch.allclose(ours[mask], ro.logprobs[mask], atol=1e-4)  # π_old from the sampler is exact
    assert (ent[mask] >= 0).all()


def test_chunked_equals_unchunked_with_gradients(tiny_model, tiny_tokenizer):
    ro = _rollout(tiny_model, tiny_tokenizer, temperature=1.0)
    ids, attn, pos = build_batch(ro.prompt_ids, ro.group, ro.completion_ids, ro.completion_mask, tiny_tokenizer.pad_token_id)
    L, mask = ro.completion_ids.shape[1], ro.completion_mask.float()
    grads = []
    for chunk in (0, 5):
        tiny_model.zero_grad()
        logp, _ = completion_logprobs(tiny_model, ids, attn, pos, L, 1.0, chunk=chunk)
        (logp * mask).sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
        if chunk == 0:
            full = logp.detach()
        else:
            assert torch.allclose(logp.detach()[mask.bool()], full[mask.bool()], atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_build_batch_layout():
    prompts = [[5, 6, 7], [8]]
    group = torch.tensor([0, 0, 1])
    comp = torch.tensor([[1, 2], [3, 0], [4, 0]])
    cmask = torch.tensor([[1, 1], [1, 0], [1, 0]]).bool()
    ids, attn, pos = build_batch(prompts, group, comp, cmask, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 2], [5, 6, 7, 3, 0], [0, 0, 8, 4, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert pos[2].tolist()[2:4] == [0, 1] and pos[0].tolist() == [0, 1, 2, 3, 4]


def test_grouped_prompt_forward_is_exact(tiny_model, tiny_tokenizer):
    """Running each prompt once for its G samples gives the same log-probs and gradients."""
    from thinkrl.engine.logprobs import grouped_completion_logprobs

    ro = _rollout(tiny_model, tiny_tokenizer, temperature=1.0)
    pad = tiny_tokenizer.pad_token_id
    ids, attn, pos = build_batch(ro.prompt_ids, ro.group, ro.completion_ids, ro.completion_mask, pad)
    L, mask = ro.completion_ids.shape[1], ro.completion_mask.float()
    rows = torch.tensor([4, 0, 2, 5])  # a mini-batch that mixes groups, out of order
    results = []
    for fn in ("plain", "grouped"):
        tiny_model.zero_grad()
        if fn == "plain":
            logp, ent = completion_logprobs(tiny_model, ids[rows], attn[rows], pos[rows], L, 1.0, want_entropy=True)
        else:
            logp, ent = grouped_completion_logprobs(tiny_model, ro.prompt_ids, ro.group[rows], ro.completion_ids[rows],
                                                    ro.completion_mask[rows], pad, 1.0, want_entropy=True)
        (logp * mask[rows]).sum().backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in tiny_model.parameters()]))
    (la, ea, ga), (lb, eb, gb) = results
    m = mask[rows].bool()
    assert torch.allclose(la[m], lb[m], atol=1e-5) and torch.allclose(ea[m], eb[m], atol=1e-5)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-5)


def test_prompt_states_shared_by_micro_batches_is_exact(tiny_model, tiny_tokenizer):
    """Prompts run once (`PromptStates`) for two micro-batches, their backward run once after
    both: the same log-probs and gradients as one grouped call per micro-batch; a row whose
    prompt was not run is refused; without autograd the states are plain tensors."""
    from thinkrl.engine.logprobs import PromptStates, grouped_completion_logprobs

    ro = _rollout(tiny_model, tiny_tokenizer, temperature=1.0)
    pad, mask = tiny_tokenizer.pad_token_id, ro.completion_mask.float()
    parts = [torch.tensor([4, 0]), torch.tensor([2, 5, 1])]  # mixed groups, out of order
    results = []
    for shared in (False, True):
        tiny_model.zero_grad(set_to_none=True)
        states = PromptStates(tiny_model, ro.prompt_ids, torch.unique(ro.group), pad, "cpu") if shared else None
        out = []
        for rows in parts:
            logp, _ = grouped_completion_logprobs(tiny_model, ro.prompt_ids, ro.group[rows], ro.completion_ids[rows],
                                                  ro.completion_mask[rows], pad, 0.9, 2, states=states)
            (logp * mask[rows]).sum().backward()
            out.append(logp.detach())
        if shared:
            before = [p.grad.clone() for p in tiny_model.parameters()]
            states.backward()
            assert any(not torch.equal(a, p.grad) for a, p in zip(before, tiny_model.parameters()))
            states.backward()  # a second call does nothing
        results.append((out, [p.grad.clone() for p in tiny_model.parameters()]))
    (la, ga), (lb, gb) = results
    for a, b in zip(la, lb):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)

    one = PromptStates(tiny_model, ro.prompt_ids, ro.group[:1], pad, "cpu")
    other = torch.nonzero(ro.group != ro.group[0])[0]
    with pytest.raises(ValueError, match="not in `states`"):
        grouped_completion_logprobs(tiny_model, ro.prompt_ids, ro.group[other], ro.completion_ids[other],
                                    ro.completion_mask[other], pad, states=one)
    with torch.no_grad():
        frozen = PromptStates(tiny_model, ro.prompt_ids, torch.unique(ro.group), pad, "cpu")
        assert not any(t.requires_grad for t in frozen.tensors)
        logp, _ = grouped_completion_logprobs(tiny_model, ro.prompt_ids, ro.group[parts[1]],
                                              ro.completion_ids[parts[1]], ro.completion_mask[parts[1]], pad, 0.9,
                                              states=frozen)
    torch.testing.assert_close(logp, la[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_bytes", [None, 1])  # default: one weight-gradient block; 1: one per chunk
def test_chunked_head_gradients_and_entropy_match_full_logits_autograd(tiny_model, tiny_tokenizer, block_bytes,
                                                                        monkeypatch):
    """The logits-free autograd function vs plain autograd through full (N, S, V) logits, T != 1."""
    if block_bytes:
        monkeypatch.setattr(logprobs, "WGRAD_BLOCK_BYTES", block_bytes)
    ro = _rollout(tiny_model, tiny_tokenizer, temperature=0.7)
    ids, attn, pos = build_batch(ro.prompt_ids, ro.group, ro.completion_ids, ro.completion_mask, tiny_tokenizer.pad_token_id)
    L, mask = ro.completion_ids.shape[1], ro.completion_mask.float()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask  # arbitrary upstream grads
    tiny_model.zero_grad()
    ours, ent = completion_logprobs(tiny_model, ids, attn, pos, L, 0.7, chunk=7, want_entropy=True)
    (ours * weights).sum().backward()
    got = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    ref = _reference(tiny_model, ids, attn, pos, L, 0.7)
    (ref * weights).sum().backward()
    for a, b in zip(got, (p.grad for p in tiny_model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        logits = tiny_model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()[:, -L - 1:-1] / 0.7
        ref_ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)  # (N, L)
    torch.testing.assert_close(ent[mask.bool()], ref_ent[mask.bool()], atol=1e-5, rtol=1e-5)


def _head_case(M=13, H=16, V=40, seed=0, scale=0.5):
    """A random LM-head problem from one seeded generator: hidden states h (M, H) and weight
    w (V, H), both requiring grad, targets (M,), and two (M,) vectors for upstream weights."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, H, generator=g, requires_grad=True)
    w = (torch.randn(V, H, generator=g) * scale).requires_grad_()
    return h, w, torch.randint(0, V, (M,), generator=g), torch.randn(M, generator=g), torch.randn(M, generator=g)


@pytest.mark.parametrize("block_bytes", [None, 1])  # default: one weight-gradient block; 1: one per chunk
def test_chunked_head_under_bf16_autocast_matches_bf16_product_reference(block_bytes, monkeypatch):
    """Under bf16 autocast the head product runs in bf16 (W cast once) and the softmax in float32:
    the same numbers as autograd through the bf16 product widened to float32 logits."""
    from thinkrl.engine import logprobs
    from thinkrl.engine.logprobs import _TokenLogprobs

    if block_bytes:
        monkeypatch.setattr(logprobs, "WGRAD_BLOCK_BYTES", block_bytes)

    T = 0.7
    h, w, targets, up, _ = _head_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent = _TokenLogprobs.apply(h, w, targets, T, 5, True)  # chunks of 5, 5, 3
    got = torch.autograd.grad((logp * up).sum(), [h, w])
    z = F.linear(h.bfloat16(), w.bfloat16()).float() / T  # (M, V) the bf16 product, float32 after
    ref = F.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)
    ref_grads = torch.autograd.grad((ref * up).sum(), [h, w])
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, -(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1), atol=1e-5, rtol=1e-5)
    for a, b in zip(got, ref_grads):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # bf16 products, other summation order


@pytest.mark.parametrize("want_entropy", [True, False])
@pytest.mark.parametrize("block_bytes", [None, 1])  # one weight-gradient block, or one per chunk
@pytest.mark.parametrize("bf16", [False, True])
def test_grad_hint_builds_the_head_gradients_in_forward(want_entropy, block_bytes, bf16, monkeypatch):
    """With the loss's per-token gradient as a hint, forward builds the head's gradients from
    the softmax it holds: the same values and gradients as the recomputing backward, one
    head product per chunk instead of two, and backward never recomputes."""
    from thinkrl.algos import grpo
    from thinkrl.engine.logprobs import _TokenLogprobs

    if block_bytes:
        monkeypatch.setattr(logprobs, "WGRAD_BLOCK_BYTES", block_bytes)
    T = 0.7
    h, w, targets, a, b = _head_case()
    M = len(h)

    def loss_of(logp):  # (M,) a sum of per-token terms, not linear in logp
        return ((a * logp + b * logp.exp()).sum(),)

    def run(hint):
        products = []
        real = logprobs._chunk_logits
        monkeypatch.setattr(logprobs, "_chunk_logits", lambda *args: products.append(1) or real(*args))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logp, ent = _TokenLogprobs.apply(h, w, targets, T, 5, want_entropy, hint)  # chunks of 5, 5, 3
        grads = torch.autograd.grad(loss_of(logp)[0], [h, w])
        monkeypatch.setattr(logprobs, "_chunk_logits", real)
        return logp, ent, grads, len(products)

    logp, ent, grads, n_plain = run(None)
    monkeypatch.setattr(_TokenLogprobs, "_recomputed", staticmethod(lambda *args: pytest.fail("recomputed")))
    h_logp, h_ent, h_grads, n_hinted = run(grpo.token_gradients(loss_of, torch.zeros(M)))
    assert (n_plain, n_hinted) == (6, 3)
    torch.testing.assert_close(h_logp, logp, rtol=0, atol=0)
    if want_entropy:
        torch.testing.assert_close(h_ent, ent, rtol=0, atol=0)
    for got, want in zip(h_grads, grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_wrong_grad_hint_costs_time_not_correctness():
    """A hint that is not the incoming gradient (here: another loss's) is detected in backward,
    which then recomputes: the gradients are those of the loss actually taken."""
    from thinkrl.algos import grpo
    from thinkrl.engine.logprobs import _TokenLogprobs

    M, H, V = 9, 8, 30
    h, w, targets, up, _ = _head_case(M, H, V, seed=1, scale=1.0)
    want = torch.autograd.grad((_TokenLogprobs.apply(h, w, targets, 1.0, 4, False)[0] * up).sum(), [h, w])
    wrong = grpo.token_gradients(lambda logp: ((2 * up * logp).sum(),), torch.zeros(M))
    logp, _ = _TokenLogprobs.apply(h, w, targets, 1.0, 4, False, wrong)
    got = torch.autograd.grad((logp * up).sum(), [h, w])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # no gradient will be taken: the hint is not even called
        logprobs._logprobs_from_hidden(h[None], torch.nn.Linear(H, V, bias=False), targets[None], 1.0, 4, False,
                                       lambda *_: pytest.fail("hint called"))
