"""The sampler/trainer log-prob gap and its importance-sampling correction, as pure functions.

The sampler draws each token from its own forward (thinkrl's lean decoder: folded norms,
fused matrices, a KV cache, bf16 weight copies with `run.precision=bf16`), the trainer
scores the same tokens with the training forward. Both are "π_old" in DeepSeekMath Eq. 3,
but their numbers differ by kernel rounding (fp32) or more (bf16): the samples come from a
behaviour policy μ slightly off π_old. Truncated importance sampling (TIS, Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training") re-weights each
token's policy term by w = π_old / μ capped at C; masked importance sampling (MIS) drops
the tokens (or whole sequences) whose ratio leaves [C_min, C_max] instead. The names and
bounds are TRL's (`vllm_importance_sampling_mode`, `..._clip_max`, `..._clip_min`); verl spells
them `rollout_is_level` (token / sequence) and `rollout_is_mode` (truncate / mask).

Shapes: N samples, T tokens; every function returns new tensors and edits none.
Left out: verl's geometric-mean sequence level and its per-batch normalisation of weights.
"""

from __future__ import annotations

import torch

CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def token_gaps(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|log π_trainer − log μ_sampler| (n_tok,) at the masked tokens of (N, T), float32, no gradient."""
    return (trainer_logp.detach().float() - sampler_logp.float()).abs()[mask.bool()]


def importance_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                       clip_max: float, clip_min: float = 0.0) -> torch.Tensor:
    """Per-token weights (N, T) for the policy term, no gradient: π_old / μ per token
    (token_*), or the sequence's product Π_t π_old / μ on every token of it (sequence_*);
    `*_truncate` clamps the ratio to [clip_min, clip_max], `*_mask` sets it to 0 outside that
    range and keeps it inside (as TRL does). "none": ones. Tokens off the mask weigh 1
    (the aggregation drops them anyway); their log-prob differences never enter a sequence ratio.
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"sampler correction {mode!r}; choose one of {CORRECTIONS}")
    m = mask.bool()
    if mode == "none":
        return torch.ones_like(trainer_logp, dtype=torch.float32)
    diff = torch.where(m, trainer_logp.detach().float() - sampler_logp.float(), 0.0)  # (N, T)
    level, kind = mode.split("_")
    log_ratio = diff.sum(-1, keepdim=True).expand_as(diff) if level == "sequence" else diff  # (N, T)
    ratio = torch.exp(log_ratio)  # (N, T)
    if kind == "truncate":
        w = ratio.clamp(min=clip_min, max=clip_max)
    else:
        w = torch.where((ratio < clip_min) | (ratio > clip_max), 0.0, ratio)
    return torch.where(m, w, 1.0)  # (N, T)
