"""GRPO as small pure functions (DeepSeekMath Eq. 3, token level).

The objective, per question q with G sampled outputs o_1..o_G:

    J(θ) = (1/G) Σ_i (1/|o_i|) Σ_t [ min(ρ_it Â_it, clip(ρ_it, 1-ε_low, 1+ε_high) Â_it) - β D_KL,it ]
    ρ_it = π_θ(o_it | q, o_i,<t) / π_old(o_it | q, o_i,<t)

Every function here takes and returns tensors (no config objects, no model), never
edits its inputs in place, and documents its shapes. The loss we minimise is -J.
Notation: N samples (B questions x G outputs, grouped as consecutive rows), T tokens.

What is here: group-relative advantages (paper / batch-std / Dr. GRPO), the clipped
surrogate with separate ε_low / ε_high (DAPO clip-higher), the k1/k2/k3 KL
estimators, three loss aggregations, and `token_gradients` (the loss being a sum of
per-token terms, a token's gradient from its own logp: what lets the LM head build its
gradients in its forward). What is not: process (step-level) advantages,
value models, and anything that runs a model.
"""

from __future__ import annotations

import torch

from thinkrl.algos.registry import get_policy_loss, register_advantage, register_policy_loss

ADVANTAGE_SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("seq_mean_group_mean", "token_mean", "seq_sum_const")


@register_advantage("grpo")
def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    valid: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Outcome-supervised group-relative advantages, one per sample (DeepSeekMath §4.1.2):
    the advantage estimator registered as "grpo".

    rewards: (N,) float, N = B * G, samples of one question are consecutive rows.
    valid:   (N,) bool or None. False = "no signal" (reward None): the sample gets
             advantage 0 and is left out of its group's mean and std.
    scale:   "group" = (r - mean_group) / (std_group + eps)   (paper; std is the sample
             std with Bessel's correction, as TRL and verl compute it — the paper is silent);
             "batch" = (r - mean_group) / (std over the whole batch + eps);
             "none"  = r - mean_group   (Dr. GRPO).
    A group whose valid rewards are all equal (or has < 2 valid samples) gets 0 exactly.
    Returns: (N,) float32.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale {scale!r}; choose one of {ADVANTAGE_SCALES}")
    n = rewards.numel()
    if n % group_size:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    r = rewards.float().reshape(-1, group_size)  # (B, G)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.reshape(-1, group_size).bool()
    r = torch.where(v, r, torch.zeros_like(r))  # NaN placeholders for None must not leak
    count = v.sum(dim=1, keepdim=True)  # (B, 1)
    mean = r.sum(dim=1, keepdim=True) / count.clamp(min=1)  # (B, 1)
    centred = torch.where(v, r - mean, torch.zeros_like(r))  # (B, G)
    var = centred.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)  # (B, 1)
    std = var.sqrt()  # (B, 1)
    # Equal rewards carry no signal; test the spread directly so float noise in the
    # mean cannot be divided by eps into a large advantage.
    informative = _has_spread(r, v).unsqueeze(1)  # (B, 1)
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        all_valid = r[v]
        batch_std = all_valid.std() if all_valid.numel() > 1 else torch.tensor(0.0)
        adv = centred / (batch_std + eps)
    else:
        adv = centred
    adv = torch.where(informative & v, adv, torch.zeros_like(adv))
    return adv.reshape(n)


def _has_spread(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """r, v: (B, G) rewards and validity -> (B,) bool: the group's valid rewards differ."""
    hi = torch.where(v, r, torch.full_like(r, -torch.inf)).amax(1)  # (B,)
    lo = torch.where(v, r, torch.full_like(r, torch.inf)).amin(1)  # (B,)
    return hi > lo  # False for all-equal groups and groups with < 2 valid samples


def groups_with_spread(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the group's valid rewards differ (it carries a signal; DAPO's dynamic sampling
    keeps exactly these). rewards, valid: (N,); a group with < 2 valid samples has none."""
    r = rewards.float().reshape(-1, group_size)  # (B, G)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.reshape(-1, group_size).bool()
    return _has_spread(torch.where(v, r, torch.zeros_like(r)), v)


def zero_variance_share(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> float:
    """Share of groups that carry no signal (valid rewards all equal). rewards, valid: (N,)."""
    return (~groups_with_spread(rewards, group_size, valid)).float().mean().item()


@register_policy_loss("clip")
def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO clipped surrogate, as a loss (negated objective): the policy loss
    registered as "clip". `mask` is unused (each token's term is its own; aggregation masks).

    logp, old_logp: (N, T) log π_θ and log π_old of the sampled tokens.
    advantages:     (N,) one per sample (outcome supervision) or (N, T) per token.
    Returns (loss, clipped): loss (N, T) = -min(ρ Â, clip(ρ, 1-ε_low, 1+ε_high) Â);
    clipped (N, T) bool = the clipped branch was the active (smaller) one, so the
    token contributes no gradient.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)
    ratio = torch.exp(logp - old_logp)  # (N, T)
    unclipped = ratio * adv  # (N, T)
    clipped_obj = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # (N, T)
    objective = torch.minimum(unclipped, clipped_obj)  # (N, T)
    was_clipped = clipped_obj < unclipped  # (N, T)
    return -objective, was_clipped


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of D_KL[π_θ ‖ π_ref] from samples of π_θ (Schulman's k1/k2/k3).

    logp, ref_logp: (N, T). With log_r = log π_ref - log π_θ:
      k1 = -log_r                      (unbiased, can be negative)
      k2 = ½ log_r²                    (biased, low variance)
      k3 = exp(log_r) - log_r - 1      (the paper's: unbiased, always ≥ 0)
    Returns (N, T).
    """
    if kind not in _KL:
        raise ValueError(f"KL estimator {kind!r}; choose one of {KL_ESTIMATORS}")
    return _KL[kind](ref_logp - logp)  # log_r: (N, T)


_KL = {
    "k1": lambda log_r: -log_r,
    "k2": lambda log_r: 0.5 * log_r.pow(2),
    "k3": lambda log_r: torch.exp(log_r) - log_r - 1.0,
}


def aggregate_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "seq_mean_group_mean",
    const_len: int | None = None,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (N, T) over the valid tokens mask (N, T) to a scalar.

    seq_mean_group_mean: mean over each sequence's tokens, then mean over sequences (paper).
    token_mean:          sum over all tokens / number of tokens (DAPO; TRL's default).
    seq_sum_const:       sum over each sequence / const_len, then mean over sequences
                         (Dr. GRPO; const_len is usually the max completion length).
    Sequences with no valid token contribute 0 to the sequence mean but still count in N.

    num_seqs / num_tokens replace N / the token count as the final denominators: the
    counts of the whole mini-batch when (N, T) is one micro-batch of it, so that the
    micro-batch losses (and gradients) add up exactly to the mini-batch's.
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")
    if mode == "seq_sum_const" and not const_len:
        raise ValueError("seq_sum_const aggregation needs const_len > 0")
    m = mask.to(token_loss.dtype)  # (N, T)
    masked = token_loss * m  # (N, T)
    if mode == "token_mean":
        return masked.sum() / (m.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0))
    denom = m.sum(-1).clamp(min=1.0) if mode == "seq_mean_group_mean" else float(const_len)  # (N,) or scalar
    per_seq = masked.sum(-1) / denom  # (N,)
    return per_seq.mean() if num_seqs is None else per_seq.sum() / num_seqs


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_kind: str = "k3",
    aggregation: str = "seq_mean_group_mean",
    const_len: int | None = None,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
    policy_loss: str = "clip",
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss -J(θ) for one (mini)batch and its diagnostics.

    logp (N, T) requires grad; old_logp, ref_logp (N, T) and advantages (N,) do not;
    mask (N, T) marks completion tokens. The KL term is added to the loss with weight
    β (not to the reward), aggregated the same way as the surrogate.
    Returns (loss scalar, stats) with stats: kl (mean per token), clip_frac (share of
    valid tokens whose clipped branch was active), ratio_mean — all detached, over these N rows.
    num_seqs / num_tokens: the mini-batch's counts when these rows are one micro-batch
    of it (see `aggregate_loss`). policy_loss: a name in `registry.POLICY_LOSSES` ("clip":
    the paper's clipped surrogate). is_weight (N, T), no gradient: a per-token factor on the
    policy term only, not the KL (the sampler correction, `sampler_correction.importance_weights`).
    """
    surrogate, was_clipped = get_policy_loss(policy_loss)(
        logp, old_logp, advantages, mask=mask, eps_low=eps_low, eps_high=eps_high)  # (N, T) each
    token_loss = surrogate if is_weight is None else surrogate * is_weight
    m = mask.float()  # (N, T)
    n_tok = m.sum().clamp(min=1.0)
    stats: dict[str, torch.Tensor] = {}
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_kind)  # (N, T)
        if beta:
            token_loss = token_loss + beta * kl
        stats["kl"] = ((kl.detach() * m).sum() / n_tok)
    loss = aggregate_loss(token_loss, mask, aggregation, const_len, num_seqs, num_tokens)
    stats["clip_frac"] = (was_clipped.float() * m).sum() / n_tok
    stats["ratio_mean"] = (torch.exp(logp.detach() - old_logp) * m).sum() / n_tok
    return loss, stats


def token_gradients(loss_of, fill: torch.Tensor):
    """d loss / d logp for a slice of tokens, given only those tokens' logp.

    loss_of: logp (N, T) -> (loss scalar, ...), a sum of per-token terms (as `grpo_loss` is,
    for every KL estimator and aggregation: the denominators are token counts), so that a
    token's gradient depends on its own logp alone. fill (N, T): values for the tokens
    outside the slice (any finite log-probs, e.g. π_old's). Returns
    `grad(logp_part (c,), start) -> (c,)`, the gradient at tokens start..start+c of the
    flattened (N·T) logp; autograd through `loss_of`, not a hand-written derivative.
    """
    flat = fill.detach().reshape(-1).float()  # (N·T,)

    def grad(logp_part: torch.Tensor, start: int) -> torch.Tensor:
        stop = start + len(logp_part)
        with torch.enable_grad():
            logp = flat.clone()  # (N·T,)
            logp[start:stop] = logp_part
            logp.requires_grad_()
            loss = loss_of(logp.view(fill.shape))[0]
            return torch.autograd.grad(loss, logp)[0][start:stop]  # (c,)

    return grad
