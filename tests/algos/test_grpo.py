"""GRPO math against hand-computed values, slow loops and autograd (DeepSeekMath App. A.1.6)."""

import math
import statistics

import pytest
import torch

from thinkrl.algos import grpo


def loop_advantages(rewards, group_size, valid=None, eps=1e-6):
    """Reference: one group at a time, with the standard library."""
    out = []
    for start in range(0, len(rewards), group_size):
        rs = rewards[start:start + group_size]
        vs = [True] * group_size if valid is None else valid[start:start + group_size]
        kept = [r for r, ok in zip(rs, vs) if ok]
        if len(kept) < 2 or max(kept) == min(kept):
            out += [0.0] * group_size
            continue
        mu, sd = statistics.mean(kept), statistics.stdev(kept)
        out += [(r - mu) / (sd + eps) if ok else 0.0 for r, ok in zip(rs, vs)]
    return out


def test_advantages_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3) = 0.57735
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, eps=0.0)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))


def test_equal_rewards_give_exact_zero_even_with_float_noise():
    rewards = torch.tensor([0.1, 0.1, 0.1, 2.0, 2.0, 2.0], dtype=torch.float64)
    adv = grpo.group_advantages(rewards, 3)
    assert torch.equal(adv, torch.zeros(6))
    assert grpo.zero_variance_share(rewards, 3) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_advantages_loop_vs_vectorised(seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (24,), generator=g).float()
    valid = torch.rand(24, generator=g) > 0.2
    got = grpo.group_advantages(rewards, 6, valid=valid)
    want = loop_advantages(rewards.tolist(), 6, valid.tolist())
    assert torch.allclose(got, torch.tensor(want), atol=1e-5)
    assert torch.all(got[~valid] == 0)


def test_advantage_scales():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0, 0.0, 2.0])
    none = grpo.group_advantages(r, 2, scale="none")
    assert torch.allclose(none, torch.tensor([0.5, -0.5, 0.0, 0.0, -1.0, 1.0]))
    batch = grpo.group_advantages(r, 2, scale="batch", eps=0.0)
    assert torch.allclose(batch, none / r.std())
    with pytest.raises(ValueError, match="group"):
        grpo.group_advantages(r, 2, scale="bogus")
    with pytest.raises(ValueError, match="groups of 4"):
        grpo.group_advantages(r, 4)


def test_invalid_reward_values_do_not_leak():
    r = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    adv = grpo.group_advantages(r, 4, valid=torch.tensor([True, False, True, True]))
    assert torch.isfinite(adv).all() and adv[1] == 0


def test_clipped_surrogate_hand_computed():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    # positive advantage: ratio 1.5 is clipped at 1.2; 0.5 is not (min picks 0.5)
    loss, clipped = grpo.clipped_surrogate(logp, old, torch.tensor([2.0]), eps_low=0.2, eps_high=0.2)
    assert torch.allclose(loss, -torch.tensor([[2.4, 1.0, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]
    # negative advantage: ratio 0.5 clipped at 0.8 -> objective -1.6
    loss, clipped = grpo.clipped_surrogate(logp, old, torch.tensor([-2.0]), eps_low=0.2, eps_high=0.2)
    assert torch.allclose(loss, -torch.tensor([[-3.0, -1.6, -2.2]]))
    assert clipped.tolist() == [[False, True, False]]
    # clip-higher: eps_high 0.6 lets ratio 1.5 through
    loss, _ = grpo.clipped_surrogate(logp, old, torch.tensor([2.0]), eps_low=0.2, eps_high=0.6)
    assert torch.allclose(loss[0, 0], torch.tensor(-3.0))


def test_kl_estimators_hand_computed():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    log_r = math.log(0.5)
    assert torch.allclose(grpo.kl_estimate(logp, ref, "k1"), torch.tensor([[-log_r]]))
    assert torch.allclose(grpo.kl_estimate(logp, ref, "k2"), torch.tensor([[0.5 * log_r**2]]))
    assert torch.allclose(grpo.kl_estimate(logp, ref, "k3"), torch.tensor([[0.5 - log_r - 1]]))
    g = torch.Generator().manual_seed(0)
    k3 = grpo.kl_estimate(torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g))
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        grpo.kl_estimate(logp, ref, "k4")


def test_k3_is_unbiased_for_kl():
    """E_{x~p}[k3] = KL(p||q) for two small categoricals (Monte Carlo)."""
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    est = grpo.kl_estimate(p.log()[x], q.log()[x], "k3").mean()
    exact = (p * (p / q).log()).sum()
    assert abs(est - exact) < 0.01


def test_aggregations_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert grpo.aggregate_loss(loss, mask).item() == pytest.approx((2.0 + 4.0) / 2)
    assert grpo.aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(10.0 / 4)
    assert grpo.aggregate_loss(loss, mask, "seq_sum_const", const_len=5).item() == pytest.approx((6 / 5 + 4 / 5) / 2)
    with pytest.raises(ValueError):
        grpo.aggregate_loss(loss, mask, "seq_sum_const")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gradient_matches_deepseekmath_a16(seed, beta):
    """With π_old = π_θ: dL/dlogp_it = -(Â_i + β(π_ref/π_θ - 1)) / (G |o_i|)."""
    g = torch.Generator().manual_seed(seed)
    G, T = 6, 9
    lengths = torch.randint(1, T + 1, (G,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (G, T)
    logp = (-torch.rand(G, T, generator=g) * 3).requires_grad_()
    ref = -torch.rand(G, T, generator=g) * 3
    adv = grpo.group_advantages(torch.randint(0, 2, (G,), generator=g).float(), G)
    loss, _ = grpo.grpo_loss(logp, logp.detach(), adv, mask, ref_logp=ref, beta=beta)
    (grad,) = torch.autograd.grad(loss, logp)
    coef = adv[:, None] + beta * (torch.exp(ref - logp.detach()) - 1)  # (G, T)
    want = -coef / (G * lengths[:, None].float()) * mask
    assert torch.allclose(grad, want, atol=1e-6)


def test_loss_loop_vs_vectorised():
    """The whole loss against a per-token Python loop of Eq. 3."""
    g = torch.Generator().manual_seed(7)
    N, T = 4, 5
    logp, old, ref = (-torch.rand(N, T, generator=g) * 2 for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    adv = torch.randn(N, generator=g)
    beta, el, eh = 0.1, 0.2, 0.28
    total = 0.0
    for i in range(N):
        acc, n = 0.0, 0
        for t in range(T):
            if not mask[i, t]:
                continue
            rho = math.exp(logp[i, t] - old[i, t])
            a = adv[i].item()
            obj = min(rho * a, min(max(rho, 1 - el), 1 + eh) * a)
            lr = (ref[i, t] - logp[i, t]).item()
            acc += -(obj - beta * (math.exp(lr) - lr - 1))
            n += 1
        total += acc / n
    loss, stats = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=beta, eps_low=el, eps_high=eh)
    assert loss.item() == pytest.approx(total / N, rel=1e-5)
    assert 0.0 <= stats["clip_frac"].item() <= 1.0


def test_inputs_not_modified():
    logp, old = torch.randn(3, 4), torch.randn(3, 4)
    adv, mask = torch.randn(3), torch.ones(3, 4)
    copies = [t.clone() for t in (logp, old, adv, mask)]
    grpo.grpo_loss(logp, old, adv, mask, ref_logp=old, beta=0.1)
    for a, b in zip((logp, old, adv, mask), copies):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["seq_mean_group_mean", "token_mean", "seq_sum_const"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_micro_batches_add_up_to_the_minibatch(mode, beta):
    """Split rows into micro-batches with the mini-batch's counts: same loss and gradient."""
    g = torch.Generator().manual_seed(3)
    N, T = 8, 6
    logp = (torch.randn(N, T, generator=g) * 0.3 - 1).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(N, T, generator=g)
    ref = logp.detach() + 0.1 * torch.randn(N, T, generator=g)
    adv = torch.randn(N, generator=g)
    mask = torch.rand(N, T, generator=g) > 0.3
    kw = dict(beta=beta, aggregation=mode, const_len=T)
    full, _ = grpo.grpo_loss(logp, old, adv, mask, ref if beta else None, **kw)
    (full_grad,) = torch.autograd.grad(full, logp)
    total, grad = 0.0, torch.zeros_like(logp)
    for rows in [torch.tensor([0, 3, 5]), torch.tensor([1, 2]), torch.tensor([4, 6, 7])]:
        lp = logp.detach()[rows].requires_grad_()
        part, _ = grpo.grpo_loss(lp, old[rows], adv[rows], mask[rows], ref[rows] if beta else None,
                                 num_seqs=N, num_tokens=mask.sum().item(), **kw)
        (gr,) = torch.autograd.grad(part, lp)
        total, grad[rows] = total + part.item(), gr
    assert total == pytest.approx(full.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad, full_grad)


@pytest.mark.parametrize("mode", ["seq_mean_group_mean", "token_mean"])
def test_zero_advantage_rows_contribute_no_gradient_without_kl(mode):
    """Why the trainer may skip rows whose advantage is 0 when beta = 0 (counts kept)."""
    g = torch.Generator().manual_seed(4)
    N, T = 6, 5
    logp = (torch.randn(N, T, generator=g) - 1).requires_grad_()
    old = logp.detach() + 0.2 * torch.randn(N, T, generator=g)
    adv = torch.tensor([0.0, 1.0, 0.0, -0.5, 0.0, 2.0])
    mask = torch.ones(N, T, dtype=torch.bool)
    full, _ = grpo.grpo_loss(logp, old, adv, mask, aggregation=mode)
    (full_grad,) = torch.autograd.grad(full, logp)
    assert torch.all(full_grad[adv == 0] == 0)
    rows = (adv != 0).nonzero().squeeze(-1)
    lp = logp.detach()[rows].requires_grad_()
    part, _ = grpo.grpo_loss(lp, old[rows], adv[rows], mask[rows], aggregation=mode, num_seqs=N, num_tokens=N * T)
    (gr,) = torch.autograd.grad(part, lp)
    torch.testing.assert_close(gr, full_grad[rows])
    assert part.item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("aggregation", grpo.LOSS_AGGREGATIONS)
@pytest.mark.parametrize("beta,kl,detach_old", [(0.0, "k3", True), (0.04, "k3", False), (0.1, "k2", False),
                                                 (0.1, "k1", True)])
def test_token_gradients_equal_autograd_through_the_whole_loss(aggregation, beta, kl, detach_old):
    """The GRPO loss is a sum of per-token terms: each token's gradient, found from that
    token's logp alone (the others at a fill value), equals autograd through the whole loss."""
    g = torch.Generator().manual_seed(3)
    N, T = 4, 6
    logp = (-torch.rand(N, T, generator=g) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(N, T, generator=g)  # ratios both inside and outside the clip range
    ref = logp.detach() + 0.2 * torch.randn(N, T, generator=g)
    adv, mask = torch.randn(N, generator=g), torch.rand(N, T, generator=g) > 0.3

    def loss_of(lp):
        return grpo.grpo_loss(lp, lp.detach() if detach_old else old, adv, mask, ref, beta, 0.2, 0.28, kl, aggregation,
                         const_len=T, num_seqs=6, num_tokens=30.0)

    want = torch.autograd.grad(loss_of(logp)[0], logp)[0].reshape(-1)  # (N·T,)
    grad = grpo.token_gradients(loss_of, -torch.rand(N, T, generator=g))
    flat = logp.detach().reshape(-1)
    got = torch.cat([grad(flat[s:s + 5], s) for s in range(0, N * T, 5)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    assert (got[~mask.reshape(-1)] == 0).all()
