"""The optimised training path (prompt shared per group, length-bucketed micro-batches,
chunked log-softmax, zero-advantage rows skipped, oneDNN linears, π_old = π_θ detached)
gives the same loss and gradients as a plain reference: one sequence at a time through
the full model, full-vocabulary logits, the DeepSeekMath formula written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.trainers import grpo as trainer
from thinkrl.config import GRPOConfig
from thinkrl.engine.sampler import Rollout

V, PAD = 40, 0


def tiny(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, initializer_range=0.2,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def make_rollout(B: int = 3, G: int = 4, L: int = 7, seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (5, 3, 8)[:B]]
    N = B * G
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0] = L
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)  # (N, L)
    ids = torch.randint(1, V, (N, L), generator=g).masked_fill(~mask, PAD)  # (N, L)
    logprobs = (-torch.rand(N, L, generator=g) * 3).masked_fill(~mask, 0.0)  # (N, L) stand-in π_old
    return Rollout(prompt_ids=prompts, group=torch.arange(B).repeat_interleave(G), completion_ids=ids,
                   completion_mask=mask, logprobs=logprobs, truncated=torch.zeros(N, dtype=torch.bool),
                   texts=[""] * N, lengths=lengths)


def reference_loss(model, ro, adv, old_logp, ref_model, beta, eps, temperature, aggregation):
    """-J(θ) of DeepSeekMath Eq. 3, one sequence at a time, no tricks."""
    per_seq, token_terms, n_tok = [], [], 0
    for n in range(len(ro.texts)):
        prompt, c = ro.prompt_ids[int(ro.group[n])], ro.completion_ids[n, : ro.lengths[n]].tolist()
        seq = torch.tensor([prompt + c])  # (1, P + C)
        logits = model(input_ids=seq).logits[0, len(prompt) - 1 : -1].float()  # (C, V) full vocabulary
        logp = F.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]  # (C,)
        old = logp.detach() if old_logp is None else old_logp[n, : len(c)]
        ratio = torch.exp(logp - old)
        terms = torch.minimum(ratio * adv[n], ratio.clamp(1 - eps, 1 + eps) * adv[n])  # (C,)
        if beta:
            with torch.no_grad():
                ref = F.log_softmax(ref_model(input_ids=seq).logits[0, len(prompt) - 1 : -1].float() / temperature, -1)
                ref = ref.gather(-1, torch.tensor(c)[:, None])[:, 0]
            terms = terms - beta * (torch.exp(ref - logp) - (ref - logp) - 1)  # k3
        per_seq.append(terms.mean())
        token_terms.append(terms.sum())
        n_tok += len(c)
    J = torch.stack(per_seq).mean() if aggregation == "seq_mean_group_mean" else torch.stack(token_terms).sum() / n_tok
    return -J


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("share_prompt,tie", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("beta,aggregation,detach_old", [
    (0.0, "seq_mean_group_mean", True),
    (0.0, "token_mean", False),
    (0.04, "seq_mean_group_mean", False),
])
def test_optimised_path_equals_plain_reference(share_prompt, tie, beta, aggregation, detach_old):
    """Micro-batches of 3 (prompts run once for all of them with share_prompt), a head-tied
    embedding or not: loss and gradients equal the plain per-sequence reference."""
    model, ro = tiny(tie=tie), make_rollout()
    ref_model = tiny(seed=1) if beta else None
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 0.0, -1.5, 0.0])  # group 0 all-equal
    g = GRPOConfig(beta=beta, loss_aggregation=aggregation, temperature=0.8, share_prompt=share_prompt,
                   logprob_chunk=3, micro_batch_size=3, max_new_tokens=7)
    old_logp = None if detach_old else ro.logprobs
    logprobs_of = trainer._Logprobs(ro, g, PAD)
    ref_logp = None
    if beta:
        with torch.no_grad():
            ref_logp = trainer._score(logprobs_of, ref_model, len(ro.texts), 5, ro.logprobs)

    model.zero_grad(set_to_none=True)
    stats = {"clip_frac": [], "entropy": [], "kl": []}
    loss, trained = trainer.minibatch_gradients(
        model, logprobs_of, ro, torch.arange(len(ro.texts)), adv, old_logp, ref_logp, g, g.micro_batch_size,
        skip_zero=beta == 0, forward_context=lambda: trainer.precision(model, False, True), stats=stats)
    fast = grads(model)
    assert trained == (6 if beta == 0 else 12)  # zero-advantage rows skipped only without the KL term

    model.zero_grad(set_to_none=True)
    ref = reference_loss(model, ro, adv, old_logp, ref_model, beta, 0.2, 0.8, aggregation)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, grads(model)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def test_bf16_autocast_gradients_close_to_fp32():
    model, ro = tiny(), make_rollout()
    adv = torch.randn(len(ro.texts), generator=torch.Generator().manual_seed(5))
    g = GRPOConfig(beta=0.0, temperature=1.0, micro_batch_size=4, max_new_tokens=7)
    logprobs_of = trainer._Logprobs(ro, g, PAD)
    out = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        trainer.minibatch_gradients(model, logprobs_of, ro, torch.arange(len(ro.texts)), adv, None, None, g, 4, True,
                                    lambda: trainer.precision(model, bf16), {"clip_frac": [], "entropy": [], "kl": []})
        out.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    cos = F.cosine_similarity(out[0], out[1], dim=0)
    assert cos > 0.99 and all(p.dtype == torch.float32 for p in model.parameters())


def test_prompt_chunks_cut_at_prompt_boundaries():
    group = torch.tensor([0] * 4 + [1] * 4 + [2] * 2)  # (10,) prompt of each row
    rows = torch.tensor([9, 0, 5, 1, 8, 2, 4, 3, 6, 7])  # a shuffled mini-batch
    as_sets = lambda chunks: [sorted(c.tolist()) for c in chunks]  # noqa: E731
    assert as_sets(trainer._prompt_chunks(rows, group, 3)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # each alone
    assert as_sets(trainer._prompt_chunks(rows, group, 8)) == [list(range(8)), [8, 9]]  # 0 and 1 fit; 2 does not
    assert as_sets(trainer._prompt_chunks(rows, group, 10)) == [list(range(10))]  # one micro-batch: one chunk
    assert as_sets(trainer._prompt_chunks(torch.tensor([7, 3]), group, 1)) == [[3], [7]]  # two prompts: by prompt index
    assert trainer._prompt_chunks(torch.tensor([], dtype=torch.long), group, 3) == []


def test_prompt_activations_held_one_prompt_at_a_time(monkeypatch):
    """Micro-batches smaller than a group: each prompt runs once for its own micro-batches and
    is back-propagated before the next prompt runs (memory independent of the number of
    prompts), and the gradients still equal the plain reference."""
    model, ro = tiny(), make_rollout()
    adv = torch.linspace(-1.5, 1.5, len(ro.texts))  # (12,) no zero advantage
    g = GRPOConfig(beta=0.0, temperature=0.8, logprob_chunk=3, micro_batch_size=2, max_new_tokens=7)
    built, live, most = [], [0], [0]
    plain = trainer._Logprobs.prompts

    def prompts(self, net, rows):
        states = plain(self, net, rows)
        built.append(torch.unique(ro.group[rows]).tolist())
        live[0] += 1
        most[0] = max(most[0], live[0])
        backward = states.backward

        def counted():
            live[0] -= 1
            backward()

        states.backward = counted
        return states

    monkeypatch.setattr(trainer._Logprobs, "prompts", prompts)
    model.zero_grad(set_to_none=True)
    loss, _ = trainer.minibatch_gradients(
        model, trainer._Logprobs(ro, g, PAD), ro, torch.randperm(len(ro.texts)), adv, None, None, g, 2,
        skip_zero=True, forward_context=lambda: trainer.precision(model, False, True),
        stats={"clip_frac": [], "entropy": [], "kl": []})
    assert built == [[0], [1], [2]] and most[0] == 1 and live[0] == 0
    fast = grads(model)
    model.zero_grad(set_to_none=True)
    ref = reference_loss(model, ro, adv, None, None, 0.0, 0.2, 0.8, "seq_mean_group_mean")
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, grads(model)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def reference_objective_loss(model, ro, adv, old_logp, policy_loss, eps, temperature, aggregation):
    """-J of GSPO or CISPO, one sequence at a time through the full model (β = 0)."""
    per_seq, token_terms, n_tok = [], [], 0
    for n in range(len(ro.texts)):
        prompt, c = ro.prompt_ids[int(ro.group[n])], ro.completion_ids[n, : ro.lengths[n]].tolist()
        logits = model(input_ids=torch.tensor([prompt + c])).logits[0, len(prompt) - 1 : -1].float()  # (C, V)
        logp = F.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]  # (C,)
        old = old_logp[n, : len(c)]
        if policy_loss == "gspo":
            s = torch.exp((logp - old).mean())  # the sequence's ratio (GSPO)
            terms = torch.minimum(s * adv[n], s.clamp(1 - eps, 1 + eps) * adv[n]).expand(len(c))  # (C,)
        else:  # cispo: detached, clipped weight times log π
            terms = torch.exp(logp - old).detach().clamp(1 - eps, 1 + eps) * adv[n] * logp  # (C,)
        per_seq.append(terms.mean())
        token_terms.append(terms.sum())
        n_tok += len(c)
    J = torch.stack(per_seq).mean() if aggregation == "seq_mean_group_mean" else torch.stack(token_terms).sum() / n_tok
    return -J


def optimised_gradients(model, ro, adv, old_logp, g):
    """The trainer's path over the whole rollout in micro-batches of 3: (loss, gradients, stats)."""
    model.zero_grad(set_to_none=True)
    stats = {"clip_frac": [], "entropy": [], "kl": []}
    loss, _ = trainer.minibatch_gradients(
        model, trainer._Logprobs(ro, g, PAD), ro, torch.arange(len(ro.texts)), adv, old_logp, None, g, 3,
        skip_zero=True, forward_context=lambda: trainer.precision(model, False, True), stats=stats)
    return loss, grads(model), stats


@pytest.mark.parametrize("policy_loss,aggregation", [("gspo", "seq_mean_group_mean"), ("cispo", "token_mean"),
                                                     ("cispo", "seq_mean_group_mean")])
def test_other_policy_losses_through_the_optimised_path(policy_loss, aggregation):
    """GSPO (not token-separable: the head's backward left to autograd) and CISPO through
    micro-batches, shared prompts and chunked log-softmax equal the plain reference."""
    model, ro = tiny(), make_rollout()
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 0.0, -1.5, 0.0])
    g = GRPOConfig(beta=0.0, loss_aggregation=aggregation, temperature=0.8, logprob_chunk=3, micro_batch_size=3,
                   max_new_tokens=7, policy_loss=policy_loss, epsilon_low=0.2, epsilon_high=0.2)
    with torch.no_grad():
        own = trainer._score(trainer._Logprobs(ro, g, PAD), model, len(ro.texts), 5, ro.logprobs)
    gen = torch.Generator().manual_seed(3)
    shift = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.4, 0.4, 0.05, -0.05, 0.3, 0.0, 0.1, 0.0])[:, None]  # (N, 1) per row
    old_logp = own + shift + (torch.rand(own.shape, generator=gen) - 0.5) * 0.2  # π_old near π_θ: some ratios clipped
    loss, fast, stats = optimised_gradients(model, ro, adv, old_logp, g)
    assert 0 < sum(stats["clip_frac"]) / len(stats["clip_frac"]) < 1  # both branches exercised
    model.zero_grad(set_to_none=True)
    ref = reference_objective_loss(model, ro, adv, old_logp, policy_loss, 0.2, 0.8, aggregation)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, grads(model)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def reference_corrected_loss(model, ro, adv, old_logp, mode, cap, eps, temperature):
    """-J with the sampler correction written out: per-token weight min(π_old/μ, C) (truncate) or
    that ratio, 0 above C (mask), per token or as the sequence's product; token mean."""
    token_terms, n_tok = [], 0
    for n in range(len(ro.texts)):
        prompt, c = ro.prompt_ids[int(ro.group[n])], ro.completion_ids[n, : ro.lengths[n]].tolist()
        logits = model(input_ids=torch.tensor([prompt + c])).logits[0, len(prompt) - 1 : -1].float()  # (C, V)
        logp = F.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]  # (C,)
        old = logp.detach() if old_logp is None else old_logp[n, : len(c)]
        log_ratio = old - ro.logprobs[n, : len(c)]  # (C,) π_old / μ
        if mode.startswith("sequence"):
            log_ratio = log_ratio.sum().expand(len(c))
        w = torch.exp(log_ratio)
        w = w.clamp(max=cap) if mode.endswith("truncate") else torch.where(w > cap, 0.0, w)
        ratio = torch.exp(logp - old)
        token_terms.append((w * torch.minimum(ratio * adv[n], ratio.clamp(1 - eps, 1 + eps) * adv[n])).sum())
        n_tok += len(c)
    return -torch.stack(token_terms).sum() / n_tok


@pytest.mark.parametrize("mode,detach_old", [("token_truncate", True), ("token_mask", False),
                                             ("sequence_truncate", True), ("sequence_mask", False)])
def test_sampler_correction_through_the_optimised_path(mode, detach_old):
    """The importance weights (π_old from the trainer, μ the sampler's log-probs) through
    micro-batches, shared prompts and the head's forward-built gradients equal the plain
    reference; with π_old = π_θ detached and a sequence weight, no gradient hint is built."""
    model, ro = tiny(), make_rollout()
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 0.0, -1.5, 0.0])
    g = GRPOConfig(beta=0.0, loss_aggregation="token_mean", temperature=0.8, logprob_chunk=3, micro_batch_size=3,
                   max_new_tokens=7, sampler_correction=mode, sampler_correction_max=1.2)
    with torch.no_grad():
        own = trainer._score(trainer._Logprobs(ro, g, PAD), model, len(ro.texts), 5, ro.logprobs)
    gen = torch.Generator().manual_seed(4)
    ro.logprobs = (own + (torch.rand(own.shape, generator=gen) - 0.5) * 0.6) * ro.completion_mask  # the sampler's μ
    old_logp = None if detach_old else own + (torch.rand(own.shape, generator=gen) - 0.5) * 0.1
    loss, fast, stats = optimised_gradients(model, ro, adv, old_logp, g)
    model.zero_grad(set_to_none=True)
    ref = reference_corrected_loss(model, ro, adv, old_logp, mode, 1.2, 0.2, 0.8)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, grads(model)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def test_token_advantages_through_the_optimised_path():
    """PPO's per-token advantages (N, T) through micro-batches, shared prompts and the head's
    forward-built gradients equal the plain reference with each token's own advantage."""
    model, ro = tiny(), make_rollout()
    g = GRPOConfig(beta=0.0, loss_aggregation="token_mean", temperature=0.8, logprob_chunk=3, micro_batch_size=3,
                   max_new_tokens=7, epsilon_low=0.2, epsilon_high=0.2)
    adv = (torch.rand(ro.completion_ids.shape, generator=torch.Generator().manual_seed(5)) - 0.5) * ro.completion_mask
    with torch.no_grad():
        own = trainer._score(trainer._Logprobs(ro, g, PAD), model, len(ro.texts), 5, ro.logprobs)
    old_logp = own + (torch.rand(own.shape, generator=torch.Generator().manual_seed(6)) - 0.5) * 0.6
    loss, fast, _ = optimised_gradients(model, ro, adv, old_logp, g)
    model.zero_grad(set_to_none=True)
    terms, n_tok = [], 0
    for n in range(len(ro.texts)):
        prompt, c = ro.prompt_ids[int(ro.group[n])], ro.completion_ids[n, : ro.lengths[n]].tolist()
        logits = model(input_ids=torch.tensor([prompt + c])).logits[0, len(prompt) - 1 : -1].float()
        logp = F.log_softmax(logits / 0.8, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]  # (C,)
        ratio, a = torch.exp(logp - old_logp[n, : len(c)]), adv[n, : len(c)]
        terms.append(torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a).sum())
        n_tok += len(c)
    ref = -torch.stack(terms).sum() / n_tok
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, grads(model)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("beta,detach_old", [(0.0, False), (0.04, True)])
def test_shared_value_head_joint_loss_through_the_optimised_path(beta, detach_old):
    """PPO Eq. 9 on a shared backbone: each micro-batch's policy loss + c₁ × its share of the
    clipped value loss, through micro-batches, shared prompts and the head's forward-built
    gradients, equals the plain reference: every sequence alone through the full model and
    the backbone + value head, token means over the whole batch, both losses in one backward."""
    from thinkrl.algos.value import clipped_value_loss
    from thinkrl.models.value_model import SharedValueHead
    from thinkrl.trainers.ppo import joint_value_loss

    model, ro = tiny(tie=True), make_rollout()
    torch.manual_seed(1)
    vm = SharedValueHead(model)
    g = GRPOConfig(beta=beta, loss_aggregation="token_mean", temperature=0.8, logprob_chunk=3, micro_batch_size=3,
                   max_new_tokens=7, epsilon_low=0.2, epsilon_high=0.2)
    ref_model = tiny(seed=3, tie=True)
    gen = torch.Generator().manual_seed(5)
    mask = ro.completion_mask
    adv = (torch.rand(mask.shape, generator=gen) - 0.5) * mask  # (N, T)
    old_v = torch.randn(mask.shape, generator=gen) * mask  # (N, T)
    returns = (old_v + torch.randn(mask.shape, generator=gen)) * mask  # (N, T) some moves beyond the clip
    with torch.no_grad():
        own = trainer._score(trainer._Logprobs(ro, g, PAD), model, len(ro.texts), 5, ro.logprobs)
        ref_logp = trainer._score(trainer._Logprobs(ro, g, PAD), ref_model, len(ro.texts), 5, ro.logprobs)
    old_logp = None if detach_old else own + (torch.rand(own.shape, generator=gen) - 0.5) * 0.6
    log = []
    params = list(model.parameters()) + list(vm.parameters())
    for p in params:
        p.grad = None
    loss, _ = trainer.minibatch_gradients(
        model, trainer._Logprobs(ro, g, PAD), ro, torch.arange(len(ro.texts)), adv, old_logp,
        ref_logp if beta else None, g, 3, skip_zero=True, forward_context=lambda: trainer.precision(model, False, True),
        stats={"clip_frac": [], "entropy": [], "kl": []},
        joint_loss=joint_value_loss(vm, ro, PAD, old_v, returns, mask, 0.2, 0.5, log))
    fast = [p.grad.clone() for p in params]
    assert 0 < sum(f * t for _, f, t in log) / sum(t for *_, t in log) < 1  # both branches of the value clip
    for p in params:
        p.grad = None
    policy_terms, values, n_tok = [], [], 0
    for n in range(len(ro.texts)):
        prompt, c = ro.prompt_ids[int(ro.group[n])], ro.completion_ids[n, : ro.lengths[n]].tolist()
        seq = torch.tensor([prompt + c])  # (1, P + C)
        logits = model(input_ids=seq).logits[0, len(prompt) - 1 : -1].float()
        logp = F.log_softmax(logits / 0.8, -1).gather(-1, torch.tensor(c)[:, None])[:, 0]  # (C,)
        old = logp.detach() if old_logp is None else old_logp[n, : len(c)]
        ratio, a = torch.exp(logp - old), adv[n, : len(c)]
        terms = torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)  # (C,)
        if beta:
            ref = ref_logp[n, : len(c)]
            terms = terms - beta * (torch.exp(ref - logp) - (ref - logp) - 1)  # k3
        policy_terms.append(terms.sum())
        h = model.model(input_ids=seq).last_hidden_state  # (1, P + C, H)
        values.append(vm.head(h)[0, len(prompt) - 1 : -1, 0])  # (C,) V before each completion token
        n_tok += len(c)
    v = torch.zeros(mask.shape)
    v = v.index_put((mask.nonzero(as_tuple=True)), torch.cat(values))  # (N, T)
    value_loss, _ = clipped_value_loss(v, old_v, returns, mask, 0.2)
    policy = -torch.stack(policy_terms).sum() / n_tok
    (policy + 0.5 * value_loss).backward()
    assert loss == pytest.approx(policy.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(fast, [p.grad for p in params]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
