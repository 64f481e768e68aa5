"""Advantage estimators beside GRPO's (registered by name; `registry`).

Notation as in `grpo`: N samples (B questions x G outputs, consecutive rows per question),
`valid` (N,) False for samples whose reward is None (advantage 0, left out of every mean and
std). Outcome estimators return (N,) float32; `gae` works per token.

- `rloo`: REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = r_i - mean_{j≠i} r_j over the
  valid samples of i's group; no std division.
- `reinforce_pp`: REINFORCE++ with a group baseline (Hu 2025; verl's
  `reinforce_plus_plus_baseline`): r_i - mean_group, then divided by the std of those
  centred values over the whole batch (their batch mean is 0 by construction).
- `gae`: generalised advantage estimation (Schulman et al. 2016) for PPO with a value model:
  δ_t = r_t + γ V_{t+1} - V_t, Â_t = Σ_l (γλ)^l δ_{t+l}, over each sequence's valid tokens.

Left out: process (step-level) rewards for the outcome estimators, and KL in the reward.
"""

from __future__ import annotations

import torch

from thinkrl.algos.registry import register_advantage


def _grouped(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None):
    """(r, v): (B, G) rewards with invalid entries zeroed, and validity."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().reshape(-1, group_size)  # (B, G)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.reshape(-1, group_size).bool()
    return torch.where(v, r, torch.zeros_like(r)), v


@register_advantage("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Leave-one-out baseline: each valid sample's reward minus the mean of the other valid
    samples of its group. rewards, valid: (N,). Groups with < 2 valid samples get 0. Returns (N,)."""
    r, v = _grouped(rewards, group_size, valid)
    count = v.sum(1, keepdim=True)  # (B, 1)
    others = (r.sum(1, keepdim=True) - r) / (count - 1).clamp(min=1)  # (B, G) mean of the other valid ones
    adv = torch.where(v & (count > 1), r - others, torch.zeros_like(r))
    return adv.reshape(-1)


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None,
                            eps: float = 1e-6, **_) -> torch.Tensor:
    """Group mean subtracted, then whitened over the batch's valid samples. rewards, valid: (N,).
    Returns (N,); invalid samples 0."""
    r, v = _grouped(rewards, group_size, valid)
    count = v.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
    centred = torch.where(v, r - r.sum(1, keepdim=True) / count, torch.zeros_like(r))  # (B, G)
    values = centred[v]  # (n_valid,)
    if values.numel() < 2:
        return torch.zeros(rewards.numel())
    adv = (centred - values.mean()) / (values.std() + eps)
    return torch.where(v, adv, torch.zeros_like(adv)).reshape(-1)


@register_advantage("gae")
def gae_advantages(rewards: torch.Tensor, group_size: int | None = None, *, values: torch.Tensor,
                   mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GAE. rewards, values, mask: (N, T) (token rewards, e.g. the outcome on the last
    token; value estimates; valid tokens, a prefix of each row). V after the last valid token is 0.
    Returns (advantages, returns), each (N, T), 0 on padding; returns = advantages + values."""
    m = mask.float()  # (N, T)
    r, vals = rewards.float() * m, values.float() * m  # (N, T)
    adv = torch.zeros_like(r)  # (N, T)
    running = torch.zeros(r.shape[0])  # (N,)
    for t in reversed(range(r.shape[1])):
        next_v = vals[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)  # (N,) 0 past the end
        delta = r[:, t] + gamma * next_v - vals[:, t]
        running = (delta + gamma * lam * running) * m[:, t]  # a padded position resets the sum
        adv[:, t] = running
    return adv, (adv + vals) * m
