"""Policy losses beside the paper's clipped surrogate (registered by name; `registry`).

Each returns (loss (N, T), clipped (N, T) bool) like `grpo.clipped_surrogate`: the per-token
loss before aggregation (the negated objective) and where clipping cut or bounded the ratio.

- `gspo` (Zheng et al. 2025, GSPO): one ratio per sequence, the geometric mean of its token
  ratios s_i = exp(mean_t (log π_θ - log π_old)) over its valid tokens, clipped to
  [1 - ε_low, 1 + ε_high] (the paper: 3e-4 / 4e-4); the sequence's term
  -min(s_i Â_i, clip(s_i) Â_i) is repeated on each of its tokens, so that a per-sequence mean
  (`seq_mean_group_mean`) gives GSPO's objective exactly. Not token-separable.
- `cispo` (MiniMax-M1, 2025): -sg(clip(ρ_t, 1 - ε_low, 1 + ε_high)) Â log π_θ(o_t): the
  importance weight is clipped and detached, so every token keeps a gradient (none is zeroed
  by clipping, unlike PPO's min).

Left out: GSPO-token's per-token advantages (equal to GSPO's with outcome advantages).
"""

from __future__ import annotations

import torch

from thinkrl.algos.registry import register_policy_loss


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)


@register_policy_loss("gspo", token_separable=False)
def gspo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 3e-4, eps_high: float = 4e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """logp, old_logp, mask: (N, T); advantages (N,) one per sequence. Returns ((N, T), (N, T))."""
    if advantages.dim() != 1:
        raise ValueError("gspo takes one advantage per sequence, shape (N,)")
    m = mask.float()  # (N, T)
    log_s = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # (N,) mean log-ratio
    s = torch.exp(log_s)  # (N,)
    unclipped = s * advantages  # (N,)
    clipped = torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * advantages  # (N,)
    loss = -torch.minimum(unclipped, clipped)  # (N,)
    was_clipped = (clipped < unclipped).unsqueeze(-1).expand_as(logp)  # (N, T)
    return loss.unsqueeze(-1).expand_as(logp), was_clipped


@register_policy_loss("cispo")
def cispo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None,
               eps_low: float = 0.2, eps_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """logp, old_logp: (N, T); advantages (N,) or (N, T). Returns ((N, T), (N, T))."""
    ratio = torch.exp(logp.detach() - old_logp)  # (N, T), no gradient through the weight
    weight = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # (N, T)
    return -weight * _per_token(advantages) * logp, weight != ratio
